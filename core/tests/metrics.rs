//! The metrics natively: the series a policy defines (names, kinds, unique, the layout each
//! lookup relies on), which series each decision counts, the shipped `stats_config` of
//! `envoy/demo.yaml` against the code's tag regexes, and every query of the shipped Grafana
//! dashboard and Prometheus alert rules against the families the filter exports
//! (`metrics::FAMILIES`, so the list is the code's, never a copy).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::config;
use api_guard_core::pipeline::policy::{Decision, Policy};
use api_guard_core::request::head::RequestHead;
use api_guard_core::response::reply::ErrorCode;
use api_guard_core::support::metrics::{
    self, label_names, stats_tag_regex, DecisionLabel, MetricId, MetricKind, RateLimitResult,
    FAMILIES, TOKEN_CACHE_HIT_ID, TOKEN_CACHE_MISS_ID,
};
use api_guard_core::support::mint;
use api_guard_core::support::test_env::TestHost;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "https://api.test";
const NOW_S: u64 = 1_800_000_000;
const READER_KEY: &str = "ag_test_reader-0000000000000000";

fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn key(name: &str) -> Value {
    serde_json::from_str(&repo_file(&format!("tests/keys/{name}.json"))).unwrap()
}

fn policy(mode: &str) -> Policy {
    policy_with(mode, json!({}))
}

fn policy_with(mode: &str, events: Value) -> Policy {
    let config = json!({
        "mode": mode,
        "events": events,
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "jwks": { "inline": { "keys": [mint::public_jwk(&key("p256"))] } }
        }]},
        "rate_limits": { "per-minute": { "requests": 1, "window_seconds": 60, "key": "ip" } },
        "api_keys": { "keys": [
            { "id": "reader", "prefix": "ag_test_reader-",
              "sha256": api_guard_core::authn::api_keys::key_sha256_hex(READER_KEY) }
        ]},
        "routes": [
            { "name": "public docs", "match": { "path_prefix": "/public/" }, "auth": "none" },
            { "name": "keyed", "match": { "path_prefix": "/keyed/" }, "auth": "api_key" },
            { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "jwt",
              "rate_limit": "per-minute" }
        ]
    });
    config::load(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn send(policy: &Policy, host: &mut TestHost, path: &str, extra: &[(&str, &str)]) -> Decision {
    let mut headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "api.test".to_string()),
        ("x-request-id".to_string(), "rid-1".to_string()),
    ];
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let head = RequestHead::from_host(headers, Some("10.0.0.1:1234"));
    policy.check_request(&head, &mut host.env(false))
}

/// The names of the series a decision counts.
fn counted(policy: &Policy, decision: &Decision) -> Vec<String> {
    decision
        .tally
        .ids()
        .map(|MetricId(id)| policy.metrics.definitions()[id as usize].name.clone())
        .collect()
}

