//! The filter's metrics (issue 15) through a real Envoy: the filter defines its series at
//! configure time, increments them per decision, and Envoy's `/stats/prometheus` shows them as
//! `api_guard_*{label="value",…}` through the tag extractors of `envoy/demo.yaml` (the harness
//! uses the same block). Envoy 1.40 strips the `wasmcustom.` namespace and adds no `envoy_`
//! prefix, so a family's Prometheus name is the name the core gives it.
//!
//! - `decisions_show_as_exact_deltas_per_series`: one worker (so the token cache is one cache),
//!   known traffic on every kind of route; every `api_guard_requests_total` series moves by
//!   exactly what was sent (the others by nothing), and so do rate limits, the token cache,
//!   webhook verifications, JWKS fetches and keys; the families have their `# TYPE`; events over
//!   `events.max_per_second` are counted exactly as the lines missing from the log;
//!   `events.auth_success: "all"` logs each authenticated request allowed.
//! - `a_refused_configuration_shows_and_fails_closed`
//! - `prometheus_scrapes_the_series_with_their_labels` (`#[ignore]`, `make test-prometheus`):
//!   Debian's `prometheus` on loopback scrapes the admin endpoint every second and is asked
//!   through its HTTP API for the series.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::free_port;

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::idp::Idp;
use common::{security_events, send_request, test_key, unix_now, Envoy, EnvoyOptions};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const WEBHOOK_SECRET: &str = "metrics-test-webhook-secret";
/// Generous: two cores shared by several Envoys.
const WAIT: Duration = Duration::from_secs(30);

/// How Envoy 1.40 writes the dynamic module's custom stats in `/stats/prometheus`.
const MODULE_PROMETHEUS_PREFIX: &str = "envoy_dynamicmodulescustom_";

/// One Prometheus text exposition: series (`name{labels}` as Envoy writes it) to value, and
/// family to `# TYPE`.
struct Scrape {
    series: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn of(envoy: &Envoy) -> Scrape {
        let text = envoy.admin("/stats/prometheus").body_str();
        let mut series = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    let name = name.strip_prefix(MODULE_PROMETHEUS_PREFIX).unwrap_or(name);
                    types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            // The dynamic module's stats are `dynamicmodulescustom.<name>`, which Envoy's
            // exposition writes with its `envoy_` prefix: the same series under another name.
            let line = line.strip_prefix(MODULE_PROMETHEUS_PREFIX).unwrap_or(line);
            if !line.starts_with("api_guard_") {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').unwrap();
            // Envoy writes a series without labels as `name{}`.
            series.insert(canonical(name), value.parse().unwrap());
        }
        Scrape { series, types }
    }

    fn value(&self, series: &str) -> f64 {
        *self
            .series
            .get(&canonical(series))
            .unwrap_or_else(|| panic!("no series {series} on /stats/prometheus"))
    }
}

/// A series with its labels in name order (Envoy writes them in the order of its tag
/// extractors); `name{}` (Envoy's series without labels) as `name`.
fn canonical(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_string();
    };
    let mut labels: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty())
        .collect();
    if labels.is_empty() {
        return name.to_string();
    }
    labels.sort_unstable();
    format!("{name}{{{}}}", labels.join(","))
}

