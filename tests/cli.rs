//! The `api-guard` command line, run as users run it: the built binary, its exit code, what it
//! prints on standard output and standard error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard::api_keys::{key_sha256_hex, ApiKeys, ApiKeysConfig};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_api-guard");
const CRATE: &str = env!("CARGO_MANIFEST_DIR");

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