#[test]
fn a_policy_defines_every_series_once_with_bounded_label_values() {
    let policy = policy("enforce");
    let definitions = policy.metrics.definitions();
    let names: BTreeSet<&str> = definitions.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names.len(), definitions.len(), "series names are unique");
    // Three routes and the unmatched slot, each: allowed ok, refused and reported per code.
    let requests = definitions
        .iter()
        .filter(|d| d.name.starts_with("api_guard_requests_total."))
        .count();
    assert_eq!(requests, 4 * (1 + 2 * ErrorCode::ALL.len()));
    // Configured names keep only characters the tag regexes and Prometheus accept.
    assert!(names.contains("api_guard_requests_total.route.public_docs.decision.allowed.code.ok"));
    assert!(names.contains("api_guard_rate_limit_total.limit.per-minute.result.limited"));
    assert!(names.contains("api_guard_token_cache_total.result.hit"));
    for definition in definitions {
        let family = FAMILIES
            .iter()
            .find(|f| definition.name.split('.').next() == Some(f.name))
            .unwrap_or_else(|| panic!("{} is in no family", definition.name));
        assert_eq!(definition.kind, family.kind, "{}", definition.name);
        let parts: Vec<&str> = definition.name.split('.').skip(1).collect();
        let labels: Vec<&str> = parts.iter().step_by(2).copied().collect();
        assert_eq!(labels, family.labels, "{}", definition.name);
        for value in parts.iter().skip(1).step_by(2) {
            assert!(
                value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{value} in {}",
                definition.name
            );
        }
    }
    // Every lookup names the series it says.
    let name = |id: Option<MetricId>| definitions[id.unwrap().0 as usize].name.clone();
    for (decision, code) in metrics::request_series() {
        let error = ErrorCode::ALL.iter().copied().find(|c| c.code() == code);
        assert_eq!(
            name(policy.metrics.request(Some(2), decision, error)),
            format!(
                "api_guard_requests_total.route.api.decision.{}.code.{code}",
                decision.name()
            )
        );
        assert!(name(policy.metrics.request(None, decision, error)).contains(".route._unmatched."));
    }
    assert_eq!(
        policy
            .metrics
            .request(Some(0), DecisionLabel::Allowed, Some(ErrorCode::Forbidden)),
        None
    );
    assert_eq!(
        name(policy.metrics.rate_limit(0, RateLimitResult::Unavailable)),
        "api_guard_rate_limit_total.limit.per-minute.result.unavailable"
    );
    assert_eq!(policy.metrics.rate_limit(1, RateLimitResult::Allowed), None);
    assert_eq!(
        policy.metrics.jwks_fetch(0, true),
        None,
        "inline keys: no fetch series"
    );
}

#[test]
fn each_decision_counts_its_outcome_rate_limit_and_cache_lookup() {
    let policy = policy("enforce");
    let mut host = TestHost::new(NOW_S);
    let decision = send(&policy, &mut host, "/public/a", &[]);
    assert_eq!(
        counted(&policy, &decision),
        ["api_guard_requests_total.route.public_docs.decision.allowed.code.ok"]
    );
    let decision = send(&policy, &mut host, "/elsewhere", &[]);
    assert_eq!(
        counted(&policy, &decision),
        ["api_guard_requests_total.route._unmatched.decision.refused.code.not_found"]
    );
    // No token: refused before the cache; the refusal still counts against the IP's limit.
    let decision = send(&policy, &mut host, "/api/a", &[]);
    assert_eq!(
        counted(&policy, &decision),
        [
            "api_guard_rate_limit_total.limit.per-minute.result.allowed",
            "api_guard_requests_total.route.api.decision.refused.code.unauthorized"
        ]
    );
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                         "iat": NOW_S, "exp": NOW_S + 600 });
    let token = mint::sign(&key("p256"), Alg::ES256, claims.as_object().unwrap()).unwrap();
    let bearer = format!("Bearer {token}");
    let mut fresh = TestHost::new(NOW_S);
    let decision = send(&policy, &mut fresh, "/api/a", &[("authorization", &bearer)]);
    assert_eq!(decision.tally.ids().next(), Some(TOKEN_CACHE_MISS_ID));
    assert_eq!(
        counted(&policy, &decision)[1..],
        [
            "api_guard_rate_limit_total.limit.per-minute.result.allowed",
            "api_guard_requests_total.route.api.decision.allowed.code.ok"
        ]
    );
    let decision = send(&policy, &mut fresh, "/api/a", &[("authorization", &bearer)]);
    assert_eq!(decision.tally.ids().next(), Some(TOKEN_CACHE_HIT_ID));
    assert_eq!(
        counted(&policy, &decision)[1..],
        [
            "api_guard_rate_limit_total.limit.per-minute.result.limited",
            "api_guard_requests_total.route.api.decision.refused.code.rate_limited"
        ]
    );
    // Report mode: the refusal is counted as reported, and the request goes on.
    let report = self::policy("report");
    let decision = send(&report, &mut TestHost::new(NOW_S), "/api/a", &[]);
    assert!(counted(&report, &decision).contains(
        &"api_guard_requests_total.route.api.decision.reported.code.unauthorized".to_string()
    ));
}