fn requests(route: &str, decision: &str, code: &str) -> String {
    format!("api_guard_requests_total{{route=\"{route}\",decision=\"{decision}\",code=\"{code}\"}}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// GitHub's scheme: `sha256=` + hex HMAC-SHA256(secret, body).
fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn plugin_config() -> String {
    json!({
        "jwt": { "providers": [{
            "name": "main", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "jwks": { "remote": { "cluster": "idp", "authority": "idp.test", "path": JWKS_PATH } }
        }]},
        "rate_limits": {
            "single": { "requests": 1, "window_seconds": 31536000, "key": "header:x-client" }
        },
        "webhooks": { "github": { "scheme": "github", "secrets": [WEBHOOK_SECRET] } },
        "events": { "max_per_second": 2, "auth_success": "all" },
        "routes": [
            { "name": "health", "match": { "path_exact": "/healthz" }, "auth": "none" },
            { "name": "api", "match": { "path_prefix": "/api/" }, "auth": "jwt" },
            { "name": "limited", "match": { "path_exact": "/limited" }, "auth": "none",
              "rate_limit": "single" },
            { "name": "hooks", "match": { "path_exact": "/hooks/github", "methods": ["POST"] },
              "auth": "none", "webhook": "github" }
        ]
    })
    .to_string()
}

fn start(idp: &Idp) -> Envoy {
    Envoy::start(EnvoyOptions {
        plugin_config: Some(plugin_config()),
        // One worker: one token cache, so hits and misses are exact.
        concurrency: 1,
        extra_clusters_yaml: Some(idp.cluster_yaml("idp")),
        ..EnvoyOptions::default()
    })
}

fn token() -> String {
    let claims = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                         "iat": unix_now(), "exp": unix_now() + 600 });
    mint::sign(&test_key("p256"), Alg::ES256, claims.as_object().unwrap()).unwrap()
}

