//! The api-guard command line: tools around the filter's configuration, sharing its code.
//!
//!   api-guard keygen --prefix ag_live_ [--id ID] [--scopes a,b] [--expires-at RFC3339]
//!   api-guard hash <key> | - [--prefix P] [--id ID] [--scopes a,b] [--expires-at RFC3339]
//!   api-guard check <file> | -
//!   api-guard token --key <private jwk file> [--alg ES256] [--iss I] [--aud A] [--sub S]
//!                   [--scope "a b"] [--roles r1,r2] [--ttl SECONDS] [--claim name=json]
//!   api-guard jwks --key <private jwk file> [--key ...]
//!
//! Exit codes: 0 success, 1 `check` found errors, 2 usage or I/O error. Warnings of `check` do
//! not change the exit code.

mod check;

use api_guard_core::support::mint;
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage:
  api-guard keygen --prefix PREFIX [--id ID] [--scopes a,b] [--expires-at 2027-06-30T00:00:00Z]
      Generates an API key (PREFIX + 32 random bytes in base64url). Prints the key once on the
      first line, then the JSON entry for `api_keys.keys` (which holds only its SHA-256).
  api-guard hash KEY|- [--prefix PREFIX] [--id ID] [--scopes a,b] [--expires-at RFC3339]
      Prints the `api_keys.keys` entry for an existing key; `-` reads the key from standard
      input (better than the command line, which shells keep in their history). Without
      --prefix the prefix is inferred (api-guard keys, and keys such as sk_live_...).
  api-guard check FILE|-
      Validates a plugin configuration with the filter's own validation: a JSON plugin config,
      or an Envoy YAML/JSON config (or Istio WasmPlugin) holding api-guard's configuration.
      Prints every error with its JSON path, and warnings (lines with \"warning:\") for what the
      filter accepts but what leaves a gap: a route a trailing slash falls through, and in an
      Envoy config a connection manager without local_reply_config, without
      headers_with_underscores_action: REJECT_REQUEST or without a trusted client address, an
      undefined cluster, body routes Envoy would stall or answer 413 itself.
      Exit code 0 when valid (warnings or not), 1 on errors.
  api-guard token --key <private JWK file> [--alg ALG] [--iss ISSUER] [--aud AUDIENCE] [--count N]
                  [--sub SUBJECT] [--scope \"a b\"] [--roles r1,r2] [--ttl SECONDS] [--claim name=<json>]
      Signs a test token (for demos and tests; never for production identities).
  api-guard jwks --key <private JWK file> [--key ...]
      Prints the public JWKS for the given private keys, ready for `jwks.inline`.

exit codes: 0 success, 1 configuration errors found by `check` (warnings alone give 0), 2 usage
or I/O error";

/// Why a command failed.
enum Failure {
    /// Bad arguments, unreadable input: exit code 2.
    Usage(String),
    /// `check` found errors (already printed): exit code 1.
    Invalid,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Usage(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::Usage(message.to_string())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let result = match args.first().map(String::as_str) {
        Some("keygen") => keygen(rest),
        Some("hash") => hash(rest),
        Some("check") => check_command(rest),
        Some("token") => token(rest).map_err(Failure::from),
        Some("jwks") => jwks(rest).map_err(Failure::from),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Failure::Usage(USAGE.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid) => ExitCode::from(1),
        Err(Failure::Usage(message)) => {
            eprintln!("api-guard: {message}");
            ExitCode::from(2)
        }
    }
}

/// `--name value` pairs, in order (repeatable flags keep every value).
fn flags(args: &[String]) -> Result<Vec<(&str, &str)>, String> {
    let (pairs, positional) = flags_and_arguments(args)?;
    match positional.first() {
        Some(extra) => Err(format!("unexpected argument {extra:?}\n{USAGE}")),
        None => Ok(pairs),
    }
}

/// `--name value` pairs, then the other arguments.
type FlagsAndArguments<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);

/// `--name value` pairs and the other arguments (`-` is an argument: standard input).
fn flags_and_arguments(args: &[String]) -> Result<FlagsAndArguments<'_>, String> {
    let mut pairs = Vec::new();
    let mut positional = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.strip_prefix("--") {
            Some(name) => {
                let value = rest
                    .next()
                    .ok_or_else(|| format!("--{name} needs a value"))?;
                pairs.push((name, value.as_str()));
            }
            None => positional.push(arg.as_str()),
        }
    }
    Ok((pairs, positional))
}

