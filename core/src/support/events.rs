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
}

pub const DEFAULT_MAX_EVENTS_PER_SECOND: u32 = 200;

fn default_max_per_second() -> u32 {
    DEFAULT_MAX_EVENTS_PER_SECOND
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_per_second: DEFAULT_MAX_EVENTS_PER_SECOND,
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
