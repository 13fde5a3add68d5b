#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The wire checks against the `envoy-types` crate's generated code live in
// tools/limitador-rls/tests/rls_wire.rs (`make test-fleet`): envoy-types brings tonic and every
// Envoy proto, minutes of build that `make test` does not need.

use super::*;
use serde_json::json;

#[test]
fn services_and_service_limits_are_checked_with_their_paths() {
    let services = compile_services(
        &json!({ "fleet": { "cluster": "ratelimit", "domain": "api-guard" } }),
        "rate_limit_services",
    )
    .unwrap();
    let fleet = &services["fleet"];
    assert_eq!(
        (fleet.timeout_ms, fleet.failure_mode),
        (DEFAULT_TIMEOUT_MS, FailureMode::Deny)
    );
    let errors = compile_services(
        &json!({ "fleet": { "cluster": "", "domain": "d", "timeout_ms": 0, "failure_mode": "maybe" },
                 "other": { "cluster": "c", "domain": "", "timeout_ms": 0 } }),
        "rate_limit_services",
    )
    .unwrap_err();
    let paths: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        paths[0].starts_with("rate_limit_services.fleet.failure_mode: "),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("rate_limit_services.other.domain: ")),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("rate_limit_services.other.timeout_ms: ")),
        "{paths:?}"
    );

    let names = ["fleet".to_string()];
    let at = "rate_limits.read";
    let ok = compile_limit(
        "read",
        &json!({ "service": "fleet", "key": "header:X-Tenant" }),
        at,
        &names,
    )
    .unwrap();
    assert_eq!(
        (ok.key.clone(), ok.override_limit),
        (LimitKey::Header("x-tenant".into()), None)
    );
    let with = compile_limit(
        "read",
        &json!({ "service": "fleet", "key": "ip", "requests": 5, "window_seconds": 3600 }),
        at,
        &names,
    )
    .unwrap();
    assert_eq!(with.override_limit, Some((5, unit::HOUR)));
    let unknown = compile_limit(
        "read",
        &json!({ "service": "flet", "key": "ip" }),
        at,
        &names,
    )
    .unwrap_err();
    assert_eq!(
        unknown[0].to_string(),
        r#"rate_limits.read.service: unknown rate limit service "flet" (not in "rate_limit_services")"#
    );
    let window = compile_limit(
        "read",
        &json!({ "service": "fleet", "key": "ip", "requests": 5, "window_seconds": 900 }),
        at,
        &names,
    )
    .unwrap_err();
    assert!(window[0]
        .to_string()
        .starts_with("rate_limits.read.window_seconds: "));
    let half = compile_limit(
        "read",
        &json!({ "service": "fleet", "key": "ip", "requests": 5 }),
        at,
        &names,
    )
    .unwrap_err();
    assert!(half[0]
        .to_string()
        .starts_with("rate_limits.read.window_seconds: "));
    let typo = compile_limit(
        "read",
        &json!({ "service": "fleet", "key": "ip", "request": 5 }),
        at,
        &names,
    )
    .unwrap_err();
    assert!(
        typo[0].to_string().starts_with("rate_limits.read"),
        "{typo:?}"
    );
}
