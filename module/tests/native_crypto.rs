//! The dynamic module's `NativeVerifier` (ring) against the core's `RustVerifier`, which
//! `core/tests/crypto_vectors.rs` checks against Wycheproof: on every Wycheproof case of
//! ECDSA P-256/P-384 (P1363), RSA PKCS#1 v1.5 and PSS, both accept or both refuse, and on
//! every case Wycheproof calls valid or invalid, the native one agrees with Wycheproof. Each set
//! asserts how many cases ran.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::b64url;
use api_guard_core::authn::jwt::jwk::{self, Jwk};
use api_guard_core::authn::jwt::verifier::{RustVerifier, SignatureVerifier};
use api_guard_module::crypto::NativeVerifier;
use serde_json::{json, Value};
use wycheproof::TestResult;

fn strip(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn parse(jwk: &Value) -> Option<Jwk> {
    jwk::parse_jwk(jwk, "vector").ok()
}

/// Checks one case.
fn agree(label: &str, tc: usize, key: &Jwk, alg: Alg, msg: &[u8], sig: &[u8], want: TestResult) {
    let native = NativeVerifier.verify(key, alg, msg, sig);
    let rust = RustVerifier.verify(key, alg, msg, sig);
    assert_eq!(
        native.is_ok(),
        rust.is_ok(),
        "{label} tc {tc}: native {native:?}, rust {rust:?}"
    );
    match want {
        TestResult::Valid => assert!(native.is_ok(), "{label} tc {tc}: valid, refused"),
        TestResult::Invalid => assert!(native.is_err(), "{label} tc {tc}: invalid, accepted"),
        TestResult::Acceptable => {}
    }
}

fn ecdsa(name: wycheproof::ecdsa::TestName, alg: Alg, crv: &str, coordinate: usize) -> usize {
    let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
    let mut run = 0;
    for group in &set.test_groups {
        let point = &group.key.key;
        let jwk = json!({
            "kty": "EC", "crv": crv,
            "x": b64url::encode(&point[1..1 + coordinate]),
            "y": b64url::encode(&point[1 + coordinate..]),
        });
        let Some(key) = parse(&jwk) else { continue };
        for t in &group.tests {
            agree(
                &format!("{name:?}"),
                t.tc_id,
                &key,
                alg,
                &t.msg,
                &t.sig,
                t.result,
            );
            run += 1;
        }
    }
    run
}

fn rsa_key(n: &[u8], e: &[u8]) -> Option<Jwk> {
    parse(&json!({"kty": "RSA", "n": b64url::encode(strip(n)), "e": b64url::encode(strip(e))}))
}

#[test]
fn ecdsa_p256_and_p384_agree() {
    use wycheproof::ecdsa::TestName;
    let p256 = ecdsa(TestName::EcdsaSecp256r1Sha256P1363, Alg::ES256, "P-256", 32);
    let p384 = ecdsa(TestName::EcdsaSecp384r1Sha384P1363, Alg::ES384, "P-384", 48);
    eprintln!("P-256: {p256} cases, P-384: {p384} cases");
    assert!(p256 > 200 && p384 > 200, "P-256 {p256}, P-384 {p384} cases");
}

/// One Wycheproof RSA group (PKCS#1 v1.5 and PSS sets have their own types, with the same
/// fields): the cases run.
fn rsa_group<'a>(
    label: &str,
    n: &[u8],
    e: &[u8],
    alg: Alg,
    tests: impl IntoIterator<Item = (usize, &'a [u8], &'a [u8], TestResult)>,
) -> usize {
    let Some(key) = rsa_key(n, e) else {
        return 0;
    };
    let mut run = 0;
    for (tc, msg, sig, want) in tests {
        agree(label, tc, &key, alg, msg, sig, want);
        run += 1;
    }
    run
}

#[test]
fn rsa_pkcs1_agrees() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let mut run = 0;
    for (name, alg) in [
        (TestName::Rsa2048Sha256, Alg::RS256),
        (TestName::Rsa3072Sha384, Alg::RS384),
        (TestName::Rsa4096Sha512, Alg::RS512),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let tests = group
                .tests
                .iter()
                .map(|t| (t.tc_id, &t.msg[..], &t.sig[..], t.result));
            run += rsa_group(&format!("{name:?}"), &group.key.n, &group.key.e, alg, tests);
        }
    }
    assert!(run > 300, "{run} cases");
}

#[test]
fn rsa_pss_agrees() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let mut run = 0;
    for (name, alg) in [
        (TestName::RsaPss2048Sha256Mgf1SaltLen32, Alg::PS256),
        (TestName::RsaPss2048Sha384Mgf1SaltLen48, Alg::PS384),
        (TestName::RsaPss4096Sha512Mgf1SaltLen64, Alg::PS512),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let tests = group
                .tests
                .iter()
                .map(|t| (t.tc_id, &t.msg[..], &t.sig[..], t.result));
            run += rsa_group(&format!("{name:?}"), &group.key.n, &group.key.e, alg, tests);
        }
    }
    assert!(run > 100, "{run} cases");
}