/// Polls the exposition until `ready` holds.
fn wait_for_scrape(envoy: &Envoy, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let scrape = Scrape::of(envoy);
        if ready(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn decisions_show_as_exact_deltas_per_series() {
    let idp = Idp::start(json!({ "keys": [mint::public_jwk(&test_key("p256"))] }));
    let envoy = start(&idp);
    let fetched = r#"api_guard_jwks_fetches_total{provider="main",result="success"}"#;
    let before = wait_for_scrape(&envoy, "the first JWKS fetch", |s| {
        s.series.get(&canonical(fetched)).is_some_and(|v| *v >= 1.0)
    });

    // The families and their kinds.
    for (family, kind) in [
        ("api_guard_requests_total", "counter"),
        ("api_guard_rate_limit_total", "counter"),
        ("api_guard_token_cache_total", "counter"),
        ("api_guard_webhook_verifications_total", "counter"),
        ("api_guard_jwks_fetches_total", "counter"),
        ("api_guard_events_dropped_total", "counter"),
        ("api_guard_fail_closed_total", "counter"),
        ("api_guard_jwks_keys", "gauge"),
        ("api_guard_jwks_seconds_since_success", "gauge"),
        ("api_guard_config_refused", "gauge"),
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}"
        );
    }
    assert_eq!(before.value(r#"api_guard_jwks_keys{provider="main"}"#), 1.0);
    assert!(before.value(r#"api_guard_jwks_seconds_since_success{provider="main"}"#) < 60.0);
    assert_eq!(before.value("api_guard_config_refused"), 0.0);
    assert_eq!(
        before.value(r#"api_guard_jwks_fetches_total{provider="main",result="failure"}"#),
        0.0
    );

    // Known traffic.
    for _ in 0..3 {
        assert_eq!(envoy.request("GET", "/healthz", &[]).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(envoy.request("GET", "/nowhere", &[]).status, 404);
    }
    assert_eq!(envoy.request("GET", "/api/docs", &[]).status, 401);
    let bearer = format!("Bearer {}", token());
    // A fresh second of the event budget (two a second) for the two auth_success events.
    thread::sleep(Duration::from_millis(1100));
    for _ in 0..2 {
        let response = envoy.request("GET", "/api/docs", &[("authorization", &bearer)]);
        assert_eq!(response.status, 200);
    }
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            envoy
                .request("GET", "/limited", &[("x-client", "one")])
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 429, 429]);
    let body = br#"{"zen":"metrics"}"#;
    let bad = envoy
        .try_request(
            "POST",
            "/hooks/github",
            &[("x-hub-signature-256", &github_signature("wrong", body))],
            Some(body),
        )
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body_str());
    let good = envoy
        .try_request(
            "POST",
            "/hooks/github",
            &[(
                "x-hub-signature-256",
                &github_signature(WEBHOOK_SECRET, body),
            )],
            Some(body),
        )
        .unwrap();
    assert_eq!(good.status, 200, "{}", good.body_str());

    // `events.auth_success: "all"`: each authenticated request that was allowed is logged, with
    // its provider and principal (never the token).
    let deadline = Instant::now() + WAIT;
    let successes = loop {
        let successes: Vec<Value> = security_events(&envoy)
            .into_iter()
            .filter(|e| e["event"] == "auth_success")
            .collect();
        if successes.len() >= 2 || Instant::now() >= deadline {
            break successes;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(successes.len(), 2, "{successes:?}");
    for event in &successes {
        assert_eq!(
            (&event["route"], &event["provider"], &event["principal"]),
            (&json!("api"), &json!("main"), &json!("alice")),
            "{event}"
        );
        assert!(!event.to_string().contains(&bearer[7..]));
    }

    let after = Scrape::of(&envoy);
    let mut expected: BTreeMap<String, f64> = [
        (requests("health", "allowed", "ok"), 3.0),
        (requests("_unmatched", "refused", "not_found"), 2.0),
        (requests("api", "refused", "unauthorized"), 1.0),
        (requests("api", "allowed", "ok"), 2.0),
        (requests("limited", "allowed", "ok"), 1.0),
        (requests("limited", "refused", "rate_limited"), 2.0),
        (requests("hooks", "refused", "invalid_signature"), 1.0),
        (requests("hooks", "allowed", "ok"), 1.0),
        (
            r#"api_guard_rate_limit_total{limit="single",result="allowed"}"#.into(),
            1.0,
        ),
        (
            r#"api_guard_rate_limit_total{limit="single",result="limited"}"#.into(),
            2.0,
        ),
        (r#"api_guard_token_cache_total{result="miss"}"#.into(), 1.0),
        (r#"api_guard_token_cache_total{result="hit"}"#.into(), 1.0),
        (
            r#"api_guard_webhook_verifications_total{webhook="github",result="invalid"}"#.into(),
            1.0,
        ),
        (
            r#"api_guard_webhook_verifications_total{webhook="github",result="valid"}"#.into(),
            1.0,
        ),
    ]
    .into_iter()
    .map(|(series, delta)| (canonical(&series), delta))
    .collect();
    // Every other counter stays where it was (gauges and JWKS fetches move on their own).
    for (series, value) in &after.series {
        if series.starts_with("api_guard_jwks_") || series.starts_with("api_guard_events_dropped") {
            continue;
        }
        let delta = value - before.series.get(series).copied().unwrap_or(0.0);
        let want = expected.remove(series).unwrap_or(0.0);
        assert_eq!(delta, want, "delta of {series}");
    }
    assert!(expected.is_empty(), "series missing: {expected:?}");

    // Events over the budget (2 a second on this worker): each one missing from the log is
    // counted, exactly. A fresh second first, so that earlier events do not share its budget.
    thread::sleep(Duration::from_millis(1100));
    let dropped_series = "api_guard_events_dropped_total";
    let dropped_before = Scrape::of(&envoy).value(dropped_series);
    let flood = 10;
    for i in 0..flood {
        let path = format!("/flood-{i}");
        assert_eq!(envoy.request("GET", &path, &[]).status, 404);
    }
    let dropped = Scrape::of(&envoy).value(dropped_series) - dropped_before;
    let logged = || {
        security_events(&envoy)
            .iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/flood-")))
            .count()
    };
    // The log file is written asynchronously: wait until it has every written line.
    let deadline = Instant::now() + WAIT;
    while (logged() as f64) + dropped < f64::from(flood) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        dropped >= 1.0,
        "ten events at two a second: some are dropped"
    );
    assert_eq!(logged() as f64 + dropped, f64::from(flood));
}

#[test]
fn a_refused_configuration_shows_and_fails_closed() {
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(json!({ "routes": [{ "name": "x" }] }).to_string()),
        concurrency: 1,
        ..EnvoyOptions::default()
    });
    let before = Scrape::of(&envoy);
    assert_eq!(before.value("api_guard_config_refused"), 1.0);
    assert_eq!(
        before
            .types
            .get("api_guard_config_refused")
            .map(String::as_str),
        Some("gauge")
    );
    for _ in 0..2 {
        assert_eq!(envoy.request("GET", "/healthz", &[]).status, 503);
    }
    let after = Scrape::of(&envoy);
    assert_eq!(
        after.value("api_guard_fail_closed_total") - before.value("api_guard_fail_closed_total"),
        2.0
    );
}

// ---- A real Prometheus -----------------------------------------------------------------------

/// Prometheus, stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `admin_port`'s `/stats/prometheus` every second (Debian's binary, or
    /// `$PROMETHEUS`).
    fn start(admin_port: u16, dir: PathBuf) -> Prometheus {
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
        std::fs::create_dir_all(&dir).unwrap();
        // The README's relabel for the dynamic module (its series carry Envoy's
        // `envoy_dynamicmodulescustom_` prefix); the wasm filter's series do not match it.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n- job_name: envoy\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: ['127.0.0.1:{admin_port}']\n  metric_relabel_configs:\n  - source_labels: [__name__]\n    regex: \"{MODULE_PROMETHEUS_PREFIX}(.*)\"\n    target_label: __name__\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e} (make prometheus-bin installs it)"));
        Prometheus { child, port, dir }
    }

    /// `/api/v1/query` of an instant query: the result vector.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let response = send_request(
            addr,
            "GET",
            &format!("/api/v1/query?query={encoded}"),
            &[],
            None,
        )
        .ok()?;
        let body: Value = serde_json::from_str(&response.body_str()).ok()?;
        (body["status"] == "success").then(|| body["data"]["result"].as_array().cloned())?
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

#[test]
#[ignore = "needs Debian's prometheus: make test-prometheus"]
fn prometheus_scrapes_the_series_with_their_labels() {
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(
            json!({
                "rate_limits": { "pair": { "requests": 2, "window_seconds": 31536000,
                                           "key": "header:x-client" } },
                "routes": [
                    { "name": "health", "match": { "path_exact": "/healthz" }, "auth": "none",
                      "rate_limit": "pair" }
                ]
            })
            .to_string(),
        ),
        concurrency: 1,
        ..EnvoyOptions::default()
    });
    for _ in 0..3 {
        envoy.request("GET", "/healthz", &[("x-client", "c")]);
    }
    envoy.request("GET", "/nowhere", &[]);
    let prometheus = Prometheus::start(envoy.admin_port(), envoy.tmp_dir().join("prometheus"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = [
        (
            r#"api_guard_requests_total{route="health",decision="allowed",code="ok"}"#,
            2.0,
        ),
        (
            r#"api_guard_requests_total{route="health",decision="refused",code="rate_limited"}"#,
            1.0,
        ),
        (
            r#"api_guard_requests_total{route="_unmatched",decision="refused",code="not_found"}"#,
            1.0,
        ),
        (
            r#"api_guard_rate_limit_total{limit="pair",result="limited"}"#,
            1.0,
        ),
        ("api_guard_config_refused", 0.0),
    ];
    for (query, value) in wanted {
        let result = loop {
            match prometheus.query(query) {
                Some(result) if !result.is_empty() => break result,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never had {query}; its log:\n{}",
                prometheus.log()
            );
            thread::sleep(Duration::from_millis(250));
        };
        assert_eq!(result.len(), 1, "{query}: {result:?}");
        let sample = &result[0];
        assert_eq!(sample["metric"]["job"], "envoy", "{query}");
        let got: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
        assert_eq!(got, value, "{query}");
    }
    // The labels arrived as labels: grouping by them works.
    let by_code = prometheus
        .query(r#"sum by (code) (api_guard_requests_total{route="health",decision="refused"})"#)
        .unwrap();
    let codes: Vec<&str> = by_code
        .iter()
        .filter_map(|s| s["metric"]["code"].as_str())
        .collect();
    assert!(
        codes.contains(&"rate_limited") && codes.len() == 15,
        "{codes:?}"
    );
}
