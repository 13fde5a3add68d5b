//! The request flow as the host sees it, without the host: what to do with a response's headers
//! and body, and with a request body over its bound. The adapter reads what the host has, asks
//! here, and executes the answer; every choice (which responses are looked at as errors, the
//! envelope's framing, what report mode does with a body over the limit) is made here, and
//! tested natively.

use crate::pipeline::policy::{
    response_status, HeaderChange, Policy, ResponseContext, ResponseEdits,
};
use crate::response::error_rewrite::{BodySample, ResponseOrigin};
use crate::response::reply::LocalReply;
use crate::support::events::SecurityEvent;

/// Where a response comes from. Only an error (status 400 and up) is worth asking the host why
/// (`code_details`: the host's reason, which tells Envoy's own replies from the upstream's), so
/// `code_details` is called for those only.
pub fn response_origin(
    status: u16,
    code_details: impl FnOnce() -> Option<Vec<u8>>,
) -> ResponseOrigin {
    if status < 400 {
        return ResponseOrigin::Upstream;
    }
    let details = code_details();
    ResponseOrigin::classify(
        false,
        details.as_deref().and_then(|d| std::str::from_utf8(d).ok()),
    )
}

/// What to do with a response's headers (not the filter's own reply: that carries its headers
/// already), and then with its body.
pub struct ResponseHeadersPlan<'a> {
    edits: ResponseEdits<'a>,
    /// `content-length` of the envelope that replaces the body.
    content_length: Option<String>,
    status: u16,
    end_of_stream: bool,
}

impl<'a> ResponseHeadersPlan<'a> {
    /// Plans a response from its header map (as the host gives it) and whether it has a body.
    pub fn new(
        policy: &'a Policy,
        ctx: &'a ResponseContext,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
        code_details: impl FnOnce() -> Option<Vec<u8>>,
    ) -> ResponseHeadersPlan<'a> {
        let status = response_status(headers);
        let origin = response_origin(status, code_details);
        let edits = policy.plan_response(ctx, status, origin);
        // The body that follows is exactly the envelope: say so, so that a rewritten error looks
        // like the filter's own replies (same framing), not like a chunked upstream one.
        let content_length = match (&edits.replace_body, end_of_stream) {
            (Some(envelope), false) => Some(envelope.len().to_string()),
            _ => None,
        };
        ResponseHeadersPlan {
            edits,
            content_length,
            status,
            end_of_stream,
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The whole header map to write back: `headers` with the edits, and the envelope's length.
    pub fn headers<'h>(&'h self, headers: &[(&'h [u8], &'h [u8])]) -> Vec<(&'h [u8], &'h [u8])>
    where
        'a: 'h,
    {
        let mut merged = self.edits.merge(headers);
        if let Some(length) = &self.content_length {
            merged.retain(|(name, _)| *name != b"content-length");
            merged.push((b"content-length", length.as_bytes()));
        }
        merged
    }

    /// [`ResponseHeadersPlan::headers`] as changes to `headers` (see [`ResponseEdits::changes`]).
    pub fn changes<'h>(&'h self, headers: &[(&'h [u8], &'h [u8])]) -> Vec<HeaderChange<'h>>
    where
        'a: 'h,
    {
        let mut changes = self.edits.changes(headers);
        if let Some(length) = &self.content_length {
            let named = |c: &HeaderChange<'_>| match c {
                HeaderChange::Remove(n) | HeaderChange::Set(n, _) | HeaderChange::Add(n, _) => {
                    *n == b"content-length"
                }
            };
            changes.retain(|c| !named(c));
            let length = length.as_bytes();
            if headers.iter().any(|(n, _)| *n == b"content-length") {
                changes.push(HeaderChange::Set(b"content-length", length));
            } else {
                changes.push(HeaderChange::Add(b"content-length", length));
            }
        }
        changes
    }

    /// What the body callbacks do, once the headers are written.
    pub fn body(self) -> ResponseBody {
        match (self.edits.replace_body, self.end_of_stream) {
            (None, _) => ResponseBody::Pass,
            // No body to replace; the headers already say what the error is.
            (Some(_), true) => ResponseBody::LogNow {
                status: self.status,
                sample: BodySample::new(0),
            },
            (Some(envelope), false) => ResponseBody::Rewrite(ErrorBodyRewrite {
                envelope,
                sample: BodySample::new(self.edits.log_body_bytes),
                status: self.status,
            }),
        }
    }
}

