//! Security events: one JSON line per decision worth auditing, written to Envoy's log. They name
//! what happened and why, and never hold a credential.
//!
//! [`log_event`] writes them through the `log` facade (the adapter installs the logger): `info`
//! for an allowed request, `warn` for everything else, within the worker's [`EventBudget`].

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SecurityEvent {
    /// Always "security_event", so log pipelines can pick these lines out.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub event: &'static str,
    pub code: &'static str,
    pub status: u16,
    pub mode: &'static str,
    pub route: Option<String>,
    pub method: String,
    /// The normalised path without its query string (a query may carry secrets).
    pub path: String,
    pub client: String,
    pub principal: Option<String>,
    /// `auth_success`: the JWT provider whose token verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `auth_success`: the id of the API key that verified (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub request_id: String,
    pub reason: String,
}

impl SecurityEvent {
    /// The log level of the event's line: `info` for an allowed request, `warn` otherwise.
    pub fn level(&self) -> log::Level {
        if self.code == "allowed" {
            log::Level::Info
        } else {
            log::Level::Warn
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from("{\"type\":\"security_event\"}"))
    }
}

/// Configuration of the event log (`events` in the plugin config).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Security-event lines each Envoy worker writes per second at most; the rest are counted
    /// and reported in one summary line. `0` means no limit.
    #[serde(default = "default_max_per_second")]
    pub max_per_second: u32,
    /// `auth_success` events: `"off"` (the default), `"all"`, or `{"sample": N}` (one in N per
    /// worker). They count against `max_per_second` like every other event.
    #[serde(default)]
    pub auth_success: AuthSuccess,
}

/// Which successful authentications are logged (`events.auth_success`). Off by default: on a
/// busy API one line per authenticated request would use up the event budget that refusals
/// need, and the metrics already count allowed requests per route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthSuccess {
    #[default]
    Off,
    All,
    /// One in `N` (per worker, counted over the authenticated requests it allows).
    Sample(u32),
}

impl AuthSuccess {
    /// Whether the `seen`-th authenticated request (1-based) of this worker is logged.
    pub fn logs(self, seen: u64) -> bool {
        match self {
            AuthSuccess::Off => false,
            AuthSuccess::All => true,
            AuthSuccess::Sample(n) => seen % u64::from(n.max(1)) == 1 % u64::from(n.max(1)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for AuthSuccess {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        const EXPECTED: &str = r#"expected "off", "all" or {"sample": N} with N >= 1"#;
        let value = serde_json::Value::deserialize(deserializer)?;
        match &value {
            serde_json::Value::String(word) if word == "off" => Ok(AuthSuccess::Off),
            serde_json::Value::String(word) if word == "all" => Ok(AuthSuccess::All),
            serde_json::Value::Object(map) if map.len() == 1 => {
                let n = map
                    .get("sample")
                    .and_then(serde_json::Value::as_u64)
                    .filter(|n| *n >= 1)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| D::Error::custom(EXPECTED))?;
                Ok(if n == 1 {
                    AuthSuccess::All
                } else {
                    AuthSuccess::Sample(n)
                })
            }
            _ => Err(D::Error::custom(EXPECTED)),
        }
    }
}

pub const DEFAULT_MAX_EVENTS_PER_SECOND: u32 = 200;

fn default_max_per_second() -> u32 {
    DEFAULT_MAX_EVENTS_PER_SECOND
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_per_second: DEFAULT_MAX_EVENTS_PER_SECOND,
            auth_success: AuthSuccess::Off,
        }
    }
}

/// What to do with one event under the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Log,
    /// Log it, after a summary of the events suppressed in the last window.
    LogAfterSummary {
        suppressed: u64,
    },
    Suppress,
}

/// A per-second budget of event lines. An attacker sending a flood of bad requests would
/// otherwise make every one of them a log line: disks fill and the log pipeline drowns the
/// events that matter. Beyond the budget, events are counted, and the count is logged with the
/// next event that is written.
#[derive(Debug, Clone)]
pub struct EventBudget {
    per_second: u32,
    second: u64,
    written: u32,
    suppressed: u64,
}

