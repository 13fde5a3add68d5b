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
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// The synopsis `--help` starts with, one line a command (the details are each command's
/// `--help`).
const USAGE: &str =
    "api-guard keygen --prefix PREFIX [--id ID] [--scopes a,b] [--expires-at RFC3339]
       api-guard hash KEY|- [--prefix PREFIX] [--id ID] [--scopes a,b] [--expires-at RFC3339]
       api-guard check FILE|-
       api-guard token --key <private JWK file> [--alg ALG] [--iss ISSUER] [--aud AUDIENCE]
                       [--count N] [--sub SUBJECT] [--scope \"a b\"] [--roles r1,r2]
                       [--ttl SECONDS] [--claim name=<json>]
       api-guard jwks --key <private JWK file> [--key ...]";

const EXIT_CODES: &str =
    "exit codes: 0 success, 1 configuration errors found by `check` (warnings \
alone give 0), 2 usage or I/O error";

/// Tools around api-guard's configuration, sharing the filter's own code.
#[derive(Parser)]
#[command(
    name = "api-guard",
    override_usage = USAGE,
    after_help = EXIT_CODES,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generates an API key (PREFIX + 32 random bytes in base64url). Prints the key once on the
    /// first line, then the JSON entry for `api_keys.keys` (which holds only its SHA-256).
    #[command(args_override_self = true)]
    Keygen {
        #[command(flatten)]
        entry: KeyEntryArgs,
    },
    /// Prints the `api_keys.keys` entry for an existing key; `-` reads the key from standard
    /// input (better than the command line, which shells keep in their history). Without
    /// --prefix the prefix is inferred (api-guard keys, and keys such as sk_live_...).
    #[command(args_override_self = true)]
    Hash {
        /// The key, or `-` to read it from standard input.
        #[arg(value_name = "KEY|-", allow_hyphen_values = true)]
        key: Option<String>,
        #[command(flatten)]
        entry: KeyEntryArgs,
    },
    /// Validates a plugin configuration with the filter's own validation: a JSON plugin config,
    /// or an Envoy YAML/JSON config (or Istio WasmPlugin) holding api-guard's configuration.
    ///
    /// Prints every error with its JSON path, and warnings (lines with "warning:") for what the
    /// filter accepts but what leaves a gap: a route a trailing slash falls through, and in an
    /// Envoy config a connection manager without local_reply_config, without
    /// headers_with_underscores_action: REJECT_REQUEST or without a trusted client address, an
    /// undefined cluster, body routes Envoy would stall or answer 413 itself. An Istio
    /// WasmPlugin must also fail closed (failStrategy not FAIL_OPEN) and name phase AUTHN or
    /// AUTHZ (errors otherwise); its body routes get a warning. Exit code 0 when valid
    /// (warnings or not), 1 on errors.
    Check {
        /// The configuration file, or `-` to read it from standard input.
        #[arg(value_name = "FILE|-", allow_hyphen_values = true)]
        file: Option<String>,
    },
    /// Signs a test token (for demos and tests; never for production identities).
    #[command(args_override_self = true)]
    Token(TokenArgs),
    /// Prints the public JWKS for the given private keys, ready for `jwks.inline`.
    Jwks {
        /// A private JWK file (repeatable).
        #[arg(long = "key", value_name = "FILE", allow_hyphen_values = true)]
        keys: Vec<String>,
    },
}