fn read_key(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not a JWK: {e}"))
}

fn token(args: &[String]) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut key = None;
    let mut alg = None;
    let mut ttl: u64 = 3600;
    let mut count: u64 = 1;
    let mut claims = Map::new();
    for (name, value) in flags(args)? {
        match name {
            "key" => key = Some(read_key(value)?),
            "count" => {
                count = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| "--count takes a positive number".to_string())?
            }
            "alg" => {
                alg = Some(
                    api_guard_core::authn::jwt::alg::Alg::from_name(value)
                        .ok_or_else(|| format!("unknown alg {value:?}"))?,
                )
            }
            "ttl" => {
                ttl = value
                    .parse()
                    .map_err(|_| "--ttl takes seconds".to_string())?
            }
            "iss" | "aud" | "sub" | "scope" => {
                claims.insert(name.to_string(), Value::String(value.to_string()));
            }
            "roles" => {
                let roles = value
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(|r| Value::String(r.into()))
                    .collect();
                claims.insert("roles".into(), Value::Array(roles));
            }
            "claim" => {
                let (claim, json) = value.split_once('=').ok_or("--claim takes name=<json>")?;
                let parsed =
                    serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_string()));
                claims.insert(claim.to_string(), parsed);
            }
            other => return Err(format!("unknown flag --{other}\n{USAGE}")),
        }
    }
    let key = key.ok_or("--key is required")?;
    let alg = match alg {
        Some(alg) => alg,
        None => mint::default_alg(&key)?,
    };
    claims.entry("iat").or_insert(Value::from(now));
    claims.entry("exp").or_insert(Value::from(now + ttl));
    if count == 1 {
        println!("{}", mint::sign(&key, alg, &claims)?);
        return Ok(());
    }
    // Distinct tokens (a `jti` each), one per line: benchmarks of the cache-miss path.
    let mut out = String::new();
    for n in 0..count {
        claims.insert("jti".into(), Value::String(format!("t{n}")));
        out.push_str(&mint::sign(&key, alg, &claims)?);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

fn jwks(args: &[String]) -> Result<(), String> {
    let mut keys = Vec::new();
    for (name, value) in flags(args)? {
        match name {
            "key" => keys.push(mint::public_jwk(&read_key(value)?)),
            other => return Err(format!("unknown flag --{other}")),
        }
    }
    if keys.is_empty() {
        return Err("--key is required".into());
    }
    let mut jwks = Map::new();
    jwks.insert("keys".into(), Value::Array(keys));
    println!("{}", Value::Object(jwks));
    Ok(())
}

/// The flags `keygen` and `hash` share.
#[derive(Default)]
struct KeyEntryFlags<'a> {
    prefix: Option<&'a str>,
    id: Option<&'a str>,
    scopes: Vec<String>,
    expires_at: Option<&'a str>,
}

fn key_entry_flags<'a>(pairs: &[(&'a str, &'a str)]) -> Result<KeyEntryFlags<'a>, String> {
    let mut parsed = KeyEntryFlags::default();
    for &(name, value) in pairs {
        match name {
            "prefix" => parsed.prefix = Some(value),
            "id" => parsed.id = Some(value),
            "scopes" => parsed.scopes.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "expires-at" => parsed.expires_at = Some(value),
            other => return Err(format!("unknown flag --{other}\n{USAGE}")),
        }
    }
    Ok(parsed)
}