#[test]
fn the_demo_stats_config_has_the_code_tag_regex_of_every_label() {
    let demo = repo_file("envoy/demo.yaml");
    let tags: Vec<(String, String)> = demo
        .lines()
        .collect::<Vec<_>>()
        .windows(2)
        .filter_map(|pair| {
            let name = pair[0].trim().strip_prefix("- tag_name: ")?;
            let regex = pair[1].trim().strip_prefix("regex: ")?;
            Some((name.to_string(), regex.trim_matches('\'').to_string()))
        })
        .collect();
    let expected: Vec<(String, String)> = label_names()
        .into_iter()
        .map(|label| (label.to_string(), stats_tag_regex(label)))
        .collect();
    assert_eq!(tags, expected);
}

/// Every `api_guard_*` name in a PromQL expression, with the label names it uses in selectors
/// and `by (...)` / `without (...)` clauses of the expression.
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut series = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            // A selector: `name="v"`, `name=~"v"`, comma-separated.
            let end = expr[i..].find('}').map_or(bytes.len(), |e| i + e);
            for part in expr[i + 1..end].split(',') {
                let label: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !label.is_empty() {
                    labels.insert(label);
                }
            }
            // Skip the quoted values.
            i = end + 1;
            continue;
        }
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !ident(bytes[j]))
                .unwrap_or(bytes.len());
            let word = &expr[i..end];
            if word.starts_with("api_guard_") {
                series.insert(word.to_string());
            }
            if word == "by" || word == "without" {
                let rest = expr[end..].trim_start();
                if let Some(inner) = rest.strip_prefix('(') {
                    let close = inner.find(')').unwrap_or(inner.len());
                    labels.extend(
                        inner[..close]
                            .split(',')
                            .map(|l| l.trim().to_string())
                            .filter(|l| !l.is_empty()),
                    );
                }
            }
            i = end;
            continue;
        }
        i += 1;
    }
    (series, labels)
}

/// Checks that each expression names only exported families and their labels; returns the
/// families named.
fn check_exprs(source: &str, exprs: &[String]) -> BTreeSet<String> {
    let exported: BTreeMap<&str, &metrics::Family> = FAMILIES.iter().map(|f| (f.name, f)).collect();
    let mut named = BTreeSet::new();
    for expr in exprs {
        let (series, labels) = promql_names(expr);
        assert!(
            !series.is_empty(),
            "{source}: query names no api_guard series: {expr}"
        );
        let mut allowed: BTreeSet<&str> = ["le", "instance", "job"].into_iter().collect();
        for name in &series {
            let family = exported.get(name.as_str()).unwrap_or_else(|| {
                panic!("{source}: {name} is not a series the filter exports ({expr})")
            });
            allowed.extend(family.labels.iter().copied());
            named.insert(name.clone());
        }
        for label in &labels {
            assert!(
                allowed.contains(label.as_str()),
                "{source}: label {label} is on none of {series:?} ({expr})"
            );
        }
    }
    named
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_names_exported_series() {
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/api-guard.json")).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 6, "the dashboard has its panels: {exprs:?}");
    let named = check_exprs("deploy/grafana/api-guard.json", &exprs);
    // The dashboard shows the request decisions, rate limits and key sets at least.
    for family in [
        "api_guard_requests_total",
        "api_guard_rate_limit_total",
        "api_guard_jwks_keys",
    ] {
        assert!(named.contains(family), "no panel over {family}");
    }
    // The checker itself: a misspelt series or a label of another family is caught.
    let bad = std::panic::catch_unwind(|| {
        check_exprs("t", &["sum(rate(api_guard_request_total[5m]))".into()])
    });
    assert!(bad.is_err());
    let bad = std::panic::catch_unwind(|| {
        check_exprs("t", &["sum by (route) (api_guard_jwks_keys)".into()])
    });
    assert!(bad.is_err());
}

#[test]
fn every_alert_rule_names_exported_series() {
    let rules = repo_file("deploy/prometheus/api-guard-alerts.yaml");
    // `expr: <one line>` or `expr: >-` / `|` followed by an indented block.
    let lines: Vec<&str> = rules.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.is_empty() || rest.starts_with('>') || rest.starts_with('|') {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(rest.to_string());
        }
    }
    assert!(exprs.len() >= 4, "the rules are there: {exprs:?}");
    check_exprs("deploy/prometheus/api-guard-alerts.yaml", &exprs);
    let _ = MetricKind::Counter;
}