/// What follows a response's headers.
pub enum ResponseBody {
    /// The body goes to the client as it is.
    Pass,
    /// An error without a body: log its event now.
    LogNow { status: u16, sample: BodySample },
    /// An error body replaced by the envelope as it streams.
    Rewrite(ErrorBodyRewrite),
}

/// An upstream or Envoy error body being replaced by the envelope as it streams: each chunk is
/// dropped as it passes, and the envelope takes the place of the last one; the first bytes of
/// the original are kept for the log.
pub struct ErrorBodyRewrite {
    envelope: String,
    sample: BodySample,
    status: u16,
}

/// What to do with one chunk of an error body being rewritten.
pub struct ChunkReplacement<'a> {
    /// What replaces the chunk in the host's buffer.
    pub replacement: &'a [u8],
    /// The last chunk: the event to log, with the status and the sample of the original body.
    pub finished: bool,
}

impl ErrorBodyRewrite {
    /// How many bytes of a chunk of `chunk_size` to read from the host for the log sample.
    pub fn bytes_to_read(&self, chunk_size: usize) -> usize {
        self.sample.remaining().min(chunk_size)
    }

    /// A chunk of `chunk_size` bytes, of which `read` were read for the sample (`None`: the host
    /// could not give them; the sample just counts the chunk).
    pub fn chunk(
        &mut self,
        read: Option<&[u8]>,
        chunk_size: usize,
        end_of_stream: bool,
    ) -> ChunkReplacement<'_> {
        self.sample
            .push_partial(read.unwrap_or_default(), chunk_size);
        ChunkReplacement {
            replacement: if end_of_stream {
                self.envelope.as_bytes()
            } else {
                b""
            },
            finished: end_of_stream,
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn sample(&self) -> &BodySample {
        &self.sample
    }
}

/// What happens to a request whose body went over its bound.
#[derive(Debug)]
pub enum BodyOverLimit {
    /// Enforce mode: 413 (a held body is dropped).
    Reply(LocalReply),
    /// Report mode: the request goes on as it would have; a body held for a check is put back
    /// first, with the headers the check would have set.
    Proceed { restore_held_body: bool },
}

/// Decides a body over its bound: the event to log, and what the adapter does.
pub fn body_over_limit(
    policy: &Policy,
    ctx: &ResponseContext,
    body_was_held: bool,
) -> (SecurityEvent, BodyOverLimit) {
    let (event, reply) = policy.body_too_large(ctx);
    let outcome = match reply {
        Some(reply) => BodyOverLimit::Reply(reply),
        None => BodyOverLimit::Proceed {
            restore_held_body: body_was_held,
        },
    };
    (event, outcome)
}

/// How long a request that paused on its headers for a body may go without a body callback
/// once its body has started to reach the host (the host may keep the body from the filter:
/// Envoy without `allow_on_headers_stop_iteration`).
pub const BODY_WAIT_TIMEOUT_MS: u64 = 3_000;
/// Past its deadline, a request whose client has sent no body byte yet is looked at again this
/// much later.
pub const BODY_WAIT_RECHECK_MS: u64 = 1_000;

/// What to do with a request paused on its headers that has had no body callback yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyWaitCheck {
    /// Before its deadline: keep waiting.
    Keep,
    /// The host has no such stream any more: forget it.
    Gone,
    /// Its body reached the host and never the filter: answer 503 (fail closed).
    Expire,
    /// The client has sent no body byte yet: look again at this time.
    RecheckAt(u64),
}

