//! Smoke test of the real-Envoy harness (tests/common), in "bare" mode: no
//! wasm filter, so it only needs Envoy. Run with
//! `cargo test --test harness_smoke -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Envoy, EnvoyOptions};

#[test]
fn bare_envoy_proxies_to_the_recording_upstream() {
    let envoy = Envoy::start(EnvoyOptions::default());
    eprintln!(
        "Envoy pid {} ready in {:?} (listener {}, admin {}, upstream {})",
        envoy.pid(),
        envoy.startup_time(),
        envoy.port(),
        envoy.admin_port(),
        envoy.upstream_port()
    );

    // A plain GET goes through, with the upstream's body.
    let resp = envoy.request(
        "GET",
        "/hello",
        &[("x-smoke", "one"), ("x-dup", "a"), ("x-dup", "b")],
    );
    assert_eq!(resp.status, 200, "body: {}", resp.body_str());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.body_str(), r#"{"upstream":"ok","path":"/hello"}"#);
    assert_eq!(resp.json()["path"], "/hello");

    let seen = envoy.upstream_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/hello");
    assert!(
        req.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "{req:?}"
    );
    // Headers sent by the test reach the upstream (duplicates too).
    assert_eq!(req.header("x-smoke"), Some("one"));
    assert_eq!(req.header_all("x-dup"), vec!["a", "b"]);

    // /status/<code> answers that status with the leaky body.
    let resp = envoy.request("GET", "/status/503", &[]);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.body_str(), common::LEAKY_DETAIL_BODY);

    // Bodies: Content-Length, and chunked (sent pre-encoded by the test).
    envoy.clear_upstream_requests();
    let resp = envoy.request_with_body(
        "POST",
        "/echo",
        &[("content-type", "application/json")],
        br#"{"a":1}"#,
    );
    assert_eq!(resp.status, 200);
    let resp = envoy.request_with_body(
        "PUT",
        "/chunked",
        &[("transfer-encoding", "chunked")],
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let seen = envoy.upstream_requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].body.as_slice()),
        ("POST", &br#"{"a":1}"#[..])
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].body_str().as_str()),
        ("PUT", "abcdefg")
    );

    // Without normalize_path/merge_slashes Envoy forwards the path verbatim.
    envoy.clear_upstream_requests();
    let resp = envoy.request("GET", "/a/../b//c/%2e%2E/d?q=1", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(envoy.upstream_requests()[0].path, "/a/../b//c/%2e%2E/d?q=1");

    // Keep-alive: many requests reuse Envoy's pooled upstream connections.
    for i in 0..20 {
        let p = format!("/ka/{i}");
        assert_eq!(envoy.request("GET", &p, &[]).status, 200, "{p}");
    }

    // HEAD has no body.
    let resp = envoy.request("HEAD", "/head", &[]);
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());

    // The log is readable (and flushed promptly).
    assert!(
        envoy.wait_for_log("starting main dispatch loop", Duration::from_secs(5)),
        "{}",
        envoy.log()
    );
    assert!(!envoy.log().is_empty());
    assert!(envoy.admin("/ready").body_str().contains("LIVE"));
}

#[test]
fn several_envoys_run_side_by_side() {
    let a = Envoy::bare();
    let b = Envoy::start(EnvoyOptions {
        concurrency: 1,
        ..Default::default()
    });
    assert_ne!(a.port(), b.port());
    assert_eq!(a.request("GET", "/a", &[]).status, 200);
    assert_eq!(b.request("GET", "/b", &[]).status, 200);
    assert_eq!(a.upstream_requests().len(), 1);
    assert_eq!(b.upstream_requests()[0].path, "/b");
    let pid = a.pid();
    drop(a);
    // Killed and reaped on drop.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "Envoy {pid} survived drop"
    );
    assert_eq!(b.request("GET", "/still-up", &[]).status, 200);
}

#[test]
fn extra_clusters_are_accepted() {
    let envoy = Envoy::start(EnvoyOptions {
        extra_clusters_yaml: Some(
            "- name: extra\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: extra\n    endpoints:\n    - lb_endpoints:\n      - endpoint:\n          address:\n            socket_address: { address: 127.0.0.1, port_value: 9 }\n"
                .to_string(),
        ),
        ..Default::default()
    });
    assert!(envoy.admin("/clusters").body_str().contains("extra::"));
}

#[test]
fn refused_config_is_reported_with_the_log() {
    let err = Envoy::try_start(EnvoyOptions {
        extra_clusters_yaml: Some("- name: broken\n  type: NO_SUCH_TYPE\n".to_string()),
        ..Default::default()
    })
    .err()
    .expect("Envoy should refuse an invalid cluster type");
    assert!(err.reason.contains("exited"), "{err}");
    assert!(err.to_string().contains("NO_SUCH_TYPE"), "{err}");
}

/// The wasm-mode YAML must be a config Envoy accepts without deprecation
/// warnings, with a plugin JSON that needs quoting. Needs the built wasm
/// (`make build`).
#[test]
fn wasm_mode_config_validates() {
    let wasm = common::wasm_path();
    assert!(
        wasm.is_file(),
        "{} not found: run `make build`",
        wasm.display()
    );
    let yaml = common::render_config(&common::ConfigParams {
        listener_port: 10000,
        admin_port: 10001,
        upstream_port: 10002,
        plugin: Some((r#"{"quote":"it's \"x\"","uni":"é\u2028"}"#, &wasm)),
        extra_clusters_yaml: None,
    });
    let dir = std::env::temp_dir().join(format!("api-guard-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let mut validate = Command::new(common::envoy_path());
    validate
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&path);
    if common::adapter() == common::Adapter::Module {
        // Envoy loads the module to validate its config too.
        validate.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", common::module_dir());
    }
    let out = validate.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "validate failed:\n{text}\n--- config ---\n{yaml}"
    );
    assert!(!text.contains("Deprecated field"), "{text}");
}
