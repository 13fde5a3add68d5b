//! A decision, and the rate-limit headers every response on the route carries.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The limit's `requests`.
    pub limit: u64,
    /// Requests left in the sliding window after this one (0 on refusal).
    pub remaining: u64,
    /// Seconds until the window frees a request (until one more would be admitted, on refusal).
    pub reset_seconds: u64,
    /// On refusal: seconds after which a request is admitted (≥ 1), if nothing else is admitted
    /// meanwhile.
    pub retry_after_seconds: Option<u64>,
    /// Why: always set on refusal; on admission only when the decision was degraded (shared
    /// overflow counter, or admitted uncounted under `on_contention: allow`).
    pub reason: Option<&'static str>,
}

impl RateDecision {
    pub(super) fn admitted(
        limit: &RateLimit,
        after: WindowView,
        now_ms: u64,
        reason: Option<&'static str>,
    ) -> RateDecision {
        let weighted = after.weighted();
        RateDecision {
            allowed: true,
            limit: limit.requests,
            remaining: limit.requests.saturating_sub(weighted),
            reset_seconds: seconds_until(now_ms, after.free_at_ms(weighted.min(limit.requests))),
            retry_after_seconds: None,
            reason,
        }
    }

    pub(super) fn refused(
        limit: &RateLimit,
        view: WindowView,
        now_ms: u64,
        reason: &'static str,
    ) -> RateDecision {
        let wait = seconds_until(now_ms, view.free_at_ms(limit.requests)).max(1);
        RateDecision {
            allowed: false,
            limit: limit.requests,
            remaining: 0,
            reset_seconds: wait,
            retry_after_seconds: Some(wait),
            reason: Some(reason),
        }
    }

    /// Retries ran out or the store failed: nothing was counted.
    pub(super) fn degraded(
        limit: &RateLimit,
        last_view: Option<WindowView>,
        now_ms: u64,
        reason: &'static str,
    ) -> RateDecision {
        match limit.on_contention {
            OnContention::Refuse => RateDecision {
                allowed: false,
                limit: limit.requests,
                remaining: 0,
                reset_seconds: 1,
                retry_after_seconds: Some(1),
                reason: Some(reason),
            },
            OnContention::Allow => {
                let view =
                    last_view.unwrap_or_else(|| WindowView::fresh(limit.window_ms(), now_ms));
                RateDecision::admitted(limit, view.with_one_more(), now_ms, Some(reason))
            }
        }
    }

    /// The response headers of the spec: `x-ratelimit-limit`, `x-ratelimit-remaining`,
    /// `x-ratelimit-reset`, `ratelimit-policy`, `ratelimit`, and `retry-after` on refusal.
    /// Names are lower-case as HTTP/2 requires (Envoy lower-cases them anyway).
    pub fn headers(&self, policy_name: &str, window_seconds: u64) -> Vec<(&'static str, String)> {
        let name = sf_string(policy_name);
        let mut headers = Vec::with_capacity(6);
        headers.push(("x-ratelimit-limit", self.limit.to_string()));
        headers.push(("x-ratelimit-remaining", self.remaining.to_string()));
        headers.push(("x-ratelimit-reset", self.reset_seconds.to_string()));
        headers.push((
            "ratelimit-policy",
            format!("{name};q={};w={window_seconds}", self.limit),
        ));
        headers.push((
            "ratelimit",
            format!("{name};r={};t={}", self.remaining, self.reset_seconds),
        ));
        if let Some(wait) = self.retry_after_seconds {
            headers.push(("retry-after", wait.to_string()));
        }
        headers
    }
}

/// An RFC 8941 string: quoted, with `"` and `\` escaped and anything unprintable dropped (limit
/// names are validated, so this only guards callers that pass something else).
pub(super) fn sf_string(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}