/// The flags `keygen` and `hash` share. Values may start with `-`: a flag always takes the
/// next argument, as it always has.
#[derive(Args)]
struct KeyEntryArgs {
    /// The key's prefix (required by keygen, inferred by hash when absent).
    #[arg(long, allow_hyphen_values = true)]
    prefix: Option<String>,
    /// Who the key belongs to (logged as the principal).
    #[arg(long, allow_hyphen_values = true)]
    id: Option<String>,
    /// Comma-separated scopes (repeatable).
    #[arg(long, value_name = "a,b", allow_hyphen_values = true)]
    scopes: Vec<String>,
    /// When the key stops being accepted (RFC 3339).
    #[arg(long, value_name = "RFC3339", allow_hyphen_values = true)]
    expires_at: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// The private JWK file to sign with.
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    key: Option<String>,
    /// The signature algorithm (default: the key's).
    #[arg(long, allow_hyphen_values = true)]
    alg: Option<String>,
    /// Validity in seconds (default 3600).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    ttl: Option<String>,
    /// How many distinct tokens to print, one a line (a `jti` each).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    count: Option<String>,
    /// The `iss` claim.
    #[arg(long, value_name = "ISSUER", allow_hyphen_values = true)]
    iss: Option<String>,
    /// The `aud` claim.
    #[arg(long, value_name = "AUDIENCE", allow_hyphen_values = true)]
    aud: Option<String>,
    /// The `sub` claim.
    #[arg(long, value_name = "SUBJECT", allow_hyphen_values = true)]
    sub: Option<String>,
    /// The `scope` claim (space-separated scopes).
    #[arg(long, value_name = "\"a b\"", allow_hyphen_values = true)]
    scope: Option<String>,
    /// The `roles` claim, comma-separated.
    #[arg(long, value_name = "r1,r2", allow_hyphen_values = true)]
    roles: Option<String>,
    /// Any claim, its value as JSON (a plain string otherwise); repeatable.
    #[arg(long = "claim", value_name = "name=<json>", allow_hyphen_values = true)]
    claims: Vec<String>,
}

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

/// The `log` facade's output: warnings and errors of the core, on standard error.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                _ => "warning",
            };
            eprintln!("api-guard: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn main() -> ExitCode {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        // Help is printed to standard output with code 0; a usage error to standard error with 2.
        Err(error) => return clap_exit(&error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return clap_exit(&error),
    };
    let result = match cli.command {
        Command::Keygen { entry } => keygen(&entry),
        Command::Hash { key, entry } => hash(key.as_deref(), &entry),
        Command::Check { file } => check_command(file.as_deref()),
        Command::Token(args) => {
            let order = matches
                .subcommand_matches("token")
                .map(claim_order)
                .unwrap_or_default();
            token(&args, &order).map_err(Failure::from)
        }
        Command::Jwks { keys } => jwks(&keys).map_err(Failure::from),
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

fn clap_exit(error: &clap::Error) -> ExitCode {
    // A failed print (a closed pipe) changes nothing: the exit code still tells.
    let _ = error.print();
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

/// A `--name` where a key or a file goes. The argument takes values that start with `-` (as
/// `-`, standard input, does), so clap leaves an unknown `--name` to it: it is still refused,
/// never read as a key or a file name.
fn unknown_flag(flag: &str) -> Failure {
    Failure::Usage(format!("unknown flag {flag}"))
}

/// The claim flags of `token`, in the order they were given: a later one overrides an earlier
/// one for the same claim (`--sub a --claim sub="b"` signs `b`; the other order, `a`).
fn claim_order(matches: &ArgMatches) -> Vec<(usize, &'static str)> {
    let mut order: Vec<(usize, &'static str)> = ["iss", "aud", "sub", "scope", "roles", "claims"]
        .into_iter()
        .flat_map(|id| {
            matches
                .indices_of(id)
                .into_iter()
                .flatten()
                .map(move |index| (index, id))
        })
        .collect();
    order.sort_unstable();
    order
}

fn read_key(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path} is not a JWK: {e}"))
}

fn token(args: &TokenArgs, order: &[(usize, &str)]) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let count: u64 = match &args.count {
        None => 1,
        Some(value) => value
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| "--count takes a positive number".to_string())?,
    };
    let alg = match &args.alg {
        None => None,
        Some(value) => Some(
            api_guard_core::authn::jwt::alg::Alg::from_name(value)
                .ok_or_else(|| format!("unknown alg {value:?}"))?,
        ),
    };
    let ttl: u64 = match &args.ttl {
        None => 3600,
        Some(value) => value
            .parse()
            .map_err(|_| "--ttl takes seconds".to_string())?,
    };
    let mut claims = Map::new();
    // Each repeatable `--claim` in turn; the named claims hold one value each (the last given).
    let mut claim_values = args.claims.iter();
    for &(_, id) in order {
        let named = |value: &Option<String>| value.clone().map(Value::String);
        match id {
            "iss" => insert_some(&mut claims, id, named(&args.iss)),
            "aud" => insert_some(&mut claims, id, named(&args.aud)),
            "sub" => insert_some(&mut claims, id, named(&args.sub)),
            "scope" => insert_some(&mut claims, id, named(&args.scope)),
            "roles" => {
                let roles = args.roles.as_deref().map(|value| {
                    Value::Array(
                        value
                            .split(',')
                            .filter(|r| !r.is_empty())
                            .map(|r| Value::String(r.into()))
                            .collect(),
                    )
                });
                insert_some(&mut claims, "roles", roles);
            }
            _ => {
                let Some(value) = claim_values.next() else {
                    continue;
                };
                let (claim, json) = value.split_once('=').ok_or("--claim takes name=<json>")?;
                let parsed =
                    serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.to_string()));
                claims.insert(claim.to_string(), parsed);
            }
        }
    }
    let key = read_key(args.key.as_deref().ok_or("--key is required")?)?;
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

