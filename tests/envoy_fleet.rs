//! Fleet-wide limits through real processes: two Envoys (each `--concurrency 2`) ask one Rate
//! Limit Service (tools/limitador-rls) that counts in one Redis. `#[ignore]`d: `make test-fleet`
//! builds the service (Limitador needs RocksDB and a C++ compile) and runs them.
//!
//! Redis is Debian's `redis-server`, started here on a free loopback port with persistence off
//! and stopped (SIGKILL) at the end; so is the service.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::free_port;

use api_guard_core::support::mint;
use common::{assert_envelope, security_events, Envoy, EnvoyOptions, Response};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const DOMAIN: &str = "api-guard";
/// The limit every key kind gets from the service's limits file.
const LIMIT: u64 = 5;

/// The engine of the failure-mode and latency tests: `FLEET_ENGINE` (`limitador`, the default,
/// or `redis`).
fn engine_under_test() -> &'static str {
    match std::env::var("FLEET_ENGINE").as_deref() {
        Ok("redis") => "redis",
        _ => "limitador",
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (and reaped) on drop.
struct Process {
    child: Option<Child>,
    port: u16,
}

impl Process {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_redis() -> Process {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args([
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server: {e} (make fleet-deps installs it)"));
    wait_listening(port, "redis-server");
    Process {
        child: Some(child),
        port,
    }
}

fn rls_binary() -> PathBuf {
    let path = common::crate_root().join("tools/limitador-rls/target/debug/limitador-rls");
    assert!(
        path.is_file(),
        "{} missing: make limitador-rls",
        path.display()
    );
    path
}

/// Limitador's limits format: one limit per name, counted per the descriptor's second entry.
fn limits_file() -> PathBuf {
    let mut yaml = String::new();
    for (name, entry) in [
        ("fleet_ip", "ip"),
        ("fleet_principal", "principal"),
        ("fleet_api_key", "api_key"),
        ("fleet_tenant", "x-tenant"),
        ("fleet_deny", "ip"),
        ("fleet_allow", "ip"),
    ] {
        yaml.push_str(&format!(
            "- namespace: {DOMAIN}\n  name: {name}\n  max_value: {LIMIT}\n  seconds: 3600\n  conditions:\n    - \"descriptors[0]['limit'] == '{name}'\"\n  variables:\n    - \"descriptors[0]['{entry}']\"\n"
        ));
    }
    yaml.push_str(&format!(
        "- namespace: {DOMAIN}\n  name: fleet_wide\n  max_value: 1000000\n  seconds: 3600\n  conditions:\n    - \"descriptors[0]['limit'] == 'fleet_wide'\"\n  variables:\n    - \"descriptors[0]['ip']\"\n"
    ));
    let path = std::env::temp_dir().join(format!(
        "api-guard-fleet-limits-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn start_rls(engine: &str, redis_port: u16, port: Option<u16>) -> Process {
    let port = port.unwrap_or_else(free_port);
    let child = Command::new(rls_binary())
        .env("FLEET_ENGINE", engine)
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("redis://127.0.0.1:{redis_port}/"))
        .arg(limits_file())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_listening(port, "limitador-rls");
    Process {
        child: Some(child),
        port,
    }
}

/// The RLS cluster: gRPC needs HTTP/2 to the service (without it every call ends with status 14).
fn rls_cluster(port: u16) -> String {
    format!(
        "- name: ratelimit\n  type: STATIC\n  connect_timeout: 0.5s\n  typed_extension_protocol_options:\n    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n      \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n      explicit_http_config:\n        http2_protocol_options: {{}}\n  load_assignment:\n    cluster_name: ratelimit\n    endpoints:\n    - lb_endpoints:\n      - endpoint:\n          address:\n            socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
    )
}

struct Keys {
    a: String,
    b: String,
}

fn plugin_config(keys: &Keys) -> Value {
    let snippet = |key: &str, id: &str| {
        serde_json::to_value(mint::api_key_snippet(key, "ag_test_", Some(id), &[], None).unwrap())
            .unwrap()
    };
    json!({
        "api_keys": { "header": "x-api-key", "keys": [snippet(&keys.a, "svc-a"), snippet(&keys.b, "svc-b")] },
        "rate_limit_services": {
            "fleet": { "cluster": "ratelimit", "domain": DOMAIN, "timeout_ms": 500, "failure_mode": "deny" },
            "fleet_open": { "cluster": "ratelimit", "domain": DOMAIN, "timeout_ms": 500, "failure_mode": "allow" }
        },
        "rate_limits": {
            "local": { "requests": 1000000, "window_seconds": 3600, "key": "ip" },
            "fleet_ip": { "service": "fleet", "key": "ip" },
            "fleet_principal": { "service": "fleet", "key": "principal" },
            "fleet_api_key": { "service": "fleet", "key": "api_key" },
            "fleet_tenant": { "service": "fleet", "key": "header:X-Tenant" },
            "fleet_deny": { "service": "fleet", "key": "ip" },
            "fleet_allow": { "service": "fleet_open", "key": "ip" },
            "fleet_wide": { "service": "fleet", "key": "ip" },
            "tight": { "requests": 2, "window_seconds": 3600, "key": "ip" }
        },
        "routes": [
            { "name": "ip", "match": { "path_prefix": "/ip" }, "auth": "none", "rate_limit": "fleet_ip" },
            { "name": "principal", "match": { "path_prefix": "/principal" }, "auth": "api_key", "rate_limit": "fleet_principal" },
            { "name": "api_key", "match": { "path_prefix": "/key" }, "auth": "api_key", "rate_limit": "fleet_api_key" },
            { "name": "tenant", "match": { "path_prefix": "/tenant" }, "auth": "none", "rate_limit": "fleet_tenant" },
            { "name": "deny", "match": { "path_prefix": "/deny" }, "auth": "none", "rate_limit": "fleet_deny" },
            { "name": "allow", "match": { "path_prefix": "/allow" }, "auth": "none", "rate_limit": "fleet_allow" },
            { "name": "both", "match": { "path_prefix": "/both" }, "auth": "none", "rate_limit": ["fleet_wide", "tight"] },
            { "name": "wide", "match": { "path_prefix": "/wide" }, "auth": "none", "rate_limit": "fleet_wide" },
            { "name": "local", "match": { "path_prefix": "/local" }, "auth": "none", "rate_limit": "local" }
        ]
    })
}

struct Fleet {
    envoys: [Envoy; 2],
    rls: Process,
    redis: Process,
    engine: &'static str,
}

impl Fleet {
    fn start(engine: &'static str, keys: &Keys) -> Fleet {
        let redis = start_redis();
        let rls = start_rls(engine, redis.port, None);
        let config = plugin_config(keys).to_string();
        let envoy = || {
            Envoy::start(EnvoyOptions {
                plugin_config: Some(config.clone()),
                concurrency: 2,
                extra_clusters_yaml: Some(rls_cluster(rls.port)),
                ..Default::default()
            })
        };
        Fleet {
            envoys: [envoy(), envoy()],
            rls,
            redis,
            engine,
        }
    }

    /// Requests alternate between the two Envoys.
    fn get(&self, i: usize, path: &str, headers: &[(&str, &str)]) -> Response {
        self.envoys[i % 2].request("GET", path, headers)
    }
}

fn keys() -> Keys {
    Keys {
        a: mint::generate_api_key("ag_test_").unwrap(),
        b: mint::generate_api_key("ag_test_").unwrap(),
    }
}

/// `LIMIT` admitted across both Envoys for one key, each with the service's headers; then 429.
fn exactly_the_limit(fleet: &Fleet, case: &str, path: &str, headers: &[(&str, &str)]) {
    for i in 0..LIMIT as usize {
        let response = fleet.get(i, path, headers);
        assert_eq!(response.status, 200, "{case} #{i}: {}", response.body_str());
        assert_eq!(
            response.header("x-ratelimit-limit"),
            Some("5"),
            "{case} #{i}"
        );
        let remaining = (LIMIT - 1 - i as u64).to_string();
        assert_eq!(
            response.header("x-ratelimit-remaining"),
            Some(remaining.as_str()),
            "{case} #{i}"
        );
        assert_eq!(
            response.header("x-fleet-engine"),
            Some(fleet.engine),
            "{case} #{i}"
        );
    }
    let refused = fleet.get(LIMIT as usize, path, headers);
    assert_envelope(case, &refused, 429, "rate_limited");
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"), "{case}");
    assert_eq!(
        refused.header("x-fleet-engine"),
        Some(fleet.engine),
        "{case}"
    );
    let policy = refused
        .header("ratelimit-policy")
        .unwrap_or_default()
        .to_string();
    assert!(policy.ends_with(";q=5;w=3600"), "{case}: {policy}");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{case}: retry-after {retry}");
}

/// 40 concurrent requests for one fresh key, across both Envoys: how many were admitted.
fn admitted_of_concurrent(fleet: &Fleet, tenant: &str) -> usize {
    let ports = [fleet.envoys[0].port(), fleet.envoys[1].port()];
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let port = ports[i % 2];
            let tenant = tenant.to_string();
            thread::spawn(move || {
                let addr = format!("127.0.0.1:{port}").parse().unwrap();
                common::send_request(
                    addr,
                    "GET",
                    "/tenant",
                    &[("x-tenant", tenant.as_str())],
                    None,
                )
                .map(|r| r.status)
                .unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count()
}

fn run_engine(engine: &'static str) {
    let keys = keys();
    let fleet = Fleet::start(engine, &keys);
    exactly_the_limit(&fleet, "ip", "/ip", &[]);
    exactly_the_limit(
        &fleet,
        "principal",
        "/principal",
        &[("x-api-key", keys.a.as_str())],
    );
    exactly_the_limit(&fleet, "api_key", "/key", &[("x-api-key", keys.b.as_str())]);
    exactly_the_limit(&fleet, "tenant", "/tenant", &[("x-tenant", "acme")]);
    // Another tenant, another principal: their own counters.
    assert_eq!(
        fleet.get(0, "/tenant", &[("x-tenant", "globex")]).status,
        200
    );
    assert_eq!(
        fleet
            .get(1, "/principal", &[("x-api-key", keys.b.as_str())])
            .status,
        200
    );
    // The service's request header reached the upstream.
    let seen = fleet.envoys[0].upstream_requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-fleet-checked"), Some(engine), "{:?}", last);

    // Local first: the tight local limit (2) refuses the third request before the service.
    for i in 0..2 {
        assert_eq!(
            fleet.envoys[0].request("GET", "/both", &[]).status,
            200,
            "both #{i}"
        );
    }
    let refused = fleet.envoys[0].request("GET", "/both", &[]);
    assert_envelope("both", &refused, 429, "rate_limited");
    assert_eq!(
        refused.header("x-fleet-engine"),
        None,
        "the local limit refused it"
    );

    let mut rounds = Vec::new();
    for round in 0..5 {
        rounds.push(admitted_of_concurrent(
            &fleet,
            &format!("burst-{engine}-{round}"),
        ));
    }
    eprintln!(
        "fleet engine {engine}: admitted of 40 concurrent (limit {LIMIT}), 5 rounds: {rounds:?}"
    );
    if engine == "redis" {
        assert!(rounds.iter().all(|n| *n == LIMIT as usize), "{rounds:?}");
    } else {
        // Limitador's async Redis storage reads then writes: at least the limit, and a measured
        // excess under concurrency (reported, not bounded here).
        assert!(rounds.iter().all(|n| *n >= LIMIT as usize), "{rounds:?}");
    }
    drop(fleet);
}

#[test]
#[ignore = "needs redis-server and tools/limitador-rls: make test-fleet"]
fn two_envoys_share_one_limit_limitador_engine() {
    run_engine("limitador");
}

#[test]
#[ignore = "needs redis-server and tools/limitador-rls: make test-fleet"]
fn two_envoys_share_one_limit_redis_engine() {
    run_engine("redis");
}

fn failed_event(envoy: &Envoy, route: &str) -> Value {
    common::wait_for_event(envoy, "rate_limit_service_failed", |e| {
        e["event"] == "rate_limit_service_failed" && e["route"] == route
    })
}

#[test]
#[ignore = "needs redis-server and tools/limitador-rls: make test-fleet"]
fn service_down_stalled_restarted_and_redis_down_follow_failure_mode() {
    let keys = keys();
    let mut fleet = Fleet::start(engine_under_test(), &keys);
    assert_eq!(fleet.get(0, "/deny", &[]).status, 200);
    assert_eq!(service_answers(&fleet.envoys[0], "fleet_deny", "ok"), 1);
    assert_eq!(service_answers(&fleet.envoys[0], "fleet_deny", "failed"), 0);

    // Down: deny answers 503, allow admits; an event names the reason either way.
    let rls_port = fleet.rls.port;
    fleet.rls.kill();
    let denied = fleet.get(0, "/deny", &[]);
    assert_envelope("rls down, deny", &denied, 503, "service_unavailable");
    let event = failed_event(&fleet.envoys[0], "deny");
    assert_eq!(event["code"], "service_unavailable");
    assert!(
        event["reason"].as_str().unwrap().contains("gRPC status 14"),
        "{event}"
    );
    let allowed = fleet.get(1, "/allow", &[]);
    assert_eq!(
        allowed.status,
        200,
        "rls down, allow: {}",
        allowed.body_str()
    );
    let event = failed_event(&fleet.envoys[1], "allow");
    assert_eq!(event["code"], "allowed", "{event}");
    // A metric each, whatever the failure mode decided.
    assert_eq!(service_answers(&fleet.envoys[0], "fleet_deny", "failed"), 1);
    assert_eq!(
        service_answers(&fleet.envoys[1], "fleet_allow", "failed"),
        1
    );

    // Restarted on the same port: the limit is back, with the counts kept in Redis.
    fleet.rls = start_rls(engine_under_test(), fleet.redis.port, Some(rls_port));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = fleet.get(0, "/deny", &[]);
        if response.status == 200 {
            assert_eq!(response.header("x-ratelimit-remaining"), Some("3"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted service is never asked"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // Stalled: the call's timeout (500 ms) ends it, as a failure.
    fleet.rls.signal("-STOP");
    let started = Instant::now();
    let stalled = fleet.get(1, "/deny", &[]);
    let waited = started.elapsed();
    fleet.rls.signal("-CONT");
    assert_envelope("rls stalled, deny", &stalled, 503, "service_unavailable");
    assert!(
        waited >= Duration::from_millis(400),
        "answered in {waited:?}: before the timeout?"
    );

    // Redis down: the service errs, deny answers 503.
    fleet.redis.kill();
    let response = fleet.get(0, "/deny", &[]);
    assert_envelope("redis down, deny", &response, 503, "service_unavailable");
    let events = security_events(&fleet.envoys[0]);
    assert!(events
        .iter()
        .any(|e| e["event"] == "rate_limit_service_failed"
            && e["reason"].as_str().unwrap_or("").contains("gRPC status")));
}

/// `api_guard_rate_limit_service_total{limit, result}` of one Envoy, from its admin `/stats`
/// (the stat is `wasmcustom.` or `dynamicmodulescustom.` and the series name, per adapter).
fn service_answers(envoy: &Envoy, limit: &str, result: &str) -> u64 {
    let series = format!("api_guard_rate_limit_service_total.limit.{limit}.result.{result}: ");
    let stats = envoy.admin("/stats").body_str();
    stats
        .lines()
        .find_map(|line| {
            line.split_once(&series)
                .map(|(_, n)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no stat {series:?} in /stats"))
}

/// The added latency per request of a service limit against the local limiter, in one run
/// (sequential requests, one Envoy): printed, never asserted.
#[test]
#[ignore = "needs redis-server and tools/limitador-rls: make test-fleet"]
fn latency_of_a_service_limit_against_the_local_limiter() {
    let keys = keys();
    let fleet = Fleet::start(engine_under_test(), &keys);
    let envoy = &fleet.envoys[0];
    let measure = |path: &str| {
        for _ in 0..20 {
            assert_eq!(envoy.request("GET", path, &[]).status, 200);
        }
        let mut micros: Vec<u128> = (0..300)
            .map(|_| {
                let started = Instant::now();
                let response = envoy.request("GET", path, &[]);
                assert_eq!(response.status, 200, "{path}");
                started.elapsed().as_micros()
            })
            .collect();
        micros.sort_unstable();
        (micros[micros.len() / 2], micros[micros.len() * 99 / 100])
    };
    let (local_p50, local_p99) = measure("/local");
    let (fleet_p50, fleet_p99) = measure("/wide");
    eprintln!(
        "latency per request, 300 sequential: local limiter p50 {local_p50} us p99 {local_p99} us; \
         service limit (limitador-rls + Redis) p50 {fleet_p50} us p99 {fleet_p99} us; \
         added p50 {} us p99 {} us",
        fleet_p50.saturating_sub(local_p50),
        fleet_p99.saturating_sub(local_p99)
    );
}
