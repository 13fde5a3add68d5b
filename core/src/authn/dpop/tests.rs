//! Every check of a DPoP proof, natively: proofs signed here with the test keys of
//! `tests/keys/` (support::mint), thumbprints compared with values computed by PyPI jwcrypto.

use super::*;
use crate::authn::jwt::verifier::RustVerifier;
use crate::body::replay::MemoryReplayStore;
use crate::support::mint;
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const SKEW: u64 = 60;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

/// RFC 7638 thumbprints of the test keys, as jwcrypto 1.6.1 computes them
/// (`JWK(**key).thumbprint()`), not as this module does.
const P256_JKT: &str = "RzNLGVstBaxLVpp9iqVaOVDBJSYX0w9TQpKiF1yTG78";
const RSA_JKT: &str = "lV0J4AiuTZxbRlSN0rIcuO3NQVhOgEVCTfVJKv3OA20";
const ED25519_JKT: &str = "EUBo603tIdcbjWYCJNGp-FBb4Uv9BjMI7tR2L5_piLM";
const P384_JKT: &str = "MaY4hLnQ46B4tgbzagkX3ePlZm18n-SEVCxBIwI_cyQ";

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn target() -> ProofTarget<'static> {
    ProofTarget {
        method: "POST",
        scheme: "https",
        authority: "api.test",
        path: "/docs/a?page=2",
        access_token: TOKEN,
    }
}

fn ath(token: &str) -> String {
    b64url::encode(&Sha256::digest(token.as_bytes()))
}

fn good_claims() -> Value {
    json!({
        "htm": "POST",
        "htu": "https://api.test/docs/a",
        "iat": NOW,
        "jti": "e1j3V_bKic8-LAEB",
        "ath": ath(TOKEN),
    })
}

/// A proof signed by `signer` whose header holds `header` (the public half of `signer` under
/// `jwk` unless the test says otherwise).
fn proof_with(signer: &Value, alg: Alg, header: Value, claims: Value) -> String {
    mint::sign_raw(signer, alg, &header.to_string(), &claims.to_string()).unwrap()
}

fn proof(key_name: &str, alg: Alg, claims: Value) -> String {
    let signer = key(key_name);
    let header = json!({"typ": "dpop+jwt", "alg": alg.name(), "jwk": mint::public_jwk(&signer)});
    proof_with(&signer, alg, header, claims)
}

fn verify(proof: &str) -> Result<VerifiedProof, &'static str> {
    verify_proof(proof, &target(), NOW, SKEW, &RustVerifier)
}

fn with(claims: Value, name: &str, value: Value) -> Value {
    let mut claims = claims;
    match value {
        Value::Null => {
            claims.as_object_mut().unwrap().remove(name);
        }
        value => {
            claims[name] = value;
        }
    }
    claims
}

#[test]
fn proofs_by_every_asymmetric_key_type_verify_and_name_their_thumbprint() {
    for (name, alg, jkt) in [
        ("p256", Alg::ES256, P256_JKT),
        ("p384", Alg::ES384, P384_JKT),
        ("rsa2048", Alg::RS256, RSA_JKT),
        ("rsa2048", Alg::PS256, RSA_JKT),
        ("ed25519", Alg::EdDSA, ED25519_JKT),
    ] {
        let verified = verify(&proof(name, alg, good_claims()))
            .unwrap_or_else(|reason| panic!("{name} {alg}: {reason}"));
        assert_eq!(verified.thumbprint, jkt, "{name}");
        assert_eq!(verified.jti, "e1j3V_bKic8-LAEB");
        assert_eq!(verified.iat, NOW);
    }
}

#[test]
fn the_header_must_say_dpop_jwt_with_an_asymmetric_alg_and_a_public_jwk() {
    let signer = key("p256");
    let public = mint::public_jwk(&signer);
    let cases = [
        (
            json!({"typ": "JWT", "alg": "ES256", "jwk": public}),
            "DPoP proof typ is not dpop+jwt",
        ),
        (
            json!({"alg": "ES256", "jwk": public}),
            "DPoP proof typ is not dpop+jwt",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256"}),
            "DPoP proof has no jwk object",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": "x"}),
            "DPoP proof has no jwk object",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": signer}),
            "DPoP proof jwk holds private or symmetric key material",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public, "x5c": ["AA"]}),
            "DPoP proof names a key by jku/x5u/x5c",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public, "jku": "https://x"}),
            "DPoP proof names a key by jku/x5u/x5c",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public, "crit": ["exp"]}),
            "DPoP proof crit header refused",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "none", "jwk": public}),
            "DPoP proof alg none",
        ),
        (
            json!({"typ": "dpop+jwt", "jwk": public}),
            "DPoP proof alg unsupported or missing",
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}),
            "DPoP proof jwk is not a supported public key",
        ),
    ];
    for (header, reason) in cases {
        let proof = proof_with(&signer, Alg::ES256, header.clone(), good_claims());
        assert_eq!(verify(&proof), Err(reason), "{header}");
    }
    // The control: the same header rules pass with `typ` in another letter case (RFC 7515
    // section 4.1.9: media types are case-insensitive).
    let header = json!({"typ": "DPoP+JWT", "alg": "ES256", "jwk": public});
    assert!(verify(&proof_with(&signer, Alg::ES256, header, good_claims())).is_ok());
}