fn print_snippet(snippet: &mint::ApiKeySnippet) -> Result<(), String> {
    let json = serde_json::to_string_pretty(snippet).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

fn keygen(args: &[String]) -> Result<(), Failure> {
    let entry = key_entry_flags(&flags(args)?)?;
    let prefix = entry
        .prefix
        .ok_or("--prefix is required (for example --prefix ag_live_)")?;
    let key = mint::generate_api_key(prefix)?;
    let snippet = mint::api_key_snippet(&key, prefix, entry.id, &entry.scopes, entry.expires_at)?;
    // The key goes to standard output only, and only now: the configuration keeps its hash.
    println!("{key}");
    print_snippet(&snippet)?;
    eprintln!(
        "api-guard: the first line is the new API key. It is shown only this once: hand it to its \
         owner or store it in a secret manager now. The JSON goes into \"api_keys\".\"keys\" (it \
         holds only the key's SHA-256){}.",
        if entry.id.is_none() {
            "; name the key's owner in \"id\""
        } else {
            ""
        }
    );
    Ok(())
}

fn hash(args: &[String]) -> Result<(), Failure> {
    let (pairs, positional) = flags_and_arguments(args)?;
    let entry = key_entry_flags(&pairs)?;
    let key = match positional.as_slice() {
        ["-"] => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
            // One line ending, as `echo` or a file adds; any other whitespace is part of what
            // was given, and a key with whitespace is refused below.
            let key = input.strip_suffix('\n').unwrap_or(&input);
            key.strip_suffix('\r').unwrap_or(key).to_string()
        }
        [key] => (*key).to_string(),
        [] => return Err("hash needs a key, or - to read it from standard input".into()),
        _ => return Err(format!("hash takes one key\n{USAGE}").into()),
    };
    // The filter's own shape rules first, so that no guess is made about what it would refuse.
    api_guard_core::authn::api_keys::check_key_shape(&key)
        .map_err(|reason| format!("not a key api-guard would accept: {reason}"))?;
    let prefix = match entry.prefix {
        Some(prefix) => prefix,
        None => {
            let inferred = mint::infer_api_key_prefix(&key).ok_or(
                "cannot tell the key's prefix: pass --prefix (for example --prefix sk_live_)",
            )?;
            eprintln!("api-guard: prefix inferred as {inferred:?} (pass --prefix to choose it)");
            inferred
        }
    };
    let snippet = mint::api_key_snippet(&key, prefix, entry.id, &entry.scopes, entry.expires_at)?;
    print_snippet(&snippet)?;
    Ok(())
}

fn check_command(args: &[String]) -> Result<(), Failure> {
    let (pairs, positional) = flags_and_arguments(args)?;
    if let Some((name, _)) = pairs.first() {
        return Err(format!("unknown flag --{name}\n{USAGE}").into());
    }
    let (display_name, bytes) = match positional.as_slice() {
        ["-"] => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            ("<stdin>".to_string(), input)
        }
        [path] => {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            ((*path).to_string(), bytes)
        }
        _ => return Err(format!("check takes one file (or - for standard input)\n{USAGE}").into()),
    };
    let report = check::check(&bytes);
    let mut out = std::io::stdout().lock();
    let write_failed = |e: std::io::Error| Failure::Usage(format!("cannot write: {e}"));
    // Errors first (the lines a failed check is about), then warnings, marked as such.
    for finding in &report.findings {
        writeln!(out, "{display_name}: {finding}").map_err(write_failed)?;
    }
    for warning in &report.warnings {
        writeln!(out, "{display_name}: warning: {warning}").map_err(write_failed)?;
    }
    let warnings = match report.warnings.len() {
        0 => String::new(),
        1 => "1 warning".to_string(),
        n => format!("{n} warnings"),
    };
    if report.findings.is_empty() {
        writeln!(
            out,
            "OK: {display_name}: {} api-guard configuration{} valid{}",
            report.configurations,
            if report.configurations == 1 { "" } else { "s" },
            if warnings.is_empty() {
                String::new()
            } else {
                format!(", {warnings}")
            }
        )
        .map_err(write_failed)?;
        if !warnings.is_empty() {
            eprintln!(
                "api-guard check: {warnings} in {display_name} (warnings do not fail the check)"
            );
        }
        return Ok(());
    }
    let count = report.findings.len();
    eprintln!(
        "api-guard check: {count} error{} in {display_name}{}",
        if count == 1 { "" } else { "s" },
        if warnings.is_empty() {
            String::new()
        } else {
            format!(", and {warnings}")
        }
    );
    Err(Failure::Invalid)
}