fn bearer() -> String {
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                         "iat": NOW_S, "exp": NOW_S + 600 });
    format!(
        "Bearer {}",
        mint::sign(&key("p256"), Alg::ES256, claims.as_object().unwrap()).unwrap()
    )
}

#[test]
fn auth_success_events_are_off_by_default_all_or_one_in_n() {
    let bearer = bearer();
    let mut host = TestHost::new(NOW_S);
    let off = policy("enforce");
    let decision = send(&off, &mut host, "/keyed/a", &[("x-api-key", READER_KEY)]);
    assert!(decision.auth_event.is_none() && decision.event.is_none());

    let all = policy_with("enforce", json!({ "auth_success": "all" }));
    let decision = send(&all, &mut host, "/keyed/a", &[("x-api-key", READER_KEY)]);
    let event = decision.auth_event.unwrap();
    assert_eq!(
        (
            event.event,
            event.code,
            event.route.as_deref(),
            event.principal.as_deref()
        ),
        ("auth_success", "allowed", Some("keyed"), Some("reader"))
    );
    assert_eq!(
        (event.provider, event.key_id.as_deref()),
        (None, Some("reader"))
    );
    let json: Value = serde_json::from_str(&decision_json(&all, &mut host, &bearer)).unwrap();
    assert_eq!(json["provider"], "main");
    assert_eq!(json["principal"], "alice");
    assert!(json.get("key_id").is_none(), "{json}");
    assert!(!json.to_string().contains(&bearer[7..]), "never the token");
    // A refused request logs its refusal, not a success (the limit allows one per minute).
    let decision = send(&all, &mut host, "/api/a", &[("authorization", &bearer)]);
    assert!(decision.auth_event.is_none());
    assert_eq!(decision.event.unwrap().event, "rate_limited");

    let sampled = policy_with("enforce", json!({ "auth_success": { "sample": 3 } }));
    let logged: Vec<bool> = (0..6)
        .map(|_| {
            send(
                &sampled,
                &mut host,
                "/keyed/a",
                &[("x-api-key", READER_KEY)],
            )
            .auth_event
            .is_some()
        })
        .collect();
    assert_eq!(logged, [true, false, false, true, false, false]);
}

fn decision_json(policy: &Policy, host: &mut TestHost, bearer: &str) -> String {
    let decision = send(policy, host, "/api/a", &[("authorization", bearer)]);
    decision.auth_event.unwrap().to_json()
}

#[test]
fn auth_success_is_validated_with_its_path() {
    let config = json!({ "events": { "auth_success": "sometimes" },
                         "routes": [{ "name": "a", "match": { "path_prefix": "/" }, "auth": "none" }] });
    let errors = config::load(config.to_string().as_bytes()).err().unwrap();
    assert!(
        errors[0].path.starts_with("events.auth_success"),
        "{errors:?}"
    );
    assert!(
        errors[0]
            .message
            .contains("\"off\", \"all\" or {\"sample\": N}"),
        "{errors:?}"
    );
}