#[test]
fn a_symmetric_proof_is_refused_with_or_without_its_secret() {
    let secret = key("hs512");
    let mut public = secret.clone();
    public.as_object_mut().unwrap().remove("k");
    for jwk in [secret.clone(), public] {
        let header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk});
        let proof = proof_with(&secret, Alg::HS256, header, good_claims());
        assert_eq!(
            verify(&proof),
            Err("DPoP proof alg is symmetric; an asymmetric algorithm is required")
        );
    }
}

#[test]
fn the_signature_must_verify_with_the_embedded_key() {
    let other = key("p256-other");
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": mint::public_jwk(&key("p256"))});
    let forged = proof_with(&other, Alg::ES256, header, good_claims());
    assert_eq!(
        verify(&forged),
        Err("DPoP proof signature does not verify with its jwk")
    );
    // An alg that does not fit the key type.
    let header = json!({"typ": "dpop+jwt", "alg": "ES384", "jwk": mint::public_jwk(&key("p256"))});
    let mismatched = proof_with(&key("p384"), Alg::ES384, header, good_claims());
    assert_eq!(
        verify(&mismatched),
        Err("DPoP proof alg does not fit its jwk")
    );
    // A tampered payload.
    let good = proof("p256", Alg::ES256, good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let other_claims = b64url::encode(
        with(good_claims(), "jti", json!("another"))
            .to_string()
            .as_bytes(),
    );
    let tampered = format!("{}.{}.{}", parts[0], other_claims, parts[2]);
    assert_eq!(
        verify(&tampered),
        Err("DPoP proof signature does not verify with its jwk")
    );
}

#[test]
fn htm_must_be_the_request_method() {
    for htm in [json!("GET"), json!("post"), json!(1), Value::Null] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "htm", htm.clone()));
        assert_eq!(
            verify(&proof),
            Err("DPoP proof htm does not match the request method"),
            "{htm}"
        );
    }
}

#[test]
fn htu_must_be_the_request_url_after_normalisation() {
    for htu in [
        "https://api.test/docs/a",
        "HTTPS://API.Test/docs/a",
        "https://api.test:443/docs/a",
        "https://api.test/docs/a?other=query#fragment",
        "https://api.test/docs/./b/../a",
        "https://api.test/%64ocs/a",
    ] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "htu", json!(htu)));
        assert!(verify(&proof).is_ok(), "{htu} should match");
    }
    for htu in [
        "http://api.test/docs/a",
        "https://api.test:8443/docs/a",
        "https://other.test/docs/a",
        "https://api.test/docs/A",
        "https://api.test/docs/a/",
        "https://api.test/docs",
        "https://user@api.test/docs/a",
        "/docs/a",
        "",
    ] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "htu", json!(htu)));
        assert_eq!(
            verify(&proof),
            Err("DPoP proof htu does not match the request URL"),
            "{htu} should not match"
        );
    }
    let proof = proof("p256", Alg::ES256, with(good_claims(), "htu", Value::Null));
    assert_eq!(verify(&proof), Err("DPoP proof htu missing"));
}

#[test]
fn the_scheme_is_the_transport_envoy_saw() {
    let plain = ProofTarget {
        scheme: "http",
        ..target()
    };
    let for_https = proof("p256", Alg::ES256, good_claims());
    assert_eq!(
        verify_proof(&for_https, &plain, NOW, SKEW, &RustVerifier),
        Err("DPoP proof htu does not match the request URL")
    );
    let for_http = proof(
        "p256",
        Alg::ES256,
        with(good_claims(), "htu", json!("http://api.test/docs/a")),
    );
    assert!(verify_proof(&for_http, &plain, NOW, SKEW, &RustVerifier).is_ok());
    assert_eq!(
        verify(&for_http),
        Err("DPoP proof htu does not match the request URL")
    );
}

