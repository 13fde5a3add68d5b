//! The `api-guard` command line, run as users run it: the built binary, its exit code, what it
//! prints on standard output and standard error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::api_keys::{key_sha256_hex, ApiKeys, ApiKeysConfig};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_api-guard");
/// The repository root (this crate is `cli/`): the CLI is run from there, as a user would.
const CRATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn finish(output: Output) -> Run {
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn run(args: &[&str]) -> Run {
    finish(
        Command::new(BIN)
            .args(args)
            .current_dir(CRATE)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

fn run_with_stdin(args: &[&str], input: &str) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(CRATE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    finish(child.wait_with_output().unwrap())
}

/// A file under Cargo's per-test scratch directory.
fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    std::fs::write(&path, contents).unwrap();
    path
}

/// The snippet, compiled by the filter's own code: it must accept `key`.
fn accepts(snippet: &Value, key: &str) -> String {
    let config: ApiKeysConfig =
        serde_json::from_value(serde_json::json!({ "keys": [snippet] })).unwrap();
    let keys = ApiKeys::compile(&config, "api_keys").unwrap();
    keys.verify(key, 0).unwrap().id.clone()
}

#[test]
fn keygen_prints_a_key_once_and_a_snippet_that_accepts_it() {
    let out = run(&[
        "keygen",
        "--prefix",
        "ag_live_",
        "--id",
        "billing-svc",
        "--scopes",
        "invoices:read,invoices:write",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (key, json) = out.stdout.split_once('\n').unwrap();
    let snippet: Value = serde_json::from_str(json).unwrap();

    let random = key.strip_prefix("ag_live_").unwrap();
    assert_eq!(random.len(), 43, "{key}");
    assert!(random
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(snippet["sha256"], key_sha256_hex(key));
    assert_eq!(snippet["id"], "billing-svc");
    assert_eq!(snippet["prefix"], "ag_live_");
    assert_eq!(
        snippet["scopes"],
        serde_json::json!(["invoices:read", "invoices:write"])
    );
    assert_eq!(accepts(&snippet, key), "billing-svc");
    // The key is printed once, and only on standard output.
    assert_eq!(out.stdout.matches(key).count(), 1);
    assert!(!out.stderr.contains(key));
    assert!(out.stderr.contains("only this once"), "{}", out.stderr);

    let again = run(&["keygen", "--prefix", "ag_live_"]);
    assert_eq!(again.code, 0);
    let (other_key, other_json) = again.stdout.split_once('\n').unwrap();
    assert_ne!(other_key, key);
    let other: Value = serde_json::from_str(other_json).unwrap();
    assert_eq!(
        other["id"],
        format!("key-{}", &key_sha256_hex(other_key)[..8])
    );
}

#[test]
fn keygen_refuses_bad_arguments() {
    for args in [
        vec!["keygen"],
        vec!["keygen", "--prefix", ""],
        vec!["keygen", "--prefix", "ag live"],
        vec!["keygen", "--prefix", "ag_", "--scopes", "a b"],
        vec![
            "keygen",
            "--prefix",
            "ag_",
            "--expires-at",
            "2027-02-30T00:00:00Z",
        ],
        vec!["keygen", "--prefix", "ag_", "--nope", "x"],
        vec!["keygen", "--prefix"],
    ] {
        let out = run(&args);
        assert_eq!(out.code, 2, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
}

#[test]
fn hash_from_an_argument_and_from_stdin() {
    // What keygen makes: the prefix, then 43 base64url characters (here starting with a
    // lower-case `label_`, which must not be taken for part of the prefix).
    let key = &format!("ag_live_abc_{}A", "d".repeat(38));
    assert_eq!(key.len(), 8 + 43);
    let from_arg = run(&[
        "hash",
        key,
        "--id",
        "ci",
        "--expires-at",
        "2027-06-30T00:00:00Z",
    ]);
    assert_eq!(from_arg.code, 0, "{}", from_arg.stderr);
    let snippet: Value = serde_json::from_str(&from_arg.stdout).unwrap();
    assert_eq!(snippet["sha256"], key_sha256_hex(key));
    // An api-guard key: the prefix is what precedes its 43 random characters, even though
    // those hold underscores.
    assert_eq!(snippet["prefix"], "ag_live_");
    assert_eq!(snippet["expires_at"], "2027-06-30T00:00:00Z");
    assert_eq!(accepts(&snippet, key), "ci");
    assert!(!from_arg.stdout.contains(key));

    for input in [format!("{key}\n"), format!("{key}\r\n"), key.to_string()] {
        let from_stdin = run_with_stdin(
            &[
                "hash",
                "-",
                "--id",
                "ci",
                "--expires-at",
                "2027-06-30T00:00:00Z",
            ],
            &input,
        );
        assert_eq!(from_stdin.code, 0, "{}", from_stdin.stderr);
        assert_eq!(from_stdin.stdout, from_arg.stdout);
    }

    // A foreign key: its leading labels are the prefix, or --prefix says it.
    let stripe_like = run(&["hash", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"]);
    assert_eq!(stripe_like.code, 0, "{}", stripe_like.stderr);
    let snippet: Value = serde_json::from_str(&stripe_like.stdout).unwrap();
    assert_eq!(snippet["prefix"], "sk_live_");
    assert!(stripe_like.stderr.contains("inferred"));
    let told = run(&["hash", "plainkey0123456789abcdef", "--prefix", "plain"]);
    assert_eq!(told.code, 0, "{}", told.stderr);
    let snippet: Value = serde_json::from_str(&told.stdout).unwrap();
    assert_eq!(snippet["prefix"], "plain");
    assert_eq!(snippet["scopes"], serde_json::json!([]));
}

#[test]
fn hash_refuses_what_the_filter_would_refuse() {
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["hash"], None),
        (vec!["hash", "plainkey0123456789abcdef"], None),
        (
            vec!["hash", "ag_live_0123456789abcdef", "--prefix", "sk_"],
            None,
        ),
        (vec!["hash", "-"], Some("ag_live_with space 0123456789\n")),
        (vec!["hash", "-"], Some("")),
        (vec!["hash", "a", "b"], None),
    ];
    for (args, stdin) in cases {
        let out = match stdin {
            Some(input) => run_with_stdin(&args, input),
            None => run(&args),
        };
        assert_eq!(out.code, 2, "{args:?} {stdin:?}: {}", out.stdout);
        assert!(out.stdout.is_empty());
        // Never repeats the key it refused.
        assert!(!out.stderr.contains("0123456789"), "{}", out.stderr);
    }
}

#[test]
fn check_a_good_and_a_bad_json_config() {
    let good = scratch_file(
        "good.json",
        r#"{"routes":[{"name":"health","match":{"path_exact":"/healthz"},"auth":"none"}]}"#,
    );
    let out = run(&["check", good.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("OK"), "{}", out.stdout);

    let bad = scratch_file(
        "bad.json",
        r#"{"routes":[
            {"name":"health","match":{"path_exact":"healthz"},"auth":"none"},
            {"name":"health","match":{"path_prefix":"/"},"auth":"nobody"}
        ]}"#,
    );
    let out = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("routes[1].auth: unknown variant `nobody`"),
        "{}",
        out.stdout
    );

    let bad = scratch_file(
        "bad2.json",
        r#"{"routes":[
            {"name":"health","match":{"path_exact":"healthz"},"auth":"none"},
            {"name":"health","match":{"path_prefix":"/"},"auth":"none"}
        ]}"#,
    );
    let out = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].contains(": routes[0].match.path_exact: must start with \"/\""));
    assert!(lines[1].contains(": routes[1].name: duplicate route name \"health\""));
    assert!(out.stderr.contains("2 errors"), "{}", out.stderr);

    // From standard input too.
    let out = run_with_stdin(&["check", "-"], "{\"routes\": 5}");
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.starts_with("<stdin>: routes: "),
        "{}",
        out.stdout
    );
}

