//! Micro-benchmarks of the core's per-request work, natively: route matching, token parsing, a
//! verified-token cache hit, a rate-limit decision, and API key lookup (hash and constant-time
//! compare). `cargo bench --bench core` (part of `make bench`).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use api_guard_core::authn::api_keys::{key_sha256_hex, ApiKeys, ApiKeysConfig};
use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::cache::TokenCache;
use api_guard_core::authn::jwt::verifier::RustVerifier;
use api_guard_core::authn::jwt::{token, JwtAuth, JwtConfig};
use api_guard_core::limits::rate_limit::{compile_section, Limiter, MemoryStore};
use api_guard_core::request::head::RequestHead;
use api_guard_core::request::routes::{normalize_path, CompiledMatch, MatchConfig};
use api_guard_core::support::mint;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

fn key() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys/p256.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or(Value::Null)
}

fn routes(c: &mut Criterion) {
    let specs = [
        json!({"path_exact": "/healthz"}),
        json!({"path_prefix": "/admin/", "methods": ["GET", "POST"]}),
        json!({"path_template": "/users/{id}/documents", "methods": ["GET"]}),
        json!({"path_prefix": "/"}),
    ];
    let matchers: Vec<CompiledMatch> = specs
        .iter()
        .filter_map(|s| serde_json::from_value::<MatchConfig>(s.clone()).ok())
        .filter_map(|m| CompiledMatch::compile(&m, "match").ok())
        .collect();
    c.bench_function(
        "route: normalise + match (template, 3rd of 4 routes)",
        |b| {
            b.iter(|| {
                let path = normalize_path(black_box("/users/alice/documents?page=2")).ok();
                let path = path.map(|p| p.path).unwrap_or_default();
                matchers
                    .iter()
                    .find_map(|m| m.matches("GET", "api.example.com", &path))
            })
        },
    );
}

fn jwt(c: &mut Criterion) {
    let key = key();
    let now = 1_900_000_000u64;
    let claims = json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": now + 600, "iat": now})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let token_text = mint::sign(&key, Alg::ES256, &claims).unwrap_or_default();
    c.bench_function("jwt: parse a token (header, claims, signature)", |b| {
        b.iter(|| token::parse(black_box(&token_text)).is_ok())
    });
    // Issue 13's evidence: jwt-compact's parser alone on the same token. It checks less (see
    // authn/jwt/token.rs), so api-guard would pay this on top of its own parse, not instead.
    c.bench_function(
        "jwt: jwt-compact UntrustedToken::new alone (lenient)",
        |b| b.iter(|| jwt_compact::UntrustedToken::new(black_box(&token_text)).is_ok()),
    );
    let config: JwtConfig = serde_json::from_value(json!({"providers": [{
        "name": "p", "issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["ES256"],
        "jwks": {"inline": {"keys": [mint::public_jwk(&key)]}}
    }]}))
    .unwrap_or_else(|e| panic!("{e}"));
    let auth = JwtAuth::compile(&config, "jwt").unwrap_or_else(|e| panic!("{e:?}"));
    let head = RequestHead::from_host(
        vec![("authorization".into(), format!("Bearer {token_text}"))],
        Some("127.0.0.1:1"),
    );
    let mut cache = TokenCache::new(4096);
    c.bench_function("jwt: find + verify, cache hit", |b| {
        b.iter(|| {
            let found = auth.find_token(&head).ok().flatten();
            found.map(|f| auth.verify(f, now, &RustVerifier, &mut cache).is_ok())
        })
    });
    c.bench_function("jwt: find + verify, cache miss (Rust ES256)", |b| {
        b.iter(|| {
            let mut empty = TokenCache::new(1);
            let found = auth.find_token(&head).ok().flatten();
            found.map(|f| auth.verify(f, now, &RustVerifier, &mut empty).is_ok())
        })
    });
}

fn rate_limit(c: &mut Criterion) {
    let limits = compile_section(
        &json!({"api": {"requests": 1_000_000_000u64, "window_seconds": 60, "key": "ip"}}),
        "rate_limits",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let Some(limit) = limits.get("api") else {
        return;
    };
    let limiter = Limiter::new([7; 32]);
    let store = MemoryStore::new();
    let mut now_ms = 1_900_000_000_000u64;
    c.bench_function("rate limit: one admission (in-memory CAS store)", |b| {
        b.iter(|| {
            now_ms += 1;
            limiter
                .check(&store, limit, black_box("ip:203.0.113.7"), now_ms)
                .allowed
        })
    });
}

fn api_keys(c: &mut Criterion) {
    let keys: Vec<Value> = (0..10_000)
        .map(|i| {
            let key = format!("ag_live_{i:040}");
            json!({"id": format!("svc-{i}"), "prefix": "ag_live_", "sha256": key_sha256_hex(&key)})
        })
        .collect();
    let config: ApiKeysConfig =
        serde_json::from_value(json!({"keys": keys})).unwrap_or_else(|e| panic!("{e}"));
    let compiled = ApiKeys::compile(&config, "api_keys").unwrap_or_else(|e| panic!("{e:?}"));
    let presented = format!("ag_live_{:040}", 5_000);
    c.bench_function(
        "api key: hash + constant-time compare among 10,000 keys",
        |b| b.iter(|| compiled.verify(black_box(&presented), 0).is_ok()),
    );
}

criterion_group!(benches, routes, jwt, rate_limit, api_keys);
criterion_main!(benches);