fn insert_some(claims: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    if let Some(value) = value {
        claims.insert(name.to_string(), value);
    }
}

fn jwks(paths: &[String]) -> Result<(), String> {
    let mut keys = Vec::new();
    for path in paths {
        keys.push(mint::public_jwk(&read_key(path)?));
    }
    if keys.is_empty() {
        return Err("--key is required".into());
    }
    let mut jwks = Map::new();
    jwks.insert("keys".into(), Value::Array(keys));
    println!("{}", Value::Object(jwks));
    Ok(())
}

impl KeyEntryArgs {
    /// The `api_keys.keys` entry for `key`: the flags, with every `--scopes` value split at
    /// commas, trimmed, empty ones dropped.
    fn snippet(&self, key: &str, prefix: &str) -> Result<mint::ApiKeySnippet, String> {
        let scopes: Vec<String> = self
            .scopes
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        mint::api_key_snippet(
            key,
            prefix,
            self.id.as_deref(),
            &scopes,
            self.expires_at.as_deref(),
        )
    }
}

fn print_snippet(snippet: &mint::ApiKeySnippet) -> Result<(), String> {
    let json = serde_json::to_string_pretty(snippet).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

fn keygen(entry: &KeyEntryArgs) -> Result<(), Failure> {
    let prefix = entry
        .prefix
        .as_deref()
        .ok_or("--prefix is required (for example --prefix ag_live_)")?;
    let key = mint::generate_api_key(prefix)?;
    let snippet = entry.snippet(&key, prefix)?;
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

fn hash(key: Option<&str>, entry: &KeyEntryArgs) -> Result<(), Failure> {
    let key = match key {
        Some("-") => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
            // One line ending, as `echo` or a file adds; any other whitespace is part of what
            // was given, and a key with whitespace is refused below.
            let key = input.strip_suffix('\n').unwrap_or(&input);
            key.strip_suffix('\r').unwrap_or(key).to_string()
        }
        Some(flag) if flag.starts_with("--") => return Err(unknown_flag(flag)),
        Some(key) => key.to_string(),
        None => return Err("hash needs a key, or - to read it from standard input".into()),
    };
    // The filter's own shape rules first, so that no guess is made about what it would refuse.
    api_guard_core::authn::api_keys::check_key_shape(&key)
        .map_err(|reason| format!("not a key api-guard would accept: {reason}"))?;
    let prefix = match entry.prefix.as_deref() {
        Some(prefix) => prefix,
        None => {
            let inferred = mint::infer_api_key_prefix(&key).ok_or(
                "cannot tell the key's prefix: pass --prefix (for example --prefix sk_live_)",
            )?;
            eprintln!("api-guard: prefix inferred as {inferred:?} (pass --prefix to choose it)");
            inferred
        }
    };
    let snippet = entry.snippet(&key, prefix)?;
    print_snippet(&snippet)?;
    Ok(())
}

fn check_command(file: Option<&str>) -> Result<(), Failure> {
    let (display_name, bytes) = match file {
        Some("-") => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            ("<stdin>".to_string(), input)
        }
        Some(flag) if flag.starts_with("--") => return Err(unknown_flag(flag)),
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            (path.to_string(), bytes)
        }
        None => return Err("check takes one file (or - for standard input)".into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    #[test]
    fn the_logger_prints_warnings_and_errors_only() {
        let at = |level| log::Metadata::builder().level(level).build();
        assert!(LOGGER.enabled(&at(log::Level::Error)));
        assert!(LOGGER.enabled(&at(log::Level::Warn)));
        assert!(!LOGGER.enabled(&at(log::Level::Info)));
        assert!(!LOGGER.enabled(&at(log::Level::Debug)));
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