impl EventBudget {
    pub fn new(per_second: u32) -> EventBudget {
        EventBudget {
            per_second,
            second: 0,
            written: 0,
            suppressed: 0,
        }
    }

    pub fn admit(&mut self, now_ms: u64) -> Admission {
        if self.per_second == 0 {
            return Admission::Log;
        }
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.written = 0;
        }
        if self.written >= self.per_second {
            self.suppressed = self.suppressed.saturating_add(1);
            return Admission::Suppress;
        }
        self.written += 1;
        match std::mem::take(&mut self.suppressed) {
            0 => Admission::Log,
            suppressed => Admission::LogAfterSummary { suppressed },
        }
    }
}

/// The line that stands for suppressed events.
pub fn summary_json(suppressed: u64) -> String {
    format!("{{\"type\":\"security_event_summary\",\"suppressed\":{suppressed},\"reason\":\"more than events.max_per_second on this worker\"}}")
}

/// Writes `event` as one JSON line, within `budget` (`None`: the budget cannot be consulted, and
/// the line is written). A line is only formatted when its level is enabled. False when the
/// budget dropped it (`api_guard_events_dropped_total`).
pub fn log_event(budget: Option<&mut EventBudget>, now_ms: u64, event: &SecurityEvent) -> bool {
    let admission = budget.map_or(Admission::Log, |budget| budget.admit(now_ms));
    match admission {
        Admission::Suppress => return false,
        Admission::Log => log::log!(event.level(), "{}", event.to_json()),
        Admission::LogAfterSummary { suppressed } => {
            log::warn!("{}", summary_json(suppressed));
            log::log!(event.level(), "{}", event.to_json());
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_success_is_off_all_or_one_in_n() {
        let parse = |json: &str| serde_json::from_str::<EventsConfig>(json).map(|c| c.auth_success);
        assert_eq!(parse("{}").unwrap(), AuthSuccess::Off);
        assert_eq!(
            parse(r#"{"auth_success":"off"}"#).unwrap(),
            AuthSuccess::Off
        );
        assert_eq!(
            parse(r#"{"auth_success":"all"}"#).unwrap(),
            AuthSuccess::All
        );
        assert_eq!(
            parse(r#"{"auth_success":{"sample":1}}"#).unwrap(),
            AuthSuccess::All
        );
        assert_eq!(
            parse(r#"{"auth_success":{"sample":10}}"#).unwrap(),
            AuthSuccess::Sample(10)
        );
        for bad in [
            r#""some""#,
            "true",
            r#"{"sample":0}"#,
            r#"{"sample":"2"}"#,
            r#"{"every":2}"#,
        ] {
            let error = parse(&format!(r#"{{"auth_success":{bad}}}"#)).unwrap_err();
            assert!(
                error.to_string().contains("expected \"off\""),
                "{bad}: {error}"
            );
        }
        let logged: Vec<u64> = (1..=7)
            .filter(|&n| AuthSuccess::Sample(3).logs(n))
            .collect();
        assert_eq!(logged, [1, 4, 7]);
        assert!((1..=5).all(|n| AuthSuccess::All.logs(n) && !AuthSuccess::Off.logs(n)));
    }

    #[test]
    fn budget_suppresses_beyond_the_rate_and_summarises_later() {
        let mut budget = EventBudget::new(2);
        assert_eq!(budget.admit(1_000), Admission::Log);
        assert_eq!(budget.admit(1_100), Admission::Log);
        assert_eq!(budget.admit(1_200), Admission::Suppress);
        assert_eq!(budget.admit(1_999), Admission::Suppress);
        assert_eq!(
            budget.admit(2_000),
            Admission::LogAfterSummary { suppressed: 2 }
        );
        assert_eq!(budget.admit(2_001), Admission::Log);
        let mut unlimited = EventBudget::new(0);
        for t in 0..1000 {
            assert_eq!(unlimited.admit(t), Admission::Log);
        }
    }
}
