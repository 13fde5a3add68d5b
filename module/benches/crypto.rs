//! Signature verification per algorithm: the RustCrypto path (the core's `RustVerifier`, what
//! the wasm build runs when Envoy's BoringSSL foreign function is missing) against ring (the
//! dynamic module's `NativeVerifier`), natively, in one run. `cargo bench -p api-guard-module`.

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::jwk::{parse_jwk, Jwk};
use api_guard_core::authn::jwt::verifier::{RustVerifier, SignatureVerifier};
use api_guard_core::support::mint;
use api_guard_module::crypto::NativeVerifier;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::Value;

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn case(name: &str, alg: Alg) -> Option<(Jwk, Vec<u8>, Vec<u8>)> {
    let private = key(name);
    let input = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9".to_vec();
    let sig = mint::sign_bytes(&private, alg, &input).ok()?;
    let public = parse_jwk(&mint::public_jwk(&private), "key").ok()?;
    Some((public, input, sig))
}

fn verify(c: &mut Criterion) {
    let cases = [
        ("ES256", "p256", Alg::ES256),
        ("ES384", "p384", Alg::ES384),
        ("RS256", "rsa2048", Alg::RS256),
        ("PS256", "rsa2048", Alg::PS256),
        ("EdDSA", "ed25519", Alg::EdDSA),
    ];
    let verifiers: [(&str, &dyn SignatureVerifier); 2] =
        [("rustcrypto", &RustVerifier), ("ring", &NativeVerifier)];
    for (label, name, alg) in cases {
        let Some((jwk, input, sig)) = case(name, alg) else {
            eprintln!("{label}: no test key");
            continue;
        };
        for (verifier_name, verifier) in verifiers {
            if verifier.verify(&jwk, alg, &input, &sig).is_err() {
                eprintln!("{label}: {verifier_name} refused a good signature");
                continue;
            }
            c.bench_function(&format!("verify {label} {verifier_name}"), |b| {
                b.iter(|| verifier.verify(&jwk, alg, black_box(&input), black_box(&sig)))
            });
        }
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
