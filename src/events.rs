//! Security events: one JSON line per decision worth auditing, written to Envoy's log. They name
//! what happened and why, and never hold a credential.

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
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from("{\"type\":\"security_event\"}"))
    }
}