#[test]
fn iat_must_lie_within_the_clock_skew() {
    for iat in [NOW - SKEW, NOW, NOW + SKEW] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "iat", json!(iat)));
        assert!(verify(&proof).is_ok(), "iat {iat}");
    }
    for iat in [NOW - SKEW - 1, NOW + SKEW + 1, 0] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "iat", json!(iat)));
        assert_eq!(
            verify(&proof),
            Err("DPoP proof iat outside the accepted window"),
            "iat {iat}"
        );
    }
    for iat in [json!("1800000000"), json!(1.8e9), json!(-1), Value::Null] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "iat", iat.clone()));
        assert_eq!(
            verify(&proof),
            Err("DPoP proof iat missing or not a non-negative integer"),
            "iat {iat}"
        );
    }
}

#[test]
fn ath_must_hash_the_presented_token_and_jti_must_be_there() {
    for ath_value in [json!(ath("another.token.x")), json!(TOKEN), json!("")] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "ath", ath_value));
        assert_eq!(
            verify(&proof),
            Err("DPoP proof ath does not match the access token")
        );
    }
    let proof_without_ath = proof("p256", Alg::ES256, with(good_claims(), "ath", Value::Null));
    assert_eq!(verify(&proof_without_ath), Err("DPoP proof ath missing"));
    for jti in [Value::Null, json!(""), json!(7), json!("j".repeat(257))] {
        let proof = proof("p256", Alg::ES256, with(good_claims(), "jti", jti));
        assert_eq!(
            verify(&proof),
            Err("DPoP proof jti missing or not a short string")
        );
    }
}

#[test]
fn malformed_proofs_are_refused() {
    for proof in ["", "a.b", "a.b.c.d", "!!!.e30.AA", &"a".repeat(9000)] {
        assert!(verify(proof).is_err(), "{proof:.20}");
    }
    // Duplicate members in the header (a parser differential) are refused.
    let signer = key("p256");
    let header = format!(
        r#"{{"typ":"dpop+jwt","typ":"JWT","alg":"ES256","jwk":{}}}"#,
        mint::public_jwk(&signer)
    );
    let proof = mint::sign_raw(&signer, Alg::ES256, &header, &good_claims().to_string()).unwrap();
    assert_eq!(
        verify(&proof),
        Err("DPoP proof header or claims are not a JSON object without duplicate keys")
    );
}

fn bound_claims(jkt: &str) -> Map<String, Value> {
    json!({"sub": "alice", "cnf": {"jkt": jkt}})
        .as_object()
        .unwrap()
        .clone()
}

fn check(
    claims: &Map<String, Value>,
    proofs: &[&str],
    replay: &MemoryReplayStore,
) -> Result<(), BindingRefusal> {
    check_proof(
        claims,
        &mut proofs.iter().copied(),
        &target(),
        NOW,
        SKEW,
        &RustVerifier,
        replay,
    )
}

#[test]
fn a_proof_counts_once_for_its_bound_token() {
    let replay = MemoryReplayStore::default();
    let proof = proof("p256", Alg::ES256, good_claims());
    assert_eq!(check(&bound_claims(P256_JKT), &[&proof], &replay), Ok(()));
    assert_eq!(
        check(&bound_claims(P256_JKT), &[&proof], &replay),
        Err(BindingRefusal::proof(
            "DPoP proof replayed (jti seen before)"
        ))
    );
    // The same jti from another key is another proof.
    let rsa_proof = proof_rsa();
    assert_eq!(
        check(&bound_claims(RSA_JKT), &[&rsa_proof], &replay),
        Ok(())
    );
}

fn proof_rsa() -> String {
    proof("rsa2048", Alg::RS256, good_claims())
}

#[test]
fn the_proof_key_must_be_the_bound_key() {
    let replay = MemoryReplayStore::default();
    let proof = proof("p256", Alg::ES256, good_claims());
    assert_eq!(
        check(&bound_claims(RSA_JKT), &[&proof], &replay),
        Err(BindingRefusal::token(
            "proof key thumbprint does not match the token's cnf.jkt"
        ))
    );
    // A refused binding takes no room in the replay table: the right token still works.
    assert_eq!(check(&bound_claims(P256_JKT), &[&proof], &replay), Ok(()));
}

#[test]
fn exactly_one_proof_and_a_bound_token() {
    let replay = MemoryReplayStore::default();
    let proof = proof("p256", Alg::ES256, good_claims());
    let one_proof = BindingRefusal::proof("exactly one DPoP proof header is required");
    assert_eq!(check(&bound_claims(P256_JKT), &[], &replay), Err(one_proof));
    assert_eq!(
        check(&bound_claims(P256_JKT), &[&proof, &proof], &replay),
        Err(one_proof)
    );
    let unbound = json!({"sub": "alice"}).as_object().unwrap().clone();
    assert_eq!(
        check(&unbound, &[&proof], &replay),
        Err(BindingRefusal::token(
            "token presented with the DPoP scheme is not bound (no cnf.jkt)"
        ))
    );
    let bad_proof = proof.replace('.', "");
    assert!(check(&bound_claims(P256_JKT), &[&bad_proof], &replay).is_err_and(|r| r.proof_at_fault));
}