#[test]
fn check_validates_events_auth_success() {
    let route = r#"{"name":"health","match":{"path_exact":"/healthz"},"auth":"none"}"#;
    for (value, ok) in [
        (r#""off""#, true),
        (r#""all""#, true),
        (r#"{"sample":100}"#, true),
        (r#""sometimes""#, false),
        (r#"{"sample":0}"#, false),
    ] {
        let config = format!(r#"{{"events":{{"auth_success":{value}}},"routes":[{route}]}}"#);
        let out = run_with_stdin(&["check", "-"], &config);
        assert_eq!(out.code, if ok { 0 } else { 1 }, "{value}: {}", out.stdout);
        if !ok {
            assert!(
                out.stdout.contains("events.auth_success"),
                "{value}: {}",
                out.stdout
            );
        }
    }
}

#[test]
fn check_refuses_bad_claim_pointers_with_their_paths() {
    let provider = |extra: &str| {
        format!(
            r#"{{"name":"kc","issuer":"https://kc.test","audiences":["api"],"algorithms":["HS256"],
                "jwks":{{"inline":{{"keys":[{{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA","alg":"HS256"}}]}}}}{extra}}}"#
        )
    };
    let good = scratch_file(
        "pointers-good.json",
        &format!(
            r#"{{"jwt":{{"providers":[{}]}},"routes":[
                {{"name":"admin","match":{{"path_template":"/users/{{id}}"}},"auth":"jwt",
                  "require":{{"roles_any":["admin"],"claims":{{"/https:~1~1example.com~1tenant":"t1"}}}},
                  "owner":{{"param":"id","claim":"/ext/uid"}}}}]}}"#,
            provider(
                r#","roles_claim":"/realm_access/roles","scopes_claim":"scp","claims_to_headers":[{"claim":"/resource_access/app/roles","header":"x-app-roles"}]"#
            )
        ),
    );
    let out = run(&["check", good.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);

    let bad = scratch_file(
        "pointers-bad.json",
        &format!(
            r#"{{"jwt":{{"providers":[{}]}},"routes":[
                {{"name":"admin","match":{{"path_template":"/users/{{id}}"}},"auth":"jwt",
                  "require":{{"claims":{{"/tenant~":"t1"}}}},
                  "owner":{{"param":"id","claim":"/ext/~2"}}}}]}}"#,
            provider(
                r#","roles_claim":"/realm_access~/roles","scopes_claim":"/~x","claims_to_headers":[{"claim":"/a/~","header":"x-a"}]"#
            )
        ),
    );
    let out = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    for path in [
        "jwt.providers[0].claims_to_headers[0].claim: ",
        "jwt.providers[0].roles_claim: ",
        "jwt.providers[0].scopes_claim: ",
        "routes[0].require.claims[\"/tenant~\"]: ",
        "routes[0].owner.claim: ",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|line| line.contains(path) && line.contains("not a valid JSON Pointer")),
            "{path} not refused:\n{}",
            out.stdout
        );
    }
}

#[test]
fn check_an_envoy_yaml_with_a_bad_plugin_config() {
    let demo = std::fs::read_to_string(Path::new(CRATE).join("envoy/demo.yaml")).unwrap();
    // The public route (routes[3]) names a rate limit that does not exist.
    let broken = demo.replace(
        r#""rate_limit": "public_read" }"#,
        r#""rate_limit": "logn" }"#,
    );
    assert_ne!(broken, demo);
    let path = scratch_file("broken-demo.yaml", &broken);
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "typed_config.config.configuration] routes[3].rate_limit: unknown rate limit \"logn\""
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn check_passes_every_config_under_envoy() {
    let mut checked = 0;
    for entry in std::fs::read_dir(Path::new(CRATE).join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let out = run(&["check", path.to_str().unwrap()]);
        assert_eq!(
            out.code,
            0,
            "{}: {}{}",
            path.display(),
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.starts_with("OK"));
        assert!(
            !out.stdout.contains("warning"),
            "{}: the shipped configs give no warnings: {}",
            path.display(),
            out.stdout
        );
        checked += 1;
    }
    assert!(checked >= 1);
    let demo = run(&["check", "envoy/demo.yaml"]);
    assert_eq!(demo.code, 0);
    assert_eq!(
        demo.stdout,
        "OK: envoy/demo.yaml: 1 api-guard configuration valid\n"
    );
}

#[test]
fn check_usage_and_io_errors_exit_2() {
    for args in [
        vec!["check"],
        vec!["check", "/nonexistent/api-guard.json"],
        vec!["check", "a.json", "b.json"],
        vec!["check", "--strict", "x"],
        vec![],
        vec!["frobnicate"],
    ] {
        let out = run(&args);
        assert_eq!(out.code, 2, "{args:?}");
    }
    let help = run(&["--help"]);
    assert_eq!(help.code, 0);
    for command in ["keygen", "hash", "check", "token", "jwks"] {
        assert!(help.stdout.contains(&format!("api-guard {command}")));
    }
}

#[test]
fn token_and_jwks_still_work() {
    let key = "envoy/demo-keys/demo-es256.private.json";
    let out = run(&[
        "token",
        "--key",
        key,
        "--iss",
        "https://auth.demo.api-guard.local",
        "--sub",
        "alice",
        "--scope",
        "documents:read",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim().split('.').count(), 3);
    let jwks = run(&["jwks", "--key", key]);
    assert_eq!(jwks.code, 0, "{}", jwks.stderr);
    let jwks: Value = serde_json::from_str(&jwks.stdout).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(jwks["keys"][0].get("d").is_none());
}

// ---- check: warnings --------------------------------------------------------------------------

fn demo_yaml() -> String {
    std::fs::read_to_string(Path::new(CRATE).join("envoy/demo.yaml")).unwrap()
}

/// `text` with `from` replaced by `to` (which must occur exactly once).
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in the demo");
    text.replacen(from, to, 1)
}

/// `text` without the YAML block that starts at the line `key_line` (the line and every line
/// below it that is blank or indented deeper).
fn without_block(text: &str, key_line: &str) -> String {
    let indent = key_line.len() - key_line.trim_start().len();
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line == key_line {
            skipping = true;
            continue;
        }
        let line_indent = line.len() - line.trim_start().len();
        if skipping && (line.trim().is_empty() || line_indent > indent) {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    assert_ne!(out.len(), text.len() + 1, "{key_line:?} not found");
    out
}

/// Runs `check` on `contents`; expects success and returns the warning lines.
fn warnings_of(name: &str, contents: &str) -> Vec<String> {
    let path = scratch_file(name, contents);
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(
        out.code, 0,
        "{name}: warnings never fail the check\n{}{}",
        out.stdout, out.stderr
    );
    let warnings: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| l.contains(": warning: "))
        .map(str::to_string)
        .collect();
    let summary = out.stdout.lines().last().unwrap_or_default();
    match warnings.len() {
        0 => assert!(!summary.contains("warning"), "{name}: {summary}"),
        1 => assert!(summary.ends_with("valid, 1 warning"), "{name}: {summary}"),
        n => assert!(
            summary.ends_with(&format!("valid, {n} warnings")),
            "{name}: {summary}"
        ),
    }
    assert!(summary.starts_with("OK: "), "{name}: {}", out.stdout);
    if !warnings.is_empty() {
        assert!(
            out.stderr.contains("warnings do not fail the check"),
            "{name}: {}",
            out.stderr
        );
    }
    warnings
}

/// Exactly one warning, containing every one of `needles`.
fn assert_one_warning(name: &str, contents: &str, needles: &[&str]) {
    let warnings = warnings_of(name, contents);
    assert_eq!(warnings.len(), 1, "{name}: {warnings:#?}");
    for needle in needles {
        assert!(
            warnings[0].contains(needle),
            "{name}: {needle:?} in {}",
            warnings[0]
        );
    }
}

#[test]
fn check_warns_about_a_connection_manager_without_local_reply_config() {
    let demo = demo_yaml();
    let bad = without_block(&demo, "          local_reply_config:");
    assert!(!bad.contains("local_reply_config"));
    assert_one_warning(
        "no-local-reply.yaml",
        &bad,
        &[
            "[static_resources.listeners[0].filter_chains[0].filters[0].typed_config]",
            "has no local_reply_config",
            "security headers",
        ],
    );
}

#[test]
fn check_warns_about_headers_with_underscores() {
    let demo = demo_yaml();
    let setting = "headers_with_underscores_action: REJECT_REQUEST";
    assert_one_warning(
        "underscores-allow.yaml",
        &replaced(&demo, setting, "headers_with_underscores_action: ALLOW"),
        &[
            "headers_with_underscores_action is ALLOW",
            "CVE-2024-45614",
            "REJECT_REQUEST",
        ],
    );
    assert_one_warning(
        "underscores-unset.yaml",
        &without_block(&demo, "          common_http_protocol_options:"),
        &["headers_with_underscores_action is not set", "x_user_id"],
    );
    // Dropping them closes the gap too.
    let dropped = replaced(
        &demo,
        setting,
        "headers_with_underscores_action: DROP_HEADER",
    );
    assert!(warnings_of("underscores-drop.yaml", &dropped).is_empty());
}

#[test]
fn check_warns_about_an_untrusted_client_address() {
    let demo = demo_yaml();
    let remote = "          use_remote_address: true\n";
    let bad = replaced(&demo, remote, "          use_remote_address: false\n");
    assert_one_warning(
        "no-remote-address.yaml",
        &bad,
        &[
            "neither use_remote_address: true nor xff_num_trusted_hops",
            "X-Forwarded-For",
        ],
    );
    assert_one_warning(
        "remote-address-unset.yaml",
        &replaced(&demo, remote, ""),
        &["use_remote_address"],
    );
    // Behind a trusted proxy.
    let behind_proxy = replaced(&demo, remote, "          xff_num_trusted_hops: 1\n");
    assert!(warnings_of("trusted-hops.yaml", &behind_proxy).is_empty());
}

#[test]
fn check_warns_about_a_remote_jwks_cluster_that_is_not_defined() {
    let demo = demo_yaml();
    let inline = r#""jwks": { "inline": {"#;
    let remote = |cluster: &str| {
        replaced(
            &demo,
            inline,
            &format!(
                r#""jwks": {{ "remote": {{ "cluster": "{cluster}", "authority": "idp.test", "path": "/jwks.json" }}, "inline": {{"#
            ),
        )
    };
    assert_one_warning(
        "jwks-missing-cluster.yaml",
        &remote("idp"),
        &[
            "jwt.providers[0].jwks.remote.cluster",
            "\"idp\" is not in static_resources.clusters",
            "typed_config.config.configuration]",
        ],
    );
    assert!(warnings_of("jwks-cluster.yaml", &remote("demo_upstream")).is_empty());
    // With CDS, clusters need not be in the file.
    let with_cds = format!(
        "{}dynamic_resources:\n  cds_config:\n    path_config_source: {{ path: /etc/envoy/cds.yaml }}\n",
        remote("idp")
    );
    assert!(warnings_of("jwks-cds.yaml", &with_cds).is_empty());
}

#[test]
fn check_warns_about_body_routes_without_allow_on_headers_stop_iteration() {
    let demo = demo_yaml();
    let bad = replaced(
        &demo,
        "allow_on_headers_stop_iteration: true",
        "allow_on_headers_stop_iteration: false",
    );
    assert_one_warning(
        "no-stop-iteration.yaml",
        &bad,
        &[
            "lacks allow_on_headers_stop_iteration: true",
            "route \"github-webhook\" reads the body",
            "typed_config.config]",
        ],
    );
    // No route reads the body: nothing to warn about.
    let no_webhook = replaced(
        &bad,
        r#""auth": "none", "webhook": "github" },"#,
        r#""auth": "none" },"#,
    );
    assert!(warnings_of("no-body-routes.yaml", &no_webhook).is_empty());
}

#[test]
fn check_warns_about_body_bounds_above_the_listener_buffer() {
    let demo = demo_yaml();
    let listener = "      socket_address: { address: 127.0.0.1, port_value: 10000 }\n";
    let small_buffer = replaced(
        &demo,
        listener,
        &format!("{listener}    per_connection_buffer_limit_bytes: 65536\n"),
    );
    assert_one_warning(
        "small-buffer.yaml",
        &small_buffer,
        &[
            "[static_resources.listeners[0]]",
            "route \"github-webhook\"",
            "up to 1048576 bytes (the default of max_body_bytes)",
            "per_connection_buffer_limit_bytes is 65536.",
            "its own 413",
            "to at least 1048576",
        ],
    );
    let webhook = r#"{ "name": "github-webhook", "match": { "path_exact": "/webhooks/github", "methods": ["POST"] },"#;
    let large_bound = replaced(
        &demo,
        webhook,
        &format!(r#"{webhook} "max_body_bytes": 2000000,"#),
    );
    assert_one_warning(
        "large-bound.yaml",
        &large_bound,
        &[
            "up to 2000000 bytes (max_body_bytes)",
            "is 1048576 (Envoy's default).",
        ],
    );
    // An Envoy route that buffers more for its requests.
    let envoy_route = "                route: { cluster: demo_upstream, timeout: 5s }\n";
    let route_buffer = replaced(
        &large_bound,
        envoy_route,
        &format!("{envoy_route}                request_body_buffer_limit: 4194304\n"),
    );
    assert!(warnings_of("route-buffer.yaml", &route_buffer).is_empty());
    let small_route_buffer = route_buffer.replace(
        "request_body_buffer_limit: 4194304",
        "request_body_buffer_limit: 1500000",
    );
    assert_one_warning(
        "small-route-buffer.yaml",
        &small_route_buffer,
        &["the largest route buffer limit 1500000"],
    );
    // A bound below the buffer is fine.
    let small_bound = replaced(
        &small_buffer,
        webhook,
        &format!(r#"{webhook} "max_body_bytes": 65536,"#),
    );
    assert!(warnings_of("small-bound.yaml", &small_bound).is_empty());
}

#[test]
fn check_warns_about_route_fall_through() {
    let admin = r#"{ "name": "admin", "match": { "path_prefix": "/admin/" }, "auth": "jwt", "require": { "roles_any": ["admin"] } }"#;
    let config = |catch_all: &str| {
        format!(
            r#"{{
  "jwt": {{ "providers": [{{ "name": "main", "issuer": "https://issuer.test", "audiences": ["https://api.test"],
             "algorithms": ["HS256"], "jwks": {{ "inline": {{ "keys": [ {{ "kty": "oct", "kid": "k", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA" }} ] }} }} }}] }},
  "routes": [ {admin}, {catch_all} ]
}}"#
        )
    };
    let weak = r#"{ "name": "default", "match": { "path_prefix": "/" }, "auth": "none" }"#;
    assert_one_warning(
        "fall-through.json",
        &config(weak),
        &[
            "route fall-through: routes[0] \"admin\" (path_prefix \"/admin/\") does not cover \"/admin\"",
            "GET /admin matches routes[1] \"default\" first",
            "needs no authentication and has no `require`",
            "\"path_separated_prefix\": \"/admin\"",
        ],
    );
    // Authenticated, but without the role.
    let no_role = r#"{ "name": "default", "match": { "path_prefix": "/" }, "auth": "jwt" }"#;
    assert_one_warning(
        "fall-through-no-role.json",
        &config(no_role),
        &["which has no `require`"],
    );
    // The same protection below, or nothing that matches /admin: no fall-through.
    let same = r#"{ "name": "default", "match": { "path_prefix": "/" }, "auth": "jwt", "require": { "roles_any": ["admin"] } }"#;
    assert!(warnings_of("fall-through-same.json", &config(same)).is_empty());
    let elsewhere =
        r#"{ "name": "default", "match": { "path_prefix": "/public/" }, "auth": "none" }"#;
    assert!(warnings_of("fall-through-none.json", &config(elsewhere)).is_empty());

    // In an Envoy config, with the route's methods and the configuration's place.
    let demo = demo_yaml();
    let read = r#"{ "name": "api-read", "match": { "path_prefix": "/api/" }, "auth": "jwt", "rate_limit": "authenticated_read" }"#;
    let with_catch_all = replaced(
        &demo,
        read,
        &format!(
            r#"{read}, {{ "name": "catch-all", "match": {{ "path_prefix": "/" }}, "auth": "none" }}"#
        ),
    );
    let warnings = warnings_of("fall-through-demo.yaml", &with_catch_all);
    let text = warnings.join("\n");
    assert_eq!(warnings.len(), 3, "{text}");
    for needle in [
        "typed_config.config.configuration] route fall-through: routes[5] \"internal\"",
        "routes[7] \"api-write\" (path_prefix \"/api/\") does not cover \"/api\": POST, PUT, PATCH, DELETE /api matches routes[9] \"catch-all\"",
        "routes[8] \"api-read\" (path_prefix \"/api/\") does not cover \"/api\": GET /api matches",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
}

#[test]
fn check_reports_errors_and_warnings_together() {
    let demo = demo_yaml();
    let warned = replaced(
        &demo,
        "headers_with_underscores_action: REJECT_REQUEST",
        "headers_with_underscores_action: ALLOW",
    );
    let broken = replaced(
        &demo,
        r#""rate_limit": "public_read" }"#,
        r#""rate_limit": "logn" }"#,
    );
    let path = scratch_file(
        "errors-and-warnings.yaml",
        &format!("{warned}---\n{broken}"),
    );
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(
        out.code, 1,
        "an error still fails the check: {}{}",
        out.stdout, out.stderr
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].contains("[document 2.") && lines[0].contains("unknown rate limit \"logn\""));
    assert!(
        lines[1].contains(": warning: [document 1.")
            && lines[1].contains("headers_with_underscores_action")
    );
    assert!(
        out.stderr.contains("1 error in ") && out.stderr.contains(", and 1 warning"),
        "{}",
        out.stderr
    );
}

/// The shipped Istio WasmPlugin passes; the same resource failing open, or without a phase, is
/// refused with a message naming the field, as are its pluginConfig's errors.
#[test]
fn check_the_shipped_wasm_plugin_and_refuse_unsafe_ones() {
    let shipped = run(&["check", "deploy/istio/wasmplugin.yaml"]);
    assert_eq!(shipped.code, 0, "{}{}", shipped.stdout, shipped.stderr);
    assert_eq!(
        shipped.stdout,
        "OK: deploy/istio/wasmplugin.yaml: 1 api-guard configuration valid\n"
    );
    let text =
        std::fs::read_to_string(Path::new(CRATE).join("deploy/istio/wasmplugin.yaml")).unwrap();
    assert!(text.contains("  failStrategy: FAIL_CLOSE\n") && text.contains("  phase: AUTHN\n"));

    let fail_open = scratch_file(
        "wasmplugin-fail-open.yaml",
        &text.replace(
            "  failStrategy: FAIL_CLOSE\n",
            "  failStrategy: FAIL_OPEN\n",
        ),
    );
    let out = run(&["check", fail_open.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("spec.failStrategy: FAIL_OPEN lets every request through unchecked"),
        "{all}"
    );

    let no_phase = scratch_file(
        "wasmplugin-no-phase.yaml",
        &text.replace("  phase: AUTHN\n", ""),
    );
    let out = run(&["check", no_phase.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("spec.phase: missing"), "{all}");

    let bad_config = scratch_file(
        "wasmplugin-bad-config.yaml",
        &text.replace("path_prefix: /internal/", "path_prefix: internal/"),
    );
    let out = run(&["check", bad_config.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("[spec.pluginConfig] routes[3].match.path_prefix: must start with \"/\""),
        "{all}"
    );
}

#[test]
fn check_validates_jwt_provider_dpop() {
    let config = |dpop: &str, from: &str| {
        format!(
            r#"{{"jwt":{{"providers":[{{"name":"main","issuer":"https://issuer.test",
                "audiences":["https://api.test"],
                "jwks":{{"inline":{{"keys":[{{"kty":"EC","crv":"P-256",
                    "x":"netKVqWD9UqHRcdSkKFHUGuOOnb8VVM2CQ7Yl_gr_io",
                    "y":"Y27n6B1UQ5v0tPihgSEPL_jlC1d4nWVdzppkqpr8AH0"}}]}}}},
                "dpop":{dpop}{from}}}]}},
              "routes":[{{"name":"api","match":{{"path_prefix":"/"}},"auth":"jwt"}}]}}"#
        )
    };
    for mode in ["\"off\"", "\"optional\"", "\"required\""] {
        let path = scratch_file("dpop-good.json", &config(mode, ""));
        let out = run(&["check", path.to_str().unwrap()]);
        assert_eq!(out.code, 0, "dpop {mode}: {}{}", out.stdout, out.stderr);
    }
    let path = scratch_file("dpop-bad.json", &config("\"always\"", ""));
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("jwt.providers[0].dpop: unknown variant `always`"),
        "{}",
        out.stdout
    );
    // The DPoP scheme is dpop's to read: a bearer source with it is refused, with its path.
    let from = r#","from":[{"header":"Authorization","prefix":"DPoP "}]"#;
    let path = scratch_file("dpop-prefix.json", &config("\"optional\"", from));
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("jwt.providers[0].from[0].prefix: the DPoP scheme is read by"),
        "{}",
        out.stdout
    );
    let from = r#","from":[{"header":"authorization"}]"#;
    let path = scratch_file("dpop-no-prefix.json", &config("\"required\"", from));
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("jwt.providers[0].from[0].prefix: with \"dpop\", the authorization header"),
        "{}",
        out.stdout
    );
    // Without dpop the same source stays allowed.
    let path = scratch_file("dpop-off-no-prefix.json", &config("\"off\"", from));
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
