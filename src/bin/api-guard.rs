//! The api-guard command line: tools around the filter's configuration, sharing its code.
//!
//!   api-guard token --key <private jwk file> [--alg ES256] [--iss I] [--aud A] [--sub S]
//!                   [--scope "a b"] [--roles r1,r2] [--ttl SECONDS] [--claim name=json]
//!   api-guard jwks --key <private jwk file> [--key ...]

use api_guard::mint;
use serde_json::{Map, Value};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage:
  api-guard token --key <private JWK file> [--alg ALG] [--iss ISSUER] [--aud AUDIENCE]
                  [--sub SUBJECT] [--scope \"a b\"] [--roles r1,r2] [--ttl SECONDS] [--claim name=<json>]
      Signs a test token (for demos and tests; never for production identities).
  api-guard jwks --key <private JWK file> [--key ...]
      Prints the public JWKS for the given private keys, ready for `jwks.inline`.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("token") => token(&args[1..]),
        Some("jwks") => jwks(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("api-guard: {message}");
            ExitCode::from(2)
        }
    }
}

/// `--name value` pairs, in order (repeatable flags keep every value).
fn flags(args: &[String]) -> Result<Vec<(&str, &str)>, String> {
    let mut pairs = Vec::new();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag:?}\n{USAGE}"))?;
        let value = rest
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        pairs.push((name, value.as_str()));
    }
    Ok(pairs)
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
    let mut claims = Map::new();
    for (name, value) in flags(args)? {
        match name {
            "key" => key = Some(read_key(value)?),
            "alg" => {
                alg = Some(
                    api_guard::jwt::alg::Alg::from_name(value)
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
    println!("{}", mint::sign(&key, alg, &claims)?);
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