#[test]
fn bound_tokens_are_never_bearer_tokens_and_required_refuses_every_bearer() {
    let bound = bound_claims(P256_JKT);
    let unbound = json!({"sub": "alice"}).as_object().unwrap().clone();
    for mode in [DpopMode::Off, DpopMode::Optional, DpopMode::Required] {
        assert_eq!(
            check_bearer(mode, &bound),
            Err(BindingRefusal::token(
                "DPoP-bound token (cnf.jkt) presented as a bearer token"
            )),
            "{mode:?}"
        );
    }
    assert_eq!(check_bearer(DpopMode::Off, &unbound), Ok(()));
    assert_eq!(check_bearer(DpopMode::Optional, &unbound), Ok(()));
    assert_eq!(
        check_bearer(DpopMode::Required, &unbound),
        Err(BindingRefusal::token(
            "bearer token refused: the provider requires DPoP"
        ))
    );
    // An unreadable binding is not "unbound".
    for cnf in [json!("x"), json!({"jkt": 5})] {
        let claims = json!({"cnf": cnf}).as_object().unwrap().clone();
        assert!(check_bearer(DpopMode::Off, &claims).is_err(), "{cnf}");
    }
    // Another confirmation method (mTLS, RFC 8705) is not a DPoP binding.
    let mtls = json!({"cnf": {"x5t#S256": "abc"}})
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(check_bearer(DpopMode::Off, &mtls), Ok(()));
}

#[test]
fn replay_memory_lasts_until_iat_plus_skew() {
    let replay = MemoryReplayStore::default();
    let proof = proof("p256", Alg::ES256, good_claims());
    let at = |now: u64| {
        check_proof(
            &bound_claims(P256_JKT),
            &mut std::iter::once(proof.as_str()),
            &target(),
            now,
            SKEW,
            &RustVerifier,
            &replay,
        )
    };
    assert_eq!(at(NOW - SKEW), Ok(()));
    assert!(at(NOW + SKEW).is_err_and(|r| r.reason.contains("replayed")));
    // Past its window the proof is refused by iat, never by a forgotten record.
    assert!(at(NOW + SKEW + 1).is_err_and(|r| r.reason.contains("iat")));
}

#[test]
fn url_normalisation_follows_rfc_3986() {
    for (url, normalized) in [
        ("HTTPS://Example.COM/a", Some("https://example.com/a")),
        ("https://example.com:443/a", Some("https://example.com/a")),
        ("http://example.com:80/a", Some("http://example.com/a")),
        ("http://example.com:443/a", Some("http://example.com:443/a")),
        ("https://example.com:/a", Some("https://example.com/a")),
        ("https://example.com:0443/a", Some("https://example.com/a")),
        ("https://example.com", Some("https://example.com/")),
        ("https://example.com?q", Some("https://example.com/")),
        ("https://example.com/a?q#f", Some("https://example.com/a")),
        (
            "https://example.com/a/./b/../c",
            Some("https://example.com/a/c"),
        ),
        ("https://example.com/a/b/..", Some("https://example.com/a/")),
        ("https://example.com/../a", Some("https://example.com/a")),
        ("https://example.com/a//b", Some("https://example.com/a//b")),
        (
            "https://example.com/%7euser",
            Some("https://example.com/~user"),
        ),
        (
            "https://example.com/a%2fb",
            Some("https://example.com/a%2Fb"),
        ),
        (
            "https://example.com/%2E%2E/a",
            Some("https://example.com/a"),
        ),
        ("https://[::1]:8443/a", Some("https://[::1]:8443/a")),
        ("https://[FE80::1]/a", Some("https://[fe80::1]/a")),
        (
            "https://127.0.0.1:10000/a",
            Some("https://127.0.0.1:10000/a"),
        ),
        ("ftp://example.com/a", None),
        ("https://u:p@example.com/a", None),
        ("https:///a", None),
        ("https://example.com:99999/a", None),
        ("https://example.com:x/a", None),
        ("https://example.com/a%zz", None),
        ("https://example.com/a%+1", None),
        ("https://example.com/a b", None),
        ("https://exa mple.com/a", None),
        ("example.com/a", None),
    ] {
        assert_eq!(normalize_url(url).as_deref(), normalized, "{url}");
    }
}