/// Looks at a request waiting for its first body callback at `now_ms`. `total_size` reads how
/// many bytes of the request the host has now (`Err`: the stream is gone; `Ok(None)`: unknown),
/// and is only called past the deadline; `total_at_headers` is what it read when the request
/// paused. An unknown size fails closed rather than let the request hang.
pub fn check_body_wait(
    now_ms: u64,
    deadline_ms: u64,
    total_at_headers: Option<u64>,
    total_size: impl FnOnce() -> Result<Option<u64>, ()>,
) -> BodyWaitCheck {
    if now_ms < deadline_ms {
        return BodyWaitCheck::Keep;
    }
    let Ok(now_total) = total_size() else {
        return BodyWaitCheck::Gone;
    };
    let body_arrived = match (total_at_headers, now_total) {
        (Some(before), Some(now)) => now > before,
        _ => true,
    };
    if body_arrived {
        BodyWaitCheck::Expire
    } else {
        BodyWaitCheck::RecheckAt(now_ms.saturating_add(BODY_WAIT_RECHECK_MS))
    }
}

/// Whether the response about to be encoded is the reply this filter sent (`content_type` and
/// `x_request_id`: the response's headers, as the host has them). Before any body callback it
/// must be; after one, the host's own reply may have won over the filter's in the same callback
/// (Envoy's buffer-limit 413, plain text): the filter's replies are JSON and carry the request's
/// id.
pub fn is_own_reply(
    body_callback_came: bool,
    request_id: &str,
    content_type: Option<&[u8]>,
    x_request_id: impl FnOnce() -> Option<Vec<u8>>,
) -> bool {
    if !body_callback_came {
        return true;
    }
    if content_type != Some(b"application/json".as_slice()) {
        return false;
    }
    if request_id.is_empty() {
        return true;
    }
    x_request_id().as_deref() == Some(request_id.as_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config;

    fn policy(extra: &str) -> Policy {
        let json = format!(
            r#"{{"routes": [{{"name": "any", "match": {{"path_prefix": "/"}}, "auth": "none"}}]{extra}}}"#
        );
        config::load(json.as_bytes()).unwrap()
    }

    fn ctx() -> ResponseContext {
        ResponseContext {
            request_id: "req-1".into(),
            ..ResponseContext::default()
        }
    }

    fn header<'h>(headers: &[(&'h [u8], &'h [u8])], name: &str) -> Option<&'h [u8]> {
        headers
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| *v)
    }

    #[test]
    fn the_host_is_asked_why_for_errors_only() {
        let mut asked = false;
        assert_eq!(
            response_origin(200, || {
                asked = true;
                None
            }),
            ResponseOrigin::Upstream
        );
        assert_eq!(
            response_origin(399, || panic!("not asked below 400")),
            ResponseOrigin::Upstream
        );
        assert!(!asked);
        response_origin(400, || {
            asked = true;
            None
        });
        assert!(asked);
        assert_eq!(
            response_origin(503, || Some(b"via_upstream".to_vec())),
            ResponseOrigin::classify(false, Some("via_upstream"))
        );
    }

    #[test]
    fn a_rewritten_error_says_the_envelope_length_and_replaces_the_body() {
        let policy = policy("");
        let ctx = ctx();
        let upstream: Vec<(&[u8], &[u8])> = vec![
            (b":status", b"500"),
            (b"content-type", b"text/html"),
            (b"content-length", b"12"),
        ];
        let plan = ResponseHeadersPlan::new(&policy, &ctx, &upstream, false, || None);
        assert_eq!(plan.status(), 500);
        let written = plan.headers(&upstream);
        let length: usize = std::str::from_utf8(header(&written, "content-length").unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            written
                .iter()
                .filter(|(n, _)| *n == b"content-length")
                .count(),
            1
        );
        let ResponseBody::Rewrite(mut rewrite) = plan.body() else {
            panic!("a 500 with a body is rewritten");
        };
        assert!(rewrite.bytes_to_read(5) <= 5);
        let first = rewrite.chunk(Some(b"<html"), 5, false);
        assert!(first.replacement.is_empty());
        assert!(!first.finished);
        let last = rewrite.chunk(Some(b">boom</"), 7, true);
        assert!(last.finished);
        assert_eq!(last.replacement.len(), length);
        assert!(std::str::from_utf8(last.replacement)
            .unwrap()
            .contains("req-1"));
        assert_eq!(rewrite.status(), 500);
        assert_eq!(rewrite.sample().total_bytes(), 12);
    }

    #[test]
    fn an_error_without_a_body_is_logged_at_once_and_gets_no_length() {
        let policy = policy("");
        let ctx = ctx();
        let upstream: Vec<(&[u8], &[u8])> = vec![(b":status", b"502")];
        let plan = ResponseHeadersPlan::new(&policy, &ctx, &upstream, true, || None);
        assert!(header(&plan.headers(&upstream), "content-length").is_none());
        assert!(matches!(
            plan.body(),
            ResponseBody::LogNow { status: 502, .. }
        ));
    }

    #[test]
    fn a_success_passes_with_its_own_length() {
        let policy = policy("");
        let ctx = ctx();
        let upstream: Vec<(&[u8], &[u8])> = vec![(b":status", b"200"), (b"content-length", b"3")];
        let plan = ResponseHeadersPlan::new(&policy, &ctx, &upstream, false, || {
            panic!("a 200 needs no details")
        });
        assert_eq!(
            header(&plan.headers(&upstream), "content-length"),
            Some(b"3".as_slice())
        );
        assert!(matches!(plan.body(), ResponseBody::Pass));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_or_reported() {
        let enforce = policy("");
        let (event, outcome) = body_over_limit(&enforce, &ctx(), true);
        assert_eq!(event.code, "payload_too_large");
        assert!(matches!(outcome, BodyOverLimit::Reply(reply) if reply.status == 413));

        let report = policy(r#", "mode": "report""#);
        let (event, outcome) = body_over_limit(&report, &ctx(), true);
        assert_eq!(event.mode, "report");
        assert!(matches!(
            outcome,
            BodyOverLimit::Proceed {
                restore_held_body: true
            }
        ));
        let (_, outcome) = body_over_limit(&report, &ctx(), false);
        assert!(matches!(
            outcome,
            BodyOverLimit::Proceed {
                restore_held_body: false
            }
        ));
    }
    #[test]
    fn a_request_without_body_callbacks_waits_then_fails_closed_once_its_body_came() {
        assert_eq!(
            check_body_wait(100, 200, Some(50), || panic!(
                "not read before the deadline"
            )),
            BodyWaitCheck::Keep
        );
        assert_eq!(
            check_body_wait(200, 200, Some(50), || Err(())),
            BodyWaitCheck::Gone
        );
        assert_eq!(
            check_body_wait(200, 200, Some(50), || Ok(Some(51))),
            BodyWaitCheck::Expire
        );
        assert_eq!(
            check_body_wait(200, 200, Some(50), || Ok(Some(50))),
            BodyWaitCheck::RecheckAt(200 + BODY_WAIT_RECHECK_MS)
        );
        assert_eq!(
            check_body_wait(200, 200, None, || Ok(Some(50))),
            BodyWaitCheck::Expire
        );
        assert_eq!(
            check_body_wait(200, 200, Some(50), || Ok(None)),
            BodyWaitCheck::Expire
        );
    }

    #[test]
    fn the_hosts_own_reply_is_told_from_the_filters() {
        let json = Some(b"application/json".as_slice());
        assert!(is_own_reply(false, "r", None, || None));
        assert!(!is_own_reply(true, "r", Some(b"text/plain"), || Some(
            b"r".to_vec()
        )));
        assert!(is_own_reply(true, "r", json, || Some(b"r".to_vec())));
        assert!(!is_own_reply(true, "r", json, || Some(b"other".to_vec())));
        assert!(!is_own_reply(true, "r", json, || None));
        assert!(is_own_reply(true, "", json, || panic!("no id to compare")));
    }
}
