//! Attacks on the JWT verifier, as tables of (case, token, expected outcome).
//!
//! Every refused case is built so that, wherever possible, the token is otherwise perfect (signed
//! by a configured key over exactly the bytes it carries, with good claims): removing the one
//! protection the case names turns it into an accepted token and the test fails. Every table runs
//! twice, with `RustVerifier` and with `HostVerifier` over a fake host whose `verify_signature` is
//! implemented with RustCrypto.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::b64url;
use api_guard_core::authn::jwt::cache::TokenCache;
use api_guard_core::authn::jwt::jwk::Jwk;
use api_guard_core::authn::jwt::verifier::{
    ForeignFunctions, HostCallFailed, HostVerifier, Refusal, RustVerifier, SignatureVerifier,
};
use api_guard_core::authn::jwt::{FoundToken, JwtAuth, JwtConfig, JwtFailure};
use api_guard_core::config::error::ConfigError;
use api_guard_core::request::head::RequestHead;
use api_guard_core::support::mint;
use serde_json::{json, Map, Value};
use std::rc::Rc;

/// The fixed "current time" of every test (2027-01-15).
const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.test";
const ALL_ALGS: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];
/// P-256 and P-384 group orders.
const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
const P384_N: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973";

// ---------------------------------------------------------------------------------------------
// Keys, tokens, configuration
// ---------------------------------------------------------------------------------------------

fn key(name: &str) -> Value {
    let path = format!("{}/../tests/keys/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn public(name: &str) -> Value {
    mint::public_jwk(&key(name))
}

/// The key file and kid that sign `alg` in these tests.
fn signer(alg: Alg) -> (&'static str, &'static str) {
    match alg {
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
            ("rsa2048", "test-rsa")
        }
        Alg::ES256 => ("p256", "test-p256"),
        Alg::ES384 => ("p384", "test-p384"),
        Alg::EdDSA => ("ed25519", "test-ed25519"),
        Alg::HS256 | Alg::HS384 | Alg::HS512 => ("hs512", "test-hmac"),
    }
}

fn alg(name: &str) -> Alg {
    Alg::from_name(name).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    b64url::encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    b64url::decode(text).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    base16ct::mixed::decode_vec(text).unwrap()
}

/// Good claims for the default provider.
fn claims() -> Map<String, Value> {
    let Value::Object(map) = json!({
        "iss": ISS,
        "aud": "api",
        "sub": "alice",
        "iat": NOW - 10,
        "exp": NOW + 600,
    }) else {
        unreachable!()
    };
    map
}

/// Good claims, changed by `edit`, as JSON text.
fn claims_with(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut c = claims();
    edit(&mut c);
    Value::Object(c).to_string()
}

fn good_claims() -> String {
    claims_with(|_| {})
}

fn header(alg: &str, kid: &str) -> String {
    format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#)
}

/// A compact JWS over exactly `header_json` and `claims_json`, signed by private key file
/// `key_name` under `alg`.
fn sign_with(key_name: &str, alg: Alg, header_json: &str, claims_json: &str) -> String {
    mint::sign_raw(&key(key_name), alg, header_json, claims_json).unwrap()
}

/// A compact JWS signed with an arbitrary JWK value (attacker keys, HMAC secrets).
fn sign_with_jwk(jwk: &Value, alg: Alg, header_json: &str, claims_json: &str) -> String {
    mint::sign_raw(jwk, alg, header_json, claims_json).unwrap()
}

fn hmac_jwk(secret: &[u8]) -> Value {
    json!({"kty": "oct", "k": b64(secret)})
}

/// A valid token for `alg_name` from the configured key for it, with these claims.
fn token_with_claims(alg_name: &str, claims_json: &str) -> String {
    let a = alg(alg_name);
    let (file, kid) = signer(a);
    sign_with(file, a, &header(alg_name, kid), claims_json)
}

/// A valid token for `alg_name` from the configured key for it, with this header.
fn token_with_header(alg_name: &str, header_json: &str) -> String {
    let a = alg(alg_name);
    sign_with(signer(a).0, a, header_json, &good_claims())
}

fn good(alg_name: &str) -> String {
    token_with_claims(alg_name, &good_claims())
}

fn parts(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

fn signature_of(token: &str) -> Vec<u8> {
    unb64(&parts(token)[2])
}

fn with_signature(token: &str, signature: &[u8]) -> String {
    let p = parts(token);
    format!("{}.{}.{}", p[0], p[1], b64(signature))
}

/// Every configured public key. `rsa2048-other` comes first so that a token without a kid has
/// to find its key by trying.
fn all_keys() -> Vec<Value> {
    [
        "rsa2048-other",
        "rsa2048",
        "p256",
        "p384",
        "ed25519",
        "hs512",
    ]
    .iter()
    .map(|k| public(k))
    .collect()
}

/// The default provider (every algorithm, every key), with top-level fields replaced by those
/// in `overrides` (a `null` removes the field).
fn provider(overrides: Value) -> Value {
    let mut p = json!({
        "name": "t",
        "issuer": ISS,
        "audiences": ["api"],
        "algorithms": ALL_ALGS,
        "jwks": {"inline": {"keys": all_keys()}},
    });
    let target = p.as_object_mut().unwrap();
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
    p
}

fn try_compile(providers: Vec<Value>) -> Result<JwtAuth, Vec<ConfigError>> {
    let config: JwtConfig = serde_json::from_value(json!({ "providers": providers })).unwrap();
    JwtAuth::compile(&config, "jwt")
}

fn compile(providers: Vec<Value>) -> JwtAuth {
    match try_compile(providers) {
        Ok(jwt) => jwt,
        Err(errors) => panic!("configuration refused: {errors:#?}"),
    }
}

fn compile_errors(providers: Vec<Value>) -> Vec<ConfigError> {
    match try_compile(providers) {
        Ok(_) => panic!("configuration accepted"),
        Err(errors) => errors,
    }
}

fn default_auth() -> JwtAuth {
    compile(vec![provider(json!({}))])
}

fn bearer_head(token: &str) -> RequestHead {
    RequestHead::from_host(
        vec![("authorization".into(), format!("Bearer {token}"))],
        Some("127.0.0.1:1"),
    )
}

fn head(headers: &[(&str, &str)]) -> RequestHead {
    RequestHead::from_host(
        headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        Some("127.0.0.1:1"),
    )
}

// ---------------------------------------------------------------------------------------------
// Verifiers for the tests
// ---------------------------------------------------------------------------------------------

#[path = "support/fake_host.rs"]
mod fake_host;
use fake_host::FakeHost;

fn host_verifier() -> HostVerifier<FakeHost> {
    HostVerifier {
        host: FakeHost::default(),
    }
}

/// A verifier that must never be reached.
struct PanicVerifier;
impl SignatureVerifier for PanicVerifier {
    fn verify(&self, _: &Jwk, _: Alg, _: &[u8], _: &[u8]) -> Result<(), Refusal> {
        panic!("the signature verifier was called")
    }
    fn name(&self) -> &'static str {
        "panic"
    }
}

/// A verifier that refuses every signature.
struct RefuseVerifier;
impl SignatureVerifier for RefuseVerifier {
    fn verify(&self, _: &Jwk, _: Alg, _: &[u8], _: &[u8]) -> Result<(), Refusal> {
        Err("refused by RefuseVerifier")
    }
    fn name(&self) -> &'static str {
        "refuse"
    }
}

// ---------------------------------------------------------------------------------------------
// The table runner
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused { expired: bool },
    Missing,
}

const OK: Outcome = Outcome::Ok;
const REFUSED: Outcome = Outcome::Refused { expired: false };
const EXPIRED: Outcome = Outcome::Refused { expired: true };
const MISSING: Outcome = Outcome::Missing;

struct Case {
    name: String,
    headers: Vec<(String, String)>,
    expect: Outcome,
}

/// A case whose token is sent as `Authorization: Bearer <token>`.
fn case(name: impl Into<String>, token: impl AsRef<str>, expect: Outcome) -> Case {
    Case {
        name: name.into(),
        headers: vec![("authorization".into(), format!("Bearer {}", token.as_ref()))],
        expect,
    }
}

/// A case with these request headers (pseudo-headers included).
fn case_headers(name: impl Into<String>, headers: &[(&str, &str)], expect: Outcome) -> Case {
    Case {
        name: name.into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        expect,
    }
}

fn failure(f: JwtFailure) -> (Outcome, &'static str) {
    match f {
        JwtFailure::Missing => (Outcome::Missing, "missing"),
        JwtFailure::Refused { expired, reason } => (Outcome::Refused { expired }, reason),
    }
}

fn outcome_at(
    jwt: &JwtAuth,
    head: &RequestHead,
    now: u64,
    verifier: &dyn SignatureVerifier,
    cache: &mut TokenCache,
) -> (Outcome, &'static str) {
    match jwt.find_token(head) {
        Err(f) => failure(f),
        Ok(None) => (Outcome::Missing, "missing"),
        Ok(Some(found)) => match jwt.verify(found, now, verifier, cache) {
            Ok(_) => (Outcome::Ok, "ok"),
            Err(f) => failure(f),
        },
    }
}

/// Runs every case with both verifiers (a fresh cache each time); reports every mismatch at
/// once. Returns the number of cases.
fn run(jwt: &JwtAuth, cases: &[Case]) -> usize {
    assert!(!cases.is_empty());
    let host = host_verifier();
    let verifiers: [&dyn SignatureVerifier; 2] = [&RustVerifier, &host];
    let mut mismatches = Vec::new();
    for c in cases {
        for verifier in verifiers {
            let head = RequestHead::from_host(c.headers.clone(), Some("127.0.0.1:1"));
            let (got, reason) = outcome_at(jwt, &head, NOW, verifier, &mut TokenCache::new(16));
            if got != c.expect {
                mismatches.push(format!(
                    "  {} [{}]: expected {:?}, got {:?} ({reason})",
                    c.name,
                    verifier.name(),
                    c.expect,
                    got
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} case runs failed:\n{}",
        mismatches.len(),
        cases.len() * 2,
        mismatches.join("\n")
    );
    eprintln!("{} cases passed (x2 verifiers)", cases.len());
    cases.len()
}

// ---------------------------------------------------------------------------------------------
// Valid tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn every_algorithm_is_accepted_with_rust_and_host_verifiers() {
    let jwt = default_auth();
    let cases: Vec<Case> = ALL_ALGS
        .iter()
        .map(|a| case(format!("valid {a}"), good(a), OK))
        .collect();
    run(&jwt, &cases);

    // The host path is taken for RSA PKCS#1 v1.5 and ECDSA only; the rest falls back to Rust.
    for a in ALL_ALGS {
        let host = host_verifier();
        let token = good(a);
        let (got, reason) = outcome_at(
            &jwt,
            &bearer_head(&token),
            NOW,
            &host,
            &mut TokenCache::new(16),
        );
        assert_eq!(got, OK, "{a}: {reason}");
        let expected_calls = usize::from(matches!(
            alg(a),
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::ES256 | Alg::ES384
        ));
        assert_eq!(host.host.calls.get(), expected_calls, "host calls for {a}");
    }
}

#[test]
fn host_verdict_is_used_and_a_failing_host_falls_back_to_rust() {
    struct Down;
    impl ForeignFunctions for Down {
        fn call(&self, _: &str, _: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
            Err(HostCallFailed)
        }
    }
    struct SaysNo;
    impl ForeignFunctions for SaysNo {
        fn call(&self, _: &str, _: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
            Ok(vec![0x08, 0x00])
        }
    }
    let jwt = default_auth();
    for a in ["RS256", "ES256", "ES384"] {
        let token = good(a);
        let down = HostVerifier { host: Down };
        let (got, reason) = outcome_at(
            &jwt,
            &bearer_head(&token),
            NOW,
            &down,
            &mut TokenCache::new(16),
        );
        assert_eq!(got, OK, "{a} with a host that refuses the call: {reason}");
        let no = HostVerifier { host: SaysNo };
        let (got, _) = outcome_at(
            &jwt,
            &bearer_head(&token),
            NOW,
            &no,
            &mut TokenCache::new(16),
        );
        assert_eq!(
            got, REFUSED,
            "{a} with a host that says the signature is bad"
        );
        // A tampered token stays refused when the host is down (the fallback really verifies).
        let mut sig = signature_of(&token);
        sig[5] ^= 1;
        let (got, _) = outcome_at(
            &jwt,
            &bearer_head(&with_signature(&token, &sig)),
            NOW,
            &down,
            &mut TokenCache::new(16),
        );
        assert_eq!(got, REFUSED, "{a} tampered, host down");
    }
}

// ---------------------------------------------------------------------------------------------
// alg
// ---------------------------------------------------------------------------------------------

#[test]
fn alg_none_missing_unknown_or_not_allowed_is_refused() {
    let jwt = default_auth();
    let claims = good_claims();
    let c64 = b64(claims.as_bytes());
    let mut cases = vec![case("control: valid ES256", good("ES256"), OK)];
    for none in ["none", "None", "NONE", "nOnE"] {
        let h = format!(r#"{{"alg":"{none}","typ":"JWT"}}"#);
        let unsigned = format!("{}.{c64}.", b64(h.as_bytes()));
        cases.push(case(
            format!("alg {none}, empty signature"),
            &unsigned,
            REFUSED,
        ));
        // The same header with a real HMAC under the configured secret, and with an ES256
        // signature of the configured key.
        cases.push(case(
            format!("alg {none}, HMAC signature"),
            sign_with("hs512", Alg::HS256, &h, &claims),
            REFUSED,
        ));
        cases.push(case(
            format!("alg {none}, ES256 signature"),
            sign_with(
                "p256",
                Alg::ES256,
                &format!(r#"{{"alg":"{none}","kid":"test-p256"}}"#),
                &claims,
            ),
            REFUSED,
        ));
    }
    // Each of these is signed by the configured ES256 key: only the alg check refuses it.
    for (name, alg_json) in [
        ("alg missing", None),
        ("alg null", Some("null")),
        ("alg number", Some("256")),
        ("alg array", Some(r#"["ES256"]"#)),
        ("alg empty", Some(r#""""#)),
        ("alg lower case", Some(r#""es256""#)),
        ("alg trailing space", Some(r#""ES256 ""#)),
        ("alg with NUL", Some(r#""ES256\u0000""#)),
        ("alg unknown HS1024", Some(r#""HS1024""#)),
        ("alg unknown ES512", Some(r#""ES512""#)),
        ("alg unknown ES256K", Some(r#""ES256K""#)),
        ("alg unknown Ed25519", Some(r#""Ed25519""#)),
    ] {
        let h = match alg_json {
            None => r#"{"typ":"JWT","kid":"test-p256"}"#.to_owned(),
            Some(a) => format!(r#"{{"alg":{a},"typ":"JWT","kid":"test-p256"}}"#),
        };
        cases.push(case(
            name,
            sign_with("p256", Alg::ES256, &h, &claims),
            REFUSED,
        ));
    }
    cases.push(case(
        "alg HS1024 with an HS512 MAC",
        sign_with("hs512", Alg::HS512, &header("HS1024", "test-hmac"), &claims),
        REFUSED,
    ));
    // The header names one algorithm, the signature is another's.
    cases.push(case(
        "header RS256, PS256 signature",
        sign_with("rsa2048", Alg::PS256, &header("RS256", "test-rsa"), &claims),
        REFUSED,
    ));
    cases.push(case(
        "header HS512, HS256 MAC",
        sign_with("hs512", Alg::HS256, &header("HS512", "test-hmac"), &claims),
        REFUSED,
    ));
    cases.push(case(
        "header ES384, ES256 signature",
        sign_with("p256", Alg::ES256, &header("ES384", "test-p256"), &claims),
        REFUSED,
    ));
    run(&jwt, &cases);

    // A provider that allows ES256 only refuses other algorithms, even with a configured key.
    let es_only = compile(vec![provider(json!({"algorithms": ["ES256"]}))]);
    let mut cases = vec![case("ES256 allowed", good("ES256"), OK)];
    for a in ALL_ALGS.iter().filter(|a| **a != "ES256") {
        cases.push(case(format!("{a} not in algorithms"), good(a), REFUSED));
    }
    run(&es_only, &cases);

    // Without `algorithms`, HMAC is not allowed even though an HMAC key is configured.
    let default_algs = compile(vec![provider(json!({"algorithms": null}))]);
    let mut cases = Vec::new();
    for a in ALL_ALGS {
        let expect = if a.starts_with("HS") { REFUSED } else { OK };
        cases.push(case(
            format!("{a} with default algorithms"),
            good(a),
            expect,
        ));
    }
    run(&default_algs, &cases);
}

// ---------------------------------------------------------------------------------------------
// Algorithm confusion
// ---------------------------------------------------------------------------------------------

fn pem(label: &str, der: &[u8], eol: &str, final_eol: bool) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----{eol}");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str(eol);
    }
    out.push_str(&format!("-----END {label}-----"));
    if final_eol {
        out.push_str(eol);
    }
    out
}

/// HS256 tokens whose secret is each of `secrets`, with and without a kid.
fn hs256_forgeries(secrets: &[(String, Vec<u8>)], kid: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, secret) in secrets {
        let jwk = hmac_jwk(secret);
        for h in [
            header("HS256", kid),
            r#"{"alg":"HS256","typ":"JWT"}"#.to_owned(),
        ] {
            cases.push(case(
                format!("HS256 with secret = {name}, header {h}"),
                sign_with_jwk(&jwk, Alg::HS256, &h, &good_claims()),
                REFUSED,
            ));
        }
    }
    cases
}

#[test]
fn algorithm_confusion_is_refused() {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    // RSA: the provider has only the RSA key, and allows HS256 too.
    let rsa_jwk = public("rsa2048");
    let n = unb64(rsa_jwk["n"].as_str().unwrap());
    let e = unb64(rsa_jwk["e"].as_str().unwrap());
    let rsa_key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .unwrap();
    let spki = rsa_key.to_public_key_der().unwrap().as_bytes().to_vec();
    let pkcs1 = rsa_key.to_pkcs1_der().unwrap().as_bytes().to_vec();
    let jwk_text = serde_json::to_string(&rsa_jwk).unwrap();
    let secrets: Vec<(String, Vec<u8>)> = vec![
        ("RSA SPKI DER".into(), spki.clone()),
        ("RSA PKCS#1 DER".into(), pkcs1.clone()),
        (
            "RSA SPKI PEM (LF)".into(),
            pem("PUBLIC KEY", &spki, "\n", true).into_bytes(),
        ),
        (
            "RSA SPKI PEM (no final LF)".into(),
            pem("PUBLIC KEY", &spki, "\n", false).into_bytes(),
        ),
        (
            "RSA SPKI PEM (CRLF)".into(),
            pem("PUBLIC KEY", &spki, "\r\n", true).into_bytes(),
        ),
        (
            "RSA PKCS#1 PEM".into(),
            pem("RSA PUBLIC KEY", &pkcs1, "\n", true).into_bytes(),
        ),
        ("RSA JWK JSON text".into(), jwk_text.into_bytes()),
        (
            "RSA JWK JSON text (pretty)".into(),
            serde_json::to_string_pretty(&rsa_jwk).unwrap().into_bytes(),
        ),
        ("RSA modulus bytes".into(), n.clone()),
        (
            "RSA modulus base64url text".into(),
            rsa_jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        ),
    ];
    let rsa_only = compile(vec![provider(json!({
        "algorithms": ["RS256", "HS256"],
        "jwks": {"inline": {"keys": [rsa_jwk]}},
    }))]);
    let mut cases = vec![case("control: valid RS256", good("RS256"), OK)];
    cases.extend(hs256_forgeries(&secrets, "test-rsa"));
    run(&rsa_only, &cases);

    // EC: the provider has only the P-256 key, and allows HS256 too.
    let ec_jwk = public("p256");
    let x = unb64(ec_jwk["x"].as_str().unwrap());
    let y = unb64(ec_jwk["y"].as_str().unwrap());
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let ec_spki = {
        use p256::pkcs8::EncodePublicKey;
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
            .unwrap()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec()
    };
    let secrets: Vec<(String, Vec<u8>)> = vec![
        ("EC x coordinate".into(), x.clone()),
        ("EC y coordinate".into(), y.clone()),
        ("EC x || y".into(), [x.clone(), y.clone()].concat()),
        ("EC SEC1 uncompressed point".into(), sec1.clone()),
        ("EC SPKI DER".into(), ec_spki.clone()),
        (
            "EC SPKI PEM".into(),
            pem("PUBLIC KEY", &ec_spki, "\n", true).into_bytes(),
        ),
        (
            "EC JWK JSON text".into(),
            serde_json::to_string(&ec_jwk).unwrap().into_bytes(),
        ),
        (
            "EC x base64url text".into(),
            ec_jwk["x"].as_str().unwrap().as_bytes().to_vec(),
        ),
    ];
    let ec_only = compile(vec![provider(json!({
        "algorithms": ["ES256", "HS256"],
        "jwks": {"inline": {"keys": [ec_jwk]}},
    }))]);
    let mut cases = vec![case("control: valid ES256", good("ES256"), OK)];
    cases.extend(hs256_forgeries(&secrets, "test-p256"));
    run(&ec_only, &cases);

    // Ed25519: the public key bytes as an HMAC secret.
    let ed_jwk = public("ed25519");
    let ed_x = unb64(ed_jwk["x"].as_str().unwrap());
    let ed_only = compile(vec![provider(json!({
        "algorithms": ["EdDSA", "HS256"],
        "jwks": {"inline": {"keys": [ed_jwk]}},
    }))]);
    let mut cases = vec![case("control: valid EdDSA", good("EdDSA"), OK)];
    cases.extend(hs256_forgeries(
        &[("Ed25519 public key bytes".into(), ed_x)],
        "test-ed25519",
    ));
    run(&ed_only, &cases);

    // The reverse: an RSA/EC signature header with the HMAC key's kid is refused (the HMAC
    // secret cannot act as a public key).
    let jwt = default_auth();
    let cases = vec![
        case(
            "RS256 naming the HMAC kid, signed by the RSA key",
            sign_with(
                "rsa2048",
                Alg::RS256,
                &header("RS256", "test-hmac"),
                &good_claims(),
            ),
            REFUSED,
        ),
        case(
            "ES256 naming the RSA kid, signed by the EC key",
            sign_with(
                "p256",
                Alg::ES256,
                &header("ES256", "test-rsa"),
                &good_claims(),
            ),
            REFUSED,
        ),
        case(
            "PS256 naming the P-256 kid",
            sign_with(
                "rsa2048",
                Alg::PS256,
                &header("PS256", "test-p256"),
                &good_claims(),
            ),
            REFUSED,
        ),
    ];
    run(&jwt, &cases);
}

// ---------------------------------------------------------------------------------------------
// Keys named by the token
// ---------------------------------------------------------------------------------------------

#[test]
fn key_references_in_the_header_are_refused() {
    let jwt = default_auth();
    let claims = good_claims();
    let attacker = public("p256-other");
    let mine = public("p256");
    let mut cases = vec![case("control: valid ES256", good("ES256"), OK)];
    // The attacker's own key, embedded, signing the token.
    for kid in [None, Some("test-p256"), Some("test-p256-other")] {
        let mut h = json!({"alg": "ES256", "jwk": attacker});
        if let Some(kid) = kid {
            h["kid"] = json!(kid);
        }
        cases.push(case(
            format!("jwk header with the attacker's key, kid {kid:?}, signed by the attacker"),
            sign_with("p256-other", Alg::ES256, &h.to_string(), &claims),
            REFUSED,
        ));
    }
    // Signed by the configured key: only the header check refuses these.
    for (name, member) in [
        ("jwk (the configured key itself)", json!(mine)),
        ("jwk (the attacker's key)", json!(attacker)),
        ("jwk null", Value::Null),
        ("jku", json!("https://attacker.example/jwks.json")),
        (
            "jku to the issuer",
            json!("https://issuer.test/.well-known/jwks.json"),
        ),
        ("x5u", json!("https://attacker.example/cert.pem")),
        (
            "x5c",
            json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
        ),
        ("x5c empty", json!([])),
    ] {
        let field = name.split(' ').next().unwrap();
        let mut h = json!({"alg": "ES256", "typ": "JWT", "kid": "test-p256"});
        h[field] = member;
        cases.push(case(
            format!("{name}, signed by the configured key"),
            sign_with("p256", Alg::ES256, &h.to_string(), &claims),
            REFUSED,
        ));
    }
    run(&jwt, &cases);
}

#[test]
fn kid_attacks_are_refused() {
    let jwt = default_auth();
    let claims = good_claims();
    let es = |kid_json: &str| {
        sign_with(
            "p256",
            Alg::ES256,
            &format!(r#"{{"alg":"ES256","typ":"JWT","kid":{kid_json}}}"#),
            &claims,
        )
    };
    let long = "k".repeat(257);
    let mut cases = vec![case("control: valid ES256 with its kid", good("ES256"), OK)];
    for (name, kid_json) in [
        ("path traversal", r#""../../etc/passwd""#.to_owned()),
        ("absolute path", r#""/dev/null""#.to_owned()),
        ("traversal to a kid", r#""../test-p256""#.to_owned()),
        ("SQL", r#""x' UNION SELECT 'secret' -- ""#.to_owned()),
        ("SQL 2", r#""test-p256' OR '1'='1""#.to_owned()),
        ("kid of the RSA key", r#""test-rsa""#.to_owned()),
        ("kid of the HMAC key", r#""test-hmac""#.to_owned()),
        ("kid of the P-384 key", r#""test-p384""#.to_owned()),
        ("kid in another case", r#""TEST-P256""#.to_owned()),
        ("kid with a NUL", r#""test-p256\u0000""#.to_owned()),
        ("kid with a trailing space", r#""test-p256 ""#.to_owned()),
        ("unknown kid", r#""nope""#.to_owned()),
        ("empty kid", r#""""#.to_owned()),
        ("kid of 257 bytes", format!("\"{long}\"")),
        ("kid number", "1".to_owned()),
        ("kid null", "null".to_owned()),
        ("kid true", "true".to_owned()),
        ("kid array", r#"["test-p256"]"#.to_owned()),
        ("kid object", r#"{"kid":"test-p256"}"#.to_owned()),
    ] {
        cases.push(case(
            format!("{name}: kid {kid_json:.40}"),
            es(&kid_json),
            REFUSED,
        ));
    }
    // Same attacks on an HMAC token (whose kid must not become a file name or a query either).
    cases.push(case(
        "HS256 kid /dev/null",
        sign_with("hs512", Alg::HS256, &header("HS256", "/dev/null"), &claims),
        REFUSED,
    ));
    cases.push(case(
        "HS256 kid of the RSA key",
        sign_with("hs512", Alg::HS256, &header("HS256", "test-rsa"), &claims),
        REFUSED,
    ));
    run(&jwt, &cases);
}

#[test]
fn without_a_kid_the_right_key_is_found_among_several() {
    // rsa2048-other is the first key of the default provider.
    let jwt = default_auth();
    let claims = good_claims();
    let no_kid = |a: &str| format!(r#"{{"alg":"{a}","typ":"JWT"}}"#);
    let mut cases = Vec::new();
    for a in ALL_ALGS {
        let al = alg(a);
        cases.push(case(
            format!("{a} without kid"),
            sign_with(signer(al).0, al, &no_kid(a), &claims),
            OK,
        ));
    }
    cases.push(case(
        "RS256 without kid, signed by rsa2048-other (also configured)",
        sign_with("rsa2048-other", Alg::RS256, &no_kid("RS256"), &claims),
        OK,
    ));
    cases.push(case(
        "RS256 with kid test-rsa, signed by rsa2048-other",
        sign_with(
            "rsa2048-other",
            Alg::RS256,
            &header("RS256", "test-rsa"),
            &claims,
        ),
        REFUSED,
    ));
    cases.push(case(
        "ES256 without kid, signed by an unconfigured key",
        sign_with("p256-other", Alg::ES256, &no_kid("ES256"), &claims),
        REFUSED,
    ));
    run(&jwt, &cases);
    // Only rsa2048-other configured: a kid-less token of rsa2048 is refused.
    let other_only = compile(vec![provider(json!({
        "jwks": {"inline": {"keys": [public("rsa2048-other")]}},
    }))]);
    run(
        &other_only,
        &[case(
            "RS256 without kid, its key not configured",
            sign_with("rsa2048", Alg::RS256, &no_kid("RS256"), &claims),
            REFUSED,
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

fn be_pad(n: &rsa::BigUint, len: usize) -> Vec<u8> {
    let bytes = n.to_bytes_be();
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(&bytes);
    out
}

/// Malformed raw ECDSA signatures for a valid `token` on a curve of order `order_hex`.
fn ecdsa_malformations(token: &str, order_hex: &str, label: &str) -> Vec<Case> {
    let sig = signature_of(token);
    let half = sig.len() / 2;
    let (r, s) = sig.split_at(half);
    let order = hex(order_hex);
    let zero = vec![0u8; half];
    let n_big = rsa::BigUint::from_bytes_be(&order);
    let r_plus_n = be_pad(&(rsa::BigUint::from_bytes_be(r) + &n_big), half + 1);
    let mut cases = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| {
        cases.push(case(
            format!("{label} {name}"),
            with_signature(token, &bytes),
            REFUSED,
        ));
    };
    add("r = 0", [zero.as_slice(), s].concat());
    add("s = 0", [r, zero.as_slice()].concat());
    add("r = s = 0", vec![0u8; sig.len()]);
    add("r = n", [order.as_slice(), s].concat());
    add("s = n", [r, order.as_slice()].concat());
    add("r = s = n", [order.as_slice(), order.as_slice()].concat());
    add("all 0xff", vec![0xffu8; sig.len()]);
    add("r = 1, s = 1", {
        let mut one = vec![0u8; sig.len()];
        one[half - 1] = 1;
        one[sig.len() - 1] = 1;
        one
    });
    add("r and s swapped", [s, r].concat());
    add("one byte short", sig[..sig.len() - 1].to_vec());
    add("one byte long (0x00)", [sig.as_slice(), &[0]].concat());
    add(
        "one byte long (leading 0x00)",
        [&[0u8][..], sig.as_slice()].concat(),
    );
    add("r + n (one byte wider)", [r_plus_n.as_slice(), s].concat());
    add("empty", Vec::new());
    add("DER encoded", {
        if half == 32 {
            p256::ecdsa::Signature::from_slice(&sig)
                .unwrap()
                .to_der()
                .as_bytes()
                .to_vec()
        } else {
            p384::ecdsa::Signature::from_slice(&sig)
                .unwrap()
                .to_der()
                .as_bytes()
                .to_vec()
        }
    });
    cases
}

#[test]
fn malformed_ecdsa_signatures_are_refused() {
    let jwt = default_auth();
    let es256 = good("ES256");
    let es384 = good("ES384");
    let mut cases = vec![
        case("control: valid ES256", &es256, OK),
        case("control: valid ES384", &es384, OK),
    ];
    cases.extend(ecdsa_malformations(&es256, P256_N, "ES256"));
    cases.extend(ecdsa_malformations(&es384, P384_N, "ES384"));
    // Specifically the lengths the brief names, on ES256: 63, 65 bytes.
    let sig = signature_of(&es256);
    assert_eq!(sig.len(), 64);
    cases.push(case(
        "ES256 63 bytes",
        with_signature(&es256, &sig[..63]),
        REFUSED,
    ));
    cases.push(case(
        "ES256 65 bytes",
        with_signature(&es256, &[sig.as_slice(), &[1]].concat()),
        REFUSED,
    ));
    // An ES384 signature (96 bytes) under an ES256 header, and the reverse.
    cases.push(case(
        "ES256 header with a P-384 length signature",
        with_signature(&es256, &signature_of(&es384)),
        REFUSED,
    ));
    run(&jwt, &cases);
}

/// ECDSA signatures are malleable: (r, n - s) verifies too. JWS does not ask for low-s, and
/// refusing high-s would refuse about half of the tokens of issuers that do not normalise, so
/// both are accepted. This pins that behaviour (and that the twin is a different token, which
/// the cache keys separately).
#[test]
fn ecdsa_high_s_twin_is_accepted_by_design() {
    let jwt = default_auth();
    let token = good("ES256");
    let sig = signature_of(&token);
    let n = rsa::BigUint::from_bytes_be(&hex(P256_N));
    let s = rsa::BigUint::from_bytes_be(&sig[32..]);
    let twin_s = be_pad(&(&n - &s), 32);
    let twin = with_signature(&token, &[&sig[..32], twin_s.as_slice()].concat());
    assert_ne!(twin, token);
    run(
        &jwt,
        &[
            case("ES256 original", &token, OK),
            case("ES256 (r, n - s)", &twin, OK),
        ],
    );
}

#[test]
fn tampered_signatures_and_payloads_are_refused() {
    let jwt = default_auth();
    let claims = good_claims();
    let mut cases = Vec::new();
    for a in ALL_ALGS {
        let token = good(a);
        let sig = signature_of(&token);
        let p = parts(&token);
        cases.push(case(format!("control: valid {a}"), &token, OK));
        cases.push(case(
            format!("{a} truncated signature"),
            with_signature(&token, &sig[..sig.len() - 1]),
            REFUSED,
        ));
        cases.push(case(
            format!("{a} half signature"),
            with_signature(&token, &sig[..sig.len() / 2]),
            REFUSED,
        ));
        cases.push(case(
            format!("{a} extended signature"),
            with_signature(&token, &[sig.as_slice(), &[0]].concat()),
            REFUSED,
        ));
        cases.push(case(
            format!("{a} doubled signature"),
            with_signature(&token, &[sig.as_slice(), sig.as_slice()].concat()),
            REFUSED,
        ));
        cases.push(case(
            format!("{a} empty signature"),
            format!("{}.{}.", p[0], p[1]),
            REFUSED,
        ));
        let mut flipped = sig.clone();
        flipped[sig.len() / 2] ^= 0x01;
        cases.push(case(
            format!("{a} one bit flipped"),
            with_signature(&token, &flipped),
            REFUSED,
        ));
        cases.push(case(
            format!("{a} all-zero signature"),
            with_signature(&token, &vec![0u8; sig.len()]),
            REFUSED,
        ));
        // The payload changed (sub alice -> admin), the original signature kept.
        let evil = claims_with(|c| {
            c.insert("sub".into(), json!("admin"));
        });
        cases.push(case(
            format!("{a} tampered payload, original signature"),
            format!("{}.{}.{}", p[0], b64(evil.as_bytes()), p[2]),
            REFUSED,
        ));
        // The header changed (a harmless member added), the original signature kept.
        let (_, kid) = signer(alg(a));
        let h2 = format!(r#"{{"alg":"{a}","typ":"JWT","kid":"{kid}","x":1}}"#);
        cases.push(case(
            format!("{a} tampered header, original signature"),
            format!("{}.{}.{}", b64(h2.as_bytes()), p[1], p[2]),
            REFUSED,
        ));
        // The signature of another token of the same key.
        let other = token_with_claims(
            a,
            &claims_with(|c| {
                c.insert("sub".into(), json!("bob"));
            }),
        );
        cases.push(case(
            format!("{a} signature of another token"),
            with_signature(&token, &signature_of(&other)),
            REFUSED,
        ));
    }
    // Signatures made by keys that are not configured, naming the configured kid.
    cases.push(case(
        "RS256 by another RSA key (kid test-rsa)",
        sign_with(
            "rsa2048-other",
            Alg::RS256,
            &header("RS256", "test-rsa"),
            &claims,
        ),
        REFUSED,
    ));
    cases.push(case(
        "PS256 by another RSA key (kid test-rsa)",
        sign_with(
            "rsa2048-other",
            Alg::PS256,
            &header("PS256", "test-rsa"),
            &claims,
        ),
        REFUSED,
    ));
    cases.push(case(
        "ES256 by another P-256 key (kid test-p256)",
        sign_with(
            "p256-other",
            Alg::ES256,
            &header("ES256", "test-p256"),
            &claims,
        ),
        REFUSED,
    ));
    cases.push(case(
        "HS256 by another secret (kid test-hmac)",
        sign_with_jwk(
            &hmac_jwk(&[7u8; 64]),
            Alg::HS256,
            &header("HS256", "test-hmac"),
            &claims,
        ),
        REFUSED,
    ));
    run(&jwt, &cases);
}

// ---------------------------------------------------------------------------------------------
// Encoding and structure
// ---------------------------------------------------------------------------------------------

const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The part with the lowest unused bit of its last character set or cleared: the same bytes
/// for a lenient decoder. `None` when the part has no unused bits.
fn flip_unused_bit(part: &str) -> Option<String> {
    if part.len().is_multiple_of(4) {
        return None;
    }
    let last = *part.as_bytes().last()?;
    let value = URL_ALPHABET.iter().position(|c| *c == last)?;
    let flipped = URL_ALPHABET[value ^ 1] as char;
    Some(format!("{}{flipped}", &part[..part.len() - 1]))
}

#[test]
fn non_canonical_base64url_is_refused() {
    let jwt = default_auth();
    // The payload surely encodes to both '-' and '_' (runs of "~" and "?").
    // A header and a payload whose lengths are not multiples of 3 bytes (so their encodings
    // take padding in standard base64); the 64-byte signature takes "==".
    let h = (0..3)
        .map(|n| {
            format!(
                r#"{{"alg":"ES256","typ":"JWT","kid":"test-p256","x":"{}"}}"#,
                "x".repeat(n)
            )
        })
        .find(|h| !h.len().is_multiple_of(3))
        .unwrap();
    let claims = (0..3)
        .map(|n| {
            claims_with(|c| {
                c.insert(
                    "note".into(),
                    json!(format!("~~~~~~~~~~~~????????????{}", "n".repeat(n))),
                );
            })
        })
        .find(|c| !c.len().is_multiple_of(3))
        .unwrap();
    let token = sign_with("p256", Alg::ES256, &h, &claims);
    let p = parts(&token);
    assert!(p[1].contains('-') && p[1].contains('_'), "payload {}", p[1]);
    let join = |q: &[String]| q.join(".");
    let mut cases = vec![case("control: valid ES256", &token, OK)];
    let mut padded = 0;
    for i in 0..3 {
        let pad = (4 - p[i].len() % 4) % 4;
        if pad > 0 {
            let mut q = p.clone();
            q[i].push_str(&"=".repeat(pad));
            cases.push(case(
                format!("part {i} with correct = padding"),
                join(&q),
                REFUSED,
            ));
            padded += 1;
        }
        let mut q = p.clone();
        q[i].push_str("==");
        cases.push(case(
            format!("part {i} with == appended"),
            join(&q),
            REFUSED,
        ));
        let mut q = p.clone();
        q[i].push('=');
        cases.push(case(format!("part {i} with = appended"), join(&q), REFUSED));
        if let Some(f) = flip_unused_bit(&p[i]) {
            let mut q = p.clone();
            q[i] = f;
            cases.push(case(
                format!("part {i} with non-zero trailing bits"),
                join(&q),
                REFUSED,
            ));
        }
        for (ws_name, ws) in [
            ("space", " "),
            ("newline", "\n"),
            ("CRLF", "\r\n"),
            ("tab", "\t"),
        ] {
            let mut q = p.clone();
            let mid = q[i].len() / 2;
            q[i].insert_str(mid, ws);
            cases.push(case(
                format!("part {i} with {ws_name} inside"),
                join(&q),
                REFUSED,
            ));
        }
        for (bad_name, bad) in [
            ("!", "!"),
            ("*", "*"),
            ("é", "é"),
            ("%", "%"),
            ("NUL", "\0"),
        ] {
            let mut q = p.clone();
            let at = q[i].len() / 2;
            q[i].replace_range(at..at + 1, bad);
            cases.push(case(
                format!("part {i} with invalid character {bad_name}"),
                join(&q),
                REFUSED,
            ));
        }
        // A leading or trailing space inside the part (the header value is trimmed only at its
        // ends).
        let mut q = p.clone();
        q[i].insert(0, ' ');
        if i > 0 {
            cases.push(case(
                format!("part {i} with a leading space"),
                join(&q),
                REFUSED,
            ));
        }
    }
    // The standard alphabet's '+' and '/' for '-' and '_' (same bytes for a mixed decoder).
    let mut q = p.clone();
    q[1] = q[1].replace('-', "+");
    cases.push(case("payload with + for -", join(&q), REFUSED));
    let mut q = p.clone();
    q[1] = q[1].replace('_', "/");
    cases.push(case("payload with / for _", join(&q), REFUSED));
    let mut q = p.clone();
    q[1] = q[1].replace('-', "+").replace('_', "/");
    cases.push(case("payload in the standard alphabet", join(&q), REFUSED));
    // The whole token standard-base64 with padding, as a lenient decoder would also accept.
    {
        use base64::Engine;
        let std = base64::engine::general_purpose::STANDARD;
        let q: Vec<String> = p.iter().map(|x| std.encode(unb64(x))).collect();
        cases.push(case(
            "all parts standard base64 with padding",
            join(&q),
            REFUSED,
        ));
    }
    // Signature trailing bits on every algorithm whose signature length leaves unused bits.
    for a in ALL_ALGS {
        let t = good(a);
        let q = parts(&t);
        if let Some(f) = flip_unused_bit(&q[2]) {
            cases.push(case(
                format!("{a} signature with non-zero trailing bits"),
                format!("{}.{}.{f}", q[0], q[1]),
                REFUSED,
            ));
        }
    }
    assert_eq!(padded, 3, "every part should need padding");
    run(&jwt, &cases);
}

#[test]
fn malformed_structure_is_refused() {
    let jwt = default_auth();
    let claims = good_claims();
    let token = good("ES256");
    let p = parts(&token);
    let es = |h: &str, c: &str| sign_with("p256", Alg::ES256, h, c);
    let h = header("ES256", "test-p256");
    let jwe_header = b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
    let cases = vec![
        case("control: valid ES256", &token, OK),
        case("2 parts", format!("{}.{}", p[0], p[1]), REFUSED),
        case("1 part", &p[0], REFUSED),
        case("4 parts", format!("{token}.{}", p[2]), REFUSED),
        case("4 parts, empty last", format!("{token}."), REFUSED),
        case("leading dot", format!(".{token}"), REFUSED),
        case(
            "5 parts (JWE-like)",
            format!(
                "{jwe_header}.{}.{}.{}.{}",
                b64(b"k"),
                b64(b"iv"),
                p[1],
                b64(b"tag")
            ),
            REFUSED,
        ),
        case(
            "5 parts, JWS inside",
            format!("{token}.{}.{}", p[1], p[2]),
            REFUSED,
        ),
        case("only dots (2)", "..", REFUSED),
        case("only dots (3)", "...", REFUSED),
        case("only dots (4)", "....", REFUSED),
        case("one dot", ".", REFUSED),
        case("empty header", format!(".{}.{}", p[1], p[2]), REFUSED),
        case("empty payload", format!("{}..{}", p[0], p[2]), REFUSED),
        case("header not JSON", es("not json", &claims), REFUSED),
        case(
            "header JSON array",
            es(r#"["alg","ES256"]"#, &claims),
            REFUSED,
        ),
        case(
            "header JSON array of the header",
            es(&format!("[{h}]"), &claims),
            REFUSED,
        ),
        case("header JSON string", es(r#""ES256""#, &claims), REFUSED),
        case("header JSON null", es("null", &claims), REFUSED),
        case(
            "header with trailing garbage",
            es(&format!("{h}x"), &claims),
            REFUSED,
        ),
        case(
            "header with a second object",
            es(&format!("{h}{h}"), &claims),
            REFUSED,
        ),
        case("header truncated", es(&h[..h.len() - 1], &claims), REFUSED),
        case(
            "header not UTF-8",
            {
                let input = format!(
                    "{}.{}",
                    b64(b"{\"alg\":\"ES256\",\"x\":\"\xff\"}"),
                    b64(claims.as_bytes())
                );
                let sig = mint::sign_bytes(&key("p256"), Alg::ES256, input.as_bytes()).unwrap();
                format!("{input}.{}", b64(&sig))
            },
            REFUSED,
        ),
        case("claims JSON array", es(&h, &format!("[{claims}]")), REFUSED),
        case("claims JSON string", es(&h, r#""claims""#), REFUSED),
        case("claims JSON number", es(&h, "1"), REFUSED),
        case("claims JSON null", es(&h, "null"), REFUSED),
        case(
            "claims not JSON",
            es(&h, "iss=https://issuer.test"),
            REFUSED,
        ),
        case(
            "claims with trailing garbage",
            es(&h, &format!("{claims},")),
            REFUSED,
        ),
        case(
            "claims with two objects",
            es(&h, &format!("{claims}{claims}")),
            REFUSED,
        ),
        case("claims empty", es(&h, ""), REFUSED),
        case("garbage", "not-a-token", REFUSED),
        case("whitespace token", "a b", REFUSED),
    ];
    run(&jwt, &cases);
    // An empty token given straight to verify (no source would hand it over, but verify must not
    // trust that).
    for (name, t) in [("empty", ""), ("two dots", ".."), ("spaces", "   ")] {
        let found = FoundToken {
            token: t,
            source: 0,
        };
        let result = jwt.verify(found, NOW, &PanicVerifier, &mut TokenCache::new(4));
        assert!(
            matches!(result, Err(JwtFailure::Refused { expired: false, .. })),
            "{name}: {:?}",
            result.map(|_| ())
        );
    }
}

#[test]
fn duplicate_json_keys_are_refused() {
    let jwt = default_auth();
    let claims = good_claims();
    let es = |h: &str, c: &str| sign_with("p256", Alg::ES256, h, c);
    let h = header("ES256", "test-p256");
    // Claims with one member written twice; the later value is the good one so that a parser
    // that keeps the last value accepts the token.
    let dup_claim = |name: &str, first: &str| {
        let inner = &claims[1..];
        format!("{{\"{name}\":{first},{inner}")
    };
    let cases = vec![
        case("control", es(&h, &claims), OK),
        case(
            r#"header {"alg":"ES256","alg":"none"}"#,
            es(r#"{"alg":"ES256","alg":"none","kid":"test-p256"}"#, &claims),
            REFUSED,
        ),
        case(
            r#"header {"alg":"none","alg":"ES256"}"#,
            es(r#"{"alg":"none","alg":"ES256","kid":"test-p256"}"#, &claims),
            REFUSED,
        ),
        case(
            "header alg twice, same value",
            es(
                r#"{"alg":"ES256","alg":"ES256","kid":"test-p256"}"#,
                &claims,
            ),
            REFUSED,
        ),
        case(
            "header alg twice, escaped",
            es(
                r#"{"alg":"none","\u0061lg":"ES256","kid":"test-p256"}"#,
                &claims,
            ),
            REFUSED,
        ),
        case(
            "header kid twice",
            es(r#"{"alg":"ES256","kid":"nope","kid":"test-p256"}"#, &claims),
            REFUSED,
        ),
        case(
            "header with a nested duplicate",
            es(
                r#"{"alg":"ES256","kid":"test-p256","x":{"a":1,"a":2}}"#,
                &claims,
            ),
            REFUSED,
        ),
        case(
            "claims sub twice",
            es(&h, &dup_claim("sub", r#""admin""#)),
            REFUSED,
        ),
        case(
            "claims iss twice",
            es(&h, &dup_claim("iss", r#""https://evil.test""#)),
            REFUSED,
        ),
        case(
            "claims aud twice",
            es(&h, &dup_claim("aud", r#""other""#)),
            REFUSED,
        ),
        case("claims exp twice", es(&h, &dup_claim("exp", "1")), REFUSED),
        case(
            "claims exp twice, escaped",
            es(&h, &dup_claim("\\u0065xp", "1")),
            REFUSED,
        ),
        case(
            "claims nested duplicate",
            es(&h, &dup_claim("x", r#"{"role":"user","role":"admin"}"#)),
            REFUSED,
        ),
        case(
            "claims duplicate inside an array",
            es(&h, &dup_claim("x", r#"[{"a":1,"a":2}]"#)),
            REFUSED,
        ),
    ];
    run(&jwt, &cases);
}

#[test]
fn nested_tokens_and_critical_headers_are_refused() {
    let jwt = default_auth();
    let mut cases = vec![case(
        "cty application/json is fine",
        token_with_header(
            "ES256",
            r#"{"alg":"ES256","kid":"test-p256","cty":"application/json"}"#,
        ),
        OK,
    )];
    for cty in ["JWT", "jwt", "Jwt", "jWt"] {
        cases.push(case(
            format!("cty {cty}"),
            token_with_header(
                "ES256",
                &format!(r#"{{"alg":"ES256","kid":"test-p256","cty":"{cty}"}}"#),
            ),
            REFUSED,
        ));
    }
    for crit in [r#"["exp"]"#, r#"["b64"]"#, "[]", r#""exp""#, "null"] {
        cases.push(case(
            format!("crit {crit}"),
            token_with_header(
                "ES256",
                &format!(r#"{{"alg":"ES256","kid":"test-p256","crit":{crit},"exp":1}}"#),
            ),
            REFUSED,
        ));
    }
    // RFC 7797 unencoded payload: refused through crit.
    cases.push(case(
        "b64 false with crit",
        token_with_header(
            "ES256",
            r#"{"alg":"ES256","kid":"test-p256","b64":false,"crit":["b64"]}"#,
        ),
        REFUSED,
    ));
    run(&jwt, &cases);
}

// ---------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------

#[test]
fn claim_rules() {
    let jwt = default_auth();
    let t = |edit: &dyn Fn(&mut Map<String, Value>)| {
        token_with_claims("ES256", &claims_with(|c| edit(c)))
    };
    let raw = |text: &str| token_with_claims("ES256", text);
    let set = |name: &'static str, v: Value| {
        t(&move |c: &mut Map<String, Value>| {
            c.insert(name.into(), v.clone());
        })
    };
    let remove = |name: &'static str| {
        t(&move |c: &mut Map<String, Value>| {
            c.remove(name);
        })
    };
    // exp written as raw JSON text (numbers serde_json would not produce).
    let exp_raw = |exp: &str| {
        raw(&format!(
            r#"{{"iss":"{ISS}","aud":"api","sub":"alice","iat":{},"exp":{exp}}}"#,
            NOW - 10
        ))
    };
    let cases = vec![
        case("control", good("ES256"), OK),
        // iss
        case(
            "iss mismatch",
            set("iss", json!("https://evil.test")),
            REFUSED,
        ),
        case(
            "iss with a trailing slash",
            set("iss", json!("https://issuer.test/")),
            REFUSED,
        ),
        case(
            "iss in another case",
            set("iss", json!("https://ISSUER.test")),
            REFUSED,
        ),
        case("iss missing", remove("iss"), REFUSED),
        case("iss number", set("iss", json!(1)), REFUSED),
        case("iss null", set("iss", Value::Null), REFUSED),
        case("iss array", set("iss", json!([ISS])), REFUSED),
        // aud
        case("aud mismatch", set("aud", json!("other")), REFUSED),
        case("aud in another case", set("aud", json!("API")), REFUSED),
        case("aud missing", remove("aud"), REFUSED),
        case(
            "aud array with the right one",
            set("aud", json!(["other", "api"])),
            OK,
        ),
        case("aud array of one", set("aud", json!(["api"])), OK),
        case(
            "aud array without it",
            set("aud", json!(["other", "x"])),
            REFUSED,
        ),
        case("aud empty array", set("aud", json!([])), REFUSED),
        case(
            "aud array with a non-string",
            set("aud", json!(["api", 1])),
            REFUSED,
        ),
        case(
            "aud array with null",
            set("aud", json!(["api", null])),
            REFUSED,
        ),
        case("aud nested array", set("aud", json!([["api"]])), REFUSED),
        case("aud number", set("aud", json!(1)), REFUSED),
        case("aud object", set("aud", json!({"api": true})), REFUSED),
        case("aud null", set("aud", Value::Null), REFUSED),
        // exp
        case(
            "exp 61 s ago (beyond the 60 s skew)",
            set("exp", json!(NOW - 61)),
            EXPIRED,
        ),
        case(
            "exp 60 s ago (the skew exactly)",
            set("exp", json!(NOW - 60)),
            EXPIRED,
        ),
        case("exp a day ago", set("exp", json!(NOW - 86_400)), EXPIRED),
        case("exp 0", set("exp", json!(0)), EXPIRED),
        case(
            "exp 59 s ago (within skew)",
            set("exp", json!(NOW - 59)),
            OK,
        ),
        case(
            "exp 30 s ago (within skew)",
            set("exp", json!(NOW - 30)),
            OK,
        ),
        case("exp missing", remove("exp"), REFUSED),
        case("exp string", set("exp", json!("1900000000")), REFUSED),
        case("exp float", exp_raw("1900000000.5"), REFUSED),
        case("exp float with .0", exp_raw("1900000000.0"), REFUSED),
        case("exp exponent notation", exp_raw("1.9e9"), REFUSED),
        case("exp 2^63", exp_raw("9223372036854775808"), REFUSED),
        case("exp u64::MAX", exp_raw("18446744073709551615"), REFUSED),
        case("exp 2^64", exp_raw("18446744073709551616"), REFUSED),
        case("exp past year 9999", exp_raw("253402300800"), REFUSED),
        case("exp -1", exp_raw("-1"), REFUSED),
        case(
            "exp negative large",
            exp_raw("-9223372036854775808"),
            REFUSED,
        ),
        case(
            "exp 1e400 (not valid JSON for us)",
            exp_raw("1e400"),
            REFUSED,
        ),
        case("exp NaN", exp_raw("NaN"), REFUSED),
        case("exp null", set("exp", Value::Null), REFUSED),
        case("exp true", set("exp", json!(true)), REFUSED),
        case("exp array", set("exp", json!([NOW + 600])), REFUSED),
        // nbf
        case(
            "nbf 61 s ahead (beyond skew)",
            set("nbf", json!(NOW + 61)),
            REFUSED,
        ),
        case("nbf an hour ahead", set("nbf", json!(NOW + 3600)), REFUSED),
        case(
            "nbf 60 s ahead (within skew)",
            set("nbf", json!(NOW + 60)),
            OK,
        ),
        case("nbf now", set("nbf", json!(NOW)), OK),
        case("nbf string", set("nbf", json!("0")), REFUSED),
        case("nbf negative", set("nbf", json!(-1)), REFUSED),
        case(
            "nbf beyond year 9999",
            set("nbf", json!(253_402_300_800u64)),
            REFUSED,
        ),
        // iat
        case("iat 61 s ahead", set("iat", json!(NOW + 61)), REFUSED),
        case("iat an hour ahead", set("iat", json!(NOW + 3600)), REFUSED),
        case(
            "iat 60 s ahead (within skew)",
            set("iat", json!(NOW + 60)),
            OK,
        ),
        case("iat missing", remove("iat"), OK),
        case("iat string", set("iat", json!("1")), REFUSED),
        case("iat negative", set("iat", json!(-1)), REFUSED),
        case("iat float", set("iat", json!(1.5)), REFUSED),
        // sub
        case("sub number", set("sub", json!(42)), REFUSED),
        case("sub null", set("sub", Value::Null), REFUSED),
        case("sub array", set("sub", json!(["alice"])), REFUSED),
        case("sub object", set("sub", json!({"id": "alice"})), REFUSED),
        case("sub missing", remove("sub"), OK),
    ];
    run(&jwt, &cases);

    // require_expiration: false lets a token without exp through, but not a bad exp.
    let lax = compile(vec![provider(json!({"require_expiration": false}))]);
    run(
        &lax,
        &[
            case("exp missing, require_expiration false", remove("exp"), OK),
            case(
                "exp past, require_expiration false",
                set("exp", json!(NOW - 61)),
                EXPIRED,
            ),
            case(
                "exp string, require_expiration false",
                set("exp", json!("1")),
                REFUSED,
            ),
        ],
    );

    // max_lifetime_seconds: 3600.
    let bounded = compile(vec![provider(json!({"max_lifetime_seconds": 3600}))]);
    let life = |iat: Option<u64>, exp: Option<u64>| {
        t(&move |c: &mut Map<String, Value>| {
            c.remove("iat");
            c.remove("exp");
            if let Some(iat) = iat {
                c.insert("iat".into(), json!(iat));
            }
            if let Some(exp) = exp {
                c.insert("exp".into(), json!(exp));
            }
        })
    };
    run(
        &bounded,
        &[
            case(
                "lifetime 3600 (iat to exp)",
                life(Some(NOW - 10), Some(NOW + 3590)),
                OK,
            ),
            case(
                "lifetime 3601",
                life(Some(NOW - 10), Some(NOW + 3591)),
                REFUSED,
            ),
            case(
                "lifetime of a year",
                life(Some(NOW - 10), Some(NOW + 31_536_000)),
                REFUSED,
            ),
            case(
                "iat long ago, exp soon",
                life(Some(0), Some(NOW + 10)),
                REFUSED,
            ),
            case(
                "no iat, exp within the bound of now",
                life(None, Some(NOW + 3000)),
                OK,
            ),
            case(
                "no iat, exp beyond the bound of now",
                life(None, Some(NOW + 4000)),
                REFUSED,
            ),
            case("no exp", life(Some(NOW - 10), None), REFUSED),
        ],
    );

    // A longer clock skew is honoured, a shorter one too.
    let strict = compile(vec![provider(json!({"clock_skew_seconds": 0}))]);
    run(
        &strict,
        &[
            case("skew 0: exp 1 s ago", set("exp", json!(NOW - 1)), EXPIRED),
            case("skew 0: exp now", set("exp", json!(NOW)), EXPIRED),
            case("skew 0: exp in 1 s", set("exp", json!(NOW + 1)), OK),
            case("skew 0: nbf in 1 s", set("nbf", json!(NOW + 1)), REFUSED),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------------------------

fn token_of_length(target: usize) -> String {
    // ES256: the signature is 86 characters. A header member of 0 to 3 characters and a padding
    // claim reach every length.
    for extra in 0..4 {
        let h = format!(
            r#"{{"alg":"ES256","typ":"JWT","kid":"test-p256","x":"{}"}}"#,
            "x".repeat(extra)
        );
        for pad in 0..target {
            let claims = claims_with(|c| {
                c.insert("pad".into(), json!("p".repeat(pad)));
            });
            let len = b64(h.as_bytes()).len() + 1 + b64(claims.as_bytes()).len() + 1 + 86;
            if len == target {
                let token = sign_with("p256", Alg::ES256, &h, &claims);
                assert_eq!(token.len(), target);
                return token;
            }
            if len > target {
                break;
            }
        }
    }
    panic!("cannot build a token of {target} bytes")
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let jwt = default_auth();
    let big = token_with_claims(
        "ES256",
        &claims_with(|c| {
            c.insert("pad".into(), json!("x".repeat(9000)));
        }),
    );
    assert!(big.len() > 8192);
    let medium = token_with_claims(
        "ES256",
        &claims_with(|c| {
            c.insert("pad".into(), json!("x".repeat(5000)));
        }),
    );
    assert!((6500..=8192).contains(&medium.len()), "{}", medium.len());
    let exactly = token_of_length(8192);
    let one_more = token_of_length(8193);
    assert_eq!(exactly.len(), 8192);
    assert_eq!(one_more.len(), 8193);
    run(
        &jwt,
        &[
            case("9000-byte padding claim, valid signature", &big, REFUSED),
            case("~7000-byte valid token", &medium, OK),
            case("8192-byte valid token", &exactly, OK),
            case("8193-byte valid token", &one_more, REFUSED),
        ],
    );
    // Refused without a signature operation (a verifier that panics is never reached), and
    // before parsing: a huge string of garbage is refused the same way.
    let garbage = "x".repeat(1 << 20);
    for t in [big.as_str(), one_more.as_str(), garbage.as_str()] {
        let found = FoundToken {
            token: t,
            source: 0,
        };
        let result = jwt.verify(found, NOW, &PanicVerifier, &mut TokenCache::new(4));
        assert!(matches!(
            result,
            Err(JwtFailure::Refused { expired: false, .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Token sources
// ---------------------------------------------------------------------------------------------

#[test]
fn token_sources() {
    let jwt = default_auth();
    let t = good("ES256");
    let bearer = format!("Bearer {t}");
    let cases = vec![
        case_headers("Bearer", &[("authorization", &bearer)], OK),
        case_headers(
            "bearer (lower case)",
            &[("authorization", &format!("bearer {t}"))],
            OK,
        ),
        case_headers("BEARER", &[("authorization", &format!("BEARER {t}"))], OK),
        case_headers("bEaReR", &[("authorization", &format!("bEaReR {t}"))], OK),
        case_headers(
            "Bearer, extra spaces",
            &[("authorization", &format!("Bearer   {t}  "))],
            OK,
        ),
        case_headers(
            "Basic credentials",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            MISSING,
        ),
        case_headers(
            "Basic with a JWT",
            &[("authorization", &format!("Basic {t}"))],
            MISSING,
        ),
        case_headers("token without scheme", &[("authorization", &t)], MISSING),
        case_headers(
            "Bearer without space",
            &[("authorization", &format!("Bearer{t}"))],
            MISSING,
        ),
        case_headers(
            "Bearer with a tab",
            &[("authorization", &format!("Bearer\t{t}"))],
            MISSING,
        ),
        case_headers(
            "Bearer and nothing",
            &[("authorization", "Bearer ")],
            REFUSED,
        ),
        case_headers(
            "Bearer and spaces",
            &[("authorization", "Bearer     ")],
            REFUSED,
        ),
        case_headers(
            "two Authorization headers, both valid",
            &[("authorization", &bearer), ("authorization", &bearer)],
            REFUSED,
        ),
        case_headers(
            "two Authorization headers, Basic then Bearer",
            &[
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("authorization", &bearer),
            ],
            REFUSED,
        ),
        case_headers(
            "two Authorization headers, Bearer then empty",
            &[("authorization", &bearer), ("authorization", "")],
            REFUSED,
        ),
        case_headers("no headers", &[], MISSING),
        case_headers(
            "token in a query string",
            &[
                (":path", &format!("/api?access_token={t}&token={t}&jwt={t}")),
                (":method", "GET"),
            ],
            MISSING,
        ),
        case_headers(
            "token in the path",
            &[(":path", &format!("/api/{t}"))],
            MISSING,
        ),
        case_headers(
            "token in a cookie (not configured)",
            &[(
                "cookie",
                &format!("session={t}; token={t}; access_token={t}"),
            )],
            MISSING,
        ),
        case_headers(
            "token in x-access-token (not configured)",
            &[("x-access-token", &t)],
            MISSING,
        ),
        case_headers(
            "token in proxy-authorization",
            &[("proxy-authorization", &bearer)],
            MISSING,
        ),
    ];
    run(&jwt, &cases);

    // A cookie source and a custom header source.
    let cookie_and_header = compile(vec![provider(json!({
        "from": [{"header": "X-Token"}, {"cookie": "session"}],
    }))]);
    let cases = vec![
        case_headers("cookie", &[("cookie", &format!("session={t}"))], OK),
        case_headers(
            "cookie among others",
            &[("cookie", &format!("a=1; session={t}; b=2"))],
            OK,
        ),
        case_headers(
            "cookie, quoted",
            &[("cookie", &format!("session=\"{t}\""))],
            OK,
        ),
        case_headers(
            "cookie in a second cookie header",
            &[("cookie", "a=1"), ("cookie", &format!("session={t}"))],
            OK,
        ),
        case_headers(
            "cookie with a similar name",
            &[("cookie", &format!("xsession={t}; session_x={t}"))],
            MISSING,
        ),
        case_headers("cookie empty", &[("cookie", "session=")], REFUSED),
        case_headers(
            "cookie repeated (which one would the backend read?)",
            &[("cookie", &format!("session={t}; session={t}"))],
            REFUSED,
        ),
        case_headers(
            "cookie repeated across cookie headers",
            &[
                ("cookie", &format!("session={t}")),
                ("cookie", "session=other"),
            ],
            REFUSED,
        ),
        case_headers(
            "cookie tampered",
            &[("cookie", &format!("session={t}x"))],
            REFUSED,
        ),
        case_headers("custom header, no prefix", &[("x-token", &t)], OK),
        case_headers(
            "custom header twice",
            &[("x-token", &t), ("x-token", &t)],
            REFUSED,
        ),
        case_headers("custom header empty", &[("x-token", "")], REFUSED),
        case_headers(
            "custom header wins over the cookie",
            &[("x-token", "garbage"), ("cookie", &format!("session={t}"))],
            REFUSED,
        ),
        case_headers(
            "Authorization not configured here",
            &[("authorization", &bearer)],
            MISSING,
        ),
        case_headers(
            "query string",
            &[(":path", &format!("/?session={t}&x-token={t}"))],
            MISSING,
        ),
    ];
    run(&cookie_and_header, &cases);
}

// ---------------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------------

fn verify_at(
    jwt: &JwtAuth,
    token: &str,
    now: u64,
    verifier: &dyn SignatureVerifier,
    cache: &mut TokenCache,
) -> Result<Rc<api_guard_core::authn::jwt::VerifiedToken>, JwtFailure> {
    let head = bearer_head(token);
    let found = jwt.find_token(&head)?.ok_or(JwtFailure::Missing)?;
    jwt.verify(found, now, verifier, cache)
}

#[test]
fn a_verified_token_is_served_from_the_cache() {
    let jwt = default_auth();
    let mut cache = TokenCache::new(16);
    for a in ALL_ALGS {
        let token = good(a);
        let first = verify_at(&jwt, &token, NOW, &RustVerifier, &mut cache).unwrap();
        // The second time the verifier panics if it is used.
        let second = verify_at(&jwt, &token, NOW + 1, &PanicVerifier, &mut cache).unwrap();
        assert!(Rc::ptr_eq(&first, &second), "{a}: not the cached entry");
        assert_eq!(second.subject.as_deref(), Some("alice"));
        cache = TokenCache::new(16);
    }
    // A refused token is not cached: the verifier is asked again.
    let mut cache = TokenCache::new(16);
    let token = good("ES256");
    assert!(verify_at(&jwt, &token, NOW, &RefuseVerifier, &mut cache).is_err());
    assert!(cache.is_empty());
    assert!(verify_at(&jwt, &token, NOW, &RustVerifier, &mut cache).is_ok());
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_cached_token_expires() {
    let jwt = default_auth();
    let mut cache = TokenCache::new(16);
    let token = token_with_claims(
        "ES256",
        &claims_with(|c| {
            c.insert("exp".into(), json!(NOW + 100));
            c.insert("nbf".into(), json!(NOW - 5));
        }),
    );
    verify_at(&jwt, &token, NOW, &RustVerifier, &mut cache).unwrap();
    // Within exp + skew: still served from the cache.
    verify_at(&jwt, &token, NOW + 159, &PanicVerifier, &mut cache).unwrap();
    // Past exp + skew: refused as expired on the cache hit, and evicted.
    let refused = verify_at(&jwt, &token, NOW + 160, &PanicVerifier, &mut cache);
    assert!(
        matches!(refused, Err(JwtFailure::Refused { expired: true, .. })),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(cache.is_empty());
    // And the full path refuses it too.
    let refused = verify_at(&jwt, &token, NOW + 160, &RustVerifier, &mut cache);
    assert!(matches!(
        refused,
        Err(JwtFailure::Refused { expired: true, .. })
    ));

    // nbf is checked on a hit as well (a clock that moved back).
    let mut cache = TokenCache::new(16);
    verify_at(&jwt, &token, NOW, &RustVerifier, &mut cache).unwrap();
    let early = verify_at(&jwt, &token, NOW - 100, &PanicVerifier, &mut cache);
    assert!(matches!(
        early,
        Err(JwtFailure::Refused { expired: false, .. })
    ));
}

#[test]
fn the_cache_never_serves_a_different_token() {
    let jwt = default_auth();
    for a in ["RS256", "ES256", "EdDSA", "HS256"] {
        let mut cache = TokenCache::new(16);
        let token = good(a);
        verify_at(&jwt, &token, NOW, &RustVerifier, &mut cache).unwrap();
        // The cached token itself is served without the verifier (RefuseVerifier would refuse).
        verify_at(&jwt, &token, NOW, &RefuseVerifier, &mut cache).unwrap();
        let p = parts(&token);
        let sig = signature_of(&token);
        let mut flipped = sig.clone();
        flipped[0] ^= 0x80;
        let other_payload = claims_with(|c| {
            c.insert("sub".into(), json!("admin"));
        });
        let variants = [
            ("signature changed", with_signature(&token, &flipped)),
            (
                "signature one byte shorter",
                with_signature(&token, &sig[..sig.len() - 1]),
            ),
            (
                "last character dropped",
                token[..token.len() - 1].to_owned(),
            ),
            ("a character appended", format!("{token}A")),
            (
                "payload changed",
                format!("{}.{}.{}", p[0], b64(other_payload.as_bytes()), p[2]),
            ),
            ("prefix only", format!("{}.{}.", p[0], p[1])),
        ];
        for (name, variant) in variants {
            // With a verifier that refuses everything, only a cache hit could accept it.
            let result = verify_at(&jwt, &variant, NOW, &RefuseVerifier, &mut cache);
            assert!(result.is_err(), "{a} {name}: served from the cache");
            let result = verify_at(&jwt, &variant, NOW, &RustVerifier, &mut cache);
            assert!(result.is_err(), "{a} {name}: accepted");
        }
        // The original is still cached.
        verify_at(&jwt, &token, NOW, &PanicVerifier, &mut cache).unwrap();
    }
    // A one-slot cache: a second token replaces the first, which is then verified again.
    let mut cache = TokenCache::new(1);
    let t1 = good("ES256");
    let t2 = good("EdDSA");
    verify_at(&jwt, &t1, NOW, &RustVerifier, &mut cache).unwrap();
    verify_at(&jwt, &t2, NOW, &RustVerifier, &mut cache).unwrap();
    assert_eq!(cache.len(), 1);
    assert!(verify_at(&jwt, &t1, NOW, &RefuseVerifier, &mut cache).is_err());
    verify_at(&jwt, &t2, NOW, &RefuseVerifier, &mut cache).unwrap();
}

/// Two providers: issuer A reads tokens from the Authorization header only, issuer B from the
/// `session` cookie only. A token of A presented in the cookie is refused ("no provider for this
/// issuer and token location"), and must stay refused after the same token was verified from
/// the header and cached (a cache hit is bound to its provider's token sources).
#[test]
fn a_cache_hit_respects_the_token_location() {
    let jwt = compile(vec![
        provider(json!({"name": "a"})),
        provider(json!({
            "name": "b",
            "issuer": "https://other.test",
            "from": [{"cookie": "session"}],
        })),
    ]);
    let token = good("ES256");
    let in_cookie = head(&[("cookie", &format!("session={token}"))]);
    let in_header = bearer_head(&token);
    // Without the cache: refused in the cookie.
    let (fresh, reason) = outcome_at(
        &jwt,
        &in_cookie,
        NOW,
        &RustVerifier,
        &mut TokenCache::new(16),
    );
    assert_eq!(fresh, REFUSED, "{reason}");
    // Verified from the header, then presented in the cookie: must still be refused.
    let mut cache = TokenCache::new(16);
    let (first, reason) = outcome_at(&jwt, &in_header, NOW, &RustVerifier, &mut cache);
    assert_eq!(first, OK, "{reason}");
    let (second, reason) = outcome_at(&jwt, &in_cookie, NOW, &RustVerifier, &mut cache);
    assert_eq!(
        second, REFUSED,
        "cached token accepted from a source its provider does not read ({reason})"
    );
}

// ---------------------------------------------------------------------------------------------
// claims_to_headers
// ---------------------------------------------------------------------------------------------

#[test]
fn claims_to_headers_rendering() {
    let jwt = compile(vec![provider(json!({
        "claims_to_headers": [
            {"claim": "sub", "header": "x-user"},
            {"claim": "roles", "header": "X-Roles"},
            {"claim": "n", "header": "x-n"},
            {"claim": "obj", "header": "x-obj"},
            {"claim": "absent", "header": "x-absent"},
        ],
    }))]);
    assert_eq!(
        jwt.identity_headers,
        vec!["x-user", "x-roles", "x-n", "x-obj", "x-absent"]
    );
    let token = token_with_claims(
        "ES256",
        &claims_with(|c| {
            c.insert("roles".into(), json!(["read", "write", 3, true]));
            c.insert("n".into(), json!(42));
            c.insert("obj".into(), json!({"a": 1}));
        }),
    );
    let verified = verify_at(&jwt, &token, NOW, &RustVerifier, &mut TokenCache::new(4)).unwrap();
    assert_eq!(
        verified.upstream_headers,
        vec![
            ("x-user".to_owned(), "alice".to_owned()),
            ("x-roles".to_owned(), "read,write,3,true".to_owned()),
            ("x-n".to_owned(), "42".to_owned()),
            ("x-obj".to_owned(), r#"{"a":1}"#.to_owned()),
        ]
    );
    let with = |name: &'static str, v: Value| {
        token_with_claims(
            "ES256",
            &claims_with(move |c| {
                c.insert(name.into(), v);
            }),
        )
    };
    let cases = vec![
        case("control", &token, OK),
        case("tab is allowed", with("roles", json!(["a\tb"])), OK),
        case("UTF-8 is allowed", with("roles", json!("Zoë")), OK),
        case("4096 bytes", with("roles", json!("r".repeat(4096))), OK),
        case(
            "4097 bytes",
            with("roles", json!("r".repeat(4097))),
            REFUSED,
        ),
        case(
            "array joined beyond 4096 bytes",
            with("roles", json!(["r".repeat(2048), "r".repeat(2048)])),
            REFUSED,
        ),
        case(
            "sub with a newline",
            with("sub", json!("alice\nx-admin: true")),
            REFUSED,
        ),
        case(
            "sub with CR LF",
            with("sub", json!("alice\r\nx-admin: true")),
            REFUSED,
        ),
        case(
            "sub with a bare CR",
            with("sub", json!("alice\rx")),
            REFUSED,
        ),
        case("sub with NUL", with("sub", json!("alice\u{0}")), REFUSED),
        case("sub with DEL", with("sub", json!("alice\u{7f}")), REFUSED),
        case(
            "sub with ESC",
            with("sub", json!("alice\u{1b}[31m")),
            REFUSED,
        ),
        case(
            "role with a newline",
            with("roles", json!(["a", "b\nc"])),
            REFUSED,
        ),
        case(
            "a newline in an object claim is escaped by JSON",
            with("obj", json!({"a": "x\ny"})),
            OK,
        ),
        case(
            "a newline in an unmapped claim does not matter",
            with("other", json!("x\ny")),
            OK,
        ),
    ];
    run(&jwt, &cases);
}

// ---------------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------------

fn assert_error_at(errors: &[ConfigError], path: &str, what: &str) {
    assert!(
        errors.iter().any(|e| e.path == path),
        "{what}: no error at {path}; errors: {errors:#?}"
    );
}

#[test]
fn configuration_errors_name_the_offending_path() {
    let keys_at = "jwt.providers[0].jwks.inline.keys";
    let rsa = public("rsa2048");
    let n = unb64(rsa["n"].as_str().unwrap());
    let with_key = |k: Value| provider(json!({"jwks": {"inline": {"keys": [k]}}}));
    let edit = |base: &Value, name: &str, v: Value| {
        let mut k = base.clone();
        k[name] = v;
        k
    };
    let p256 = public("p256");
    let mut y = unb64(p256["y"].as_str().unwrap());
    y[31] ^= 1;

    let table: Vec<(&str, Vec<Value>, String)> = vec![
        (
            "algorithms none",
            vec![provider(json!({"algorithms": ["none"]}))],
            "jwt.providers[0].algorithms[0]".into(),
        ),
        (
            "algorithms None (second)",
            vec![provider(json!({"algorithms": ["RS256", "None"]}))],
            "jwt.providers[0].algorithms[1]".into(),
        ),
        (
            "algorithms NONE",
            vec![provider(json!({"algorithms": ["NONE"]}))],
            "jwt.providers[0].algorithms[0]".into(),
        ),
        (
            "algorithms unknown",
            vec![provider(
                json!({"algorithms": ["RS256", "ES256", "HS1024"]}),
            )],
            "jwt.providers[0].algorithms[2]".into(),
        ),
        (
            "algorithms empty",
            vec![provider(json!({"algorithms": []}))],
            "jwt.providers[0].algorithms".into(),
        ),
        (
            "audiences missing",
            vec![provider(json!({"audiences": null}))],
            "jwt.providers[0].audiences".into(),
        ),
        (
            "audiences empty",
            vec![provider(json!({"audiences": []}))],
            "jwt.providers[0].audiences".into(),
        ),
        (
            "audience empty string",
            vec![provider(json!({"audiences": ["api", ""]}))],
            "jwt.providers[0].audiences[1]".into(),
        ),
        (
            "issuer empty",
            vec![provider(json!({"issuer": ""}))],
            "jwt.providers[0].issuer".into(),
        ),
        (
            "name empty",
            vec![provider(json!({"name": ""}))],
            "jwt.providers[0].name".into(),
        ),
        (
            "duplicate provider name",
            vec![
                provider(json!({})),
                provider(json!({"issuer": "https://b.test"})),
            ],
            "jwt.providers[1].name".into(),
        ),
        ("no providers", vec![], "jwt.providers".into()),
        (
            "RSA 1024 bits",
            vec![with_key(edit(&rsa, "n", json!(b64(&n[..128]))))],
            format!("{keys_at}[0].n"),
        ),
        (
            "RSA 1 byte modulus",
            vec![with_key(edit(&rsa, "n", json!("AQ")))],
            format!("{keys_at}[0].n"),
        ),
        (
            "RSA e = 1",
            vec![with_key(edit(&rsa, "e", json!("AQ")))],
            format!("{keys_at}[0]"),
        ),
        (
            "RSA private d",
            vec![with_key(key("rsa2048"))],
            format!("{keys_at}[0].d"),
        ),
        (
            "RSA private p only",
            vec![with_key(edit(&rsa, "p", key("rsa2048")["p"].clone()))],
            format!("{keys_at}[0].p"),
        ),
        (
            "EC private d",
            vec![with_key(key("p256"))],
            format!("{keys_at}[0].d"),
        ),
        (
            "OKP private d",
            vec![with_key(key("ed25519"))],
            format!("{keys_at}[0].d"),
        ),
        (
            "private key second in the JWKS",
            vec![provider(
                json!({"jwks": {"inline": {"keys": [public("p256"), key("p384")]}}}),
            )],
            format!("{keys_at}[1].d"),
        ),
        (
            "private key in the second provider",
            vec![
                provider(json!({})),
                provider(
                    json!({"name": "b", "jwks": {"inline": {"keys": [public("p256"), key("ed25519")]}}}),
                ),
            ],
            "jwt.providers[1].jwks.inline.keys[1].d".into(),
        ),
        (
            "EC point not on the curve",
            vec![with_key(edit(&p256, "y", json!(b64(&y))))],
            format!("{keys_at}[0]"),
        ),
        (
            "EC coordinates too short",
            vec![with_key(edit(&p256, "x", json!(b64(&[1u8; 31]))))],
            format!("{keys_at}[0]"),
        ),
        (
            "EC unknown curve",
            vec![with_key(edit(&p256, "crv", json!("P-521")))],
            format!("{keys_at}[0].crv"),
        ),
        (
            "EC key with alg RS256",
            vec![with_key(edit(&p256, "alg", json!("RS256")))],
            format!("{keys_at}[0].alg"),
        ),
        (
            "P-256 key with alg ES384",
            vec![with_key(edit(&p256, "alg", json!("ES384")))],
            format!("{keys_at}[0].alg"),
        ),
        (
            "RSA key with alg HS256",
            vec![with_key(edit(&rsa, "alg", json!("HS256")))],
            format!("{keys_at}[0].alg"),
        ),
        (
            "oct key with alg ES256",
            vec![with_key(edit(&public("hs512"), "alg", json!("ES256")))],
            format!("{keys_at}[0].alg"),
        ),
        (
            "JWK alg none",
            vec![with_key(edit(&rsa, "alg", json!("none")))],
            format!("{keys_at}[0].alg"),
        ),
        (
            "JWK use enc",
            vec![with_key(edit(&rsa, "use", json!("enc")))],
            format!("{keys_at}[0].use"),
        ),
        (
            "oct secret of 31 bytes",
            vec![provider(
                json!({"algorithms": ["HS256"], "jwks": {"inline": {"keys": [hmac_jwk(&[1u8; 31])]}}}),
            )],
            format!("{keys_at}[0].k"),
        ),
        (
            "unknown kty",
            vec![with_key(json!({"kty": "DSA", "y": "AQ"}))],
            format!("{keys_at}[0].kty"),
        ),
        (
            "duplicate kid",
            vec![provider(
                json!({"jwks": {"inline": {"keys": [public("p256"), edit(&public("p256-other"), "kid", json!("test-p256"))]}}}),
            )],
            format!("{keys_at}[1]"),
        ),
        (
            "n not canonical base64url",
            vec![with_key(edit(
                &rsa,
                "n",
                json!(format!("{}=", rsa["n"].as_str().unwrap())),
            ))],
            format!("{keys_at}[0].n"),
        ),
        (
            "remote JWKS",
            vec![provider(
                json!({"jwks": {"remote": {"uri": "https://issuer.test/jwks"}}}),
            )],
            "jwt.providers[0].jwks.remote".into(),
        ),
        (
            "HMAC key only, default algorithms",
            vec![provider(
                json!({"algorithms": null, "jwks": {"inline": {"keys": [public("hs512")]}}}),
            )],
            "jwt.providers[0].jwks".into(),
        ),
        (
            "claim into the host header",
            vec![provider(
                json!({"claims_to_headers": [{"claim": "sub", "header": "x-user"}, {"claim": "sub", "header": "Host"}]}),
            )],
            "jwt.providers[0].claims_to_headers[1].header".into(),
        ),
        (
            "from empty",
            vec![provider(json!({"from": []}))],
            "jwt.providers[0].from".into(),
        ),
        (
            "from with prefix on a cookie",
            vec![provider(
                json!({"from": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "s", "prefix": "x"}]}),
            )],
            "jwt.providers[0].from[1].prefix".into(),
        ),
        (
            "from with neither",
            vec![provider(json!({"from": [{"prefix": "Bearer "}]}))],
            "jwt.providers[0].from[0]".into(),
        ),
        (
            "clock skew too large",
            vec![provider(json!({"clock_skew_seconds": 601}))],
            "jwt.providers[0].clock_skew_seconds".into(),
        ),
        (
            "max lifetime 0",
            vec![provider(json!({"max_lifetime_seconds": 0}))],
            "jwt.providers[0].max_lifetime_seconds".into(),
        ),
    ];
    let count = table.len();
    for (what, providers, path) in table {
        let errors = compile_errors(providers);
        assert_error_at(&errors, &path, what);
    }
    eprintln!("{count} configuration error cases passed");

    // A token source that is not a header or a cookie is an unknown field, refused by the
    // parser with its path (the URL is never a source).
    for (from, field) in [
        (json!({"query": "token"}), "query"),
        (
            json!({"header": "authorization", "query": "token"}),
            "query",
        ),
        (json!({"path": "/token"}), "path"),
    ] {
        let plugin = json!({
            "jwt": {"providers": [provider(json!({"from": [from]}))]},
            "routes": [{"name": "r", "match": {"path_prefix": "/"}, "auth": "jwt"}],
        });
        let errors = match api_guard_core::config::load(plugin.to_string().as_bytes()) {
            Ok(_) => panic!("{from} accepted"),
            Err(errors) => errors,
        };
        assert!(
            errors
                .iter()
                .any(|e| e.path.starts_with("jwt.providers[0].from[0]")
                    && e.message.contains("unknown field")
                    && e.message.contains(field)),
            "{from}: {errors:#?}"
        );
    }
    // Deserialising the jwt section alone refuses it too.
    let direct: Result<JwtConfig, _> = serde_json::from_value(json!({
        "providers": [provider(json!({"from": [{"query": "token"}]}))],
    }));
    assert!(direct
        .unwrap_err()
        .to_string()
        .contains("unknown field `query`"));
}

// ---------------------------------------------------------------------------------------------
// RFC 7518 section 3.2: HMAC key sizes
// ---------------------------------------------------------------------------------------------

/// RFC 7518 section 3.2: "A key of the same size as the hash output (for instance, 256 bits for
/// "HS256") or larger MUST be used". src/jwt/jwk.rs says "the per-algorithm size is checked at
/// verification", but nothing checks it: a 32-byte secret verifies HS384 and HS512 tokens.
#[test]
fn hmac_secret_shorter_than_the_hash_output_is_refused() {
    let secret = hmac_jwk(&[0x42; 32]);
    let providers = vec![provider(json!({
        "algorithms": ["HS256", "HS384", "HS512"],
        "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "short", "k": secret["k"]}]}},
    }))];
    let jwt = match try_compile(providers) {
        Ok(jwt) => jwt,
        // Refusing the key at configuration would be a fix too, if HS256 stays usable with it.
        Err(errors) => panic!("a 32-byte secret is enough for HS256: {errors:#?}"),
    };
    let t = |a: &str| sign_with_jwk(&secret, alg(a), &header(a, "short"), &good_claims());
    run(
        &jwt,
        &[
            case("HS256 with a 32-byte secret", t("HS256"), OK),
            case("HS384 with a 32-byte secret", t("HS384"), REFUSED),
            case("HS512 with a 32-byte secret", t("HS512"), REFUSED),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Defence in depth: the precise refusal of each parser check, and the length check
// ---------------------------------------------------------------------------------------------

/// Several protections overlap (an `alg` of "None" would also be an unknown algorithm; a kid of
/// 257 bytes would also match no key; a signature of the wrong length would also fail the
/// arithmetic). The outcome tables above cannot tell which one refused; these checks name it.
#[test]
fn each_parser_check_refuses_for_its_own_reason() {
    use api_guard_core::authn::jwt::token::{self, ParseRefusal as R};
    let claims = good_claims();
    let es = |h: &str| sign_with("p256", Alg::ES256, h, &claims);
    let token = good("ES256");
    let p = parts(&token);
    let long_kid = "k".repeat(257);
    let big = token_with_claims(
        "ES256",
        &claims_with(|c| {
            c.insert("pad".into(), json!("x".repeat(9000)));
        }),
    );
    let cases: Vec<(&str, String, R)> = vec![
        ("alg none", es(r#"{"alg":"none"}"#), R::AlgNone),
        ("alg None", es(r#"{"alg":"None"}"#), R::AlgNone),
        ("alg NONE", es(r#"{"alg":"NONE"}"#), R::AlgNone),
        ("alg nOnE", es(r#"{"alg":"nOnE"}"#), R::AlgNone),
        (
            "alg none, empty signature",
            format!("{}.{}.", b64(br#"{"alg":"none"}"#), p[1]),
            R::AlgNone,
        ),
        ("alg missing", es(r#"{"kid":"test-p256"}"#), R::UnknownAlg),
        ("alg HS1024", es(r#"{"alg":"HS1024"}"#), R::UnknownAlg),
        ("alg es256", es(r#"{"alg":"es256"}"#), R::UnknownAlg),
        ("alg number", es(r#"{"alg":256}"#), R::UnknownAlg),
        (
            "jwk",
            es(r#"{"alg":"ES256","jwk":{}}"#),
            R::KeyReferenceInHeader,
        ),
        (
            "jku",
            es(r#"{"alg":"ES256","jku":"https://a.example"}"#),
            R::KeyReferenceInHeader,
        ),
        (
            "x5u",
            es(r#"{"alg":"ES256","x5u":"https://a.example"}"#),
            R::KeyReferenceInHeader,
        ),
        (
            "x5c",
            es(r#"{"alg":"ES256","x5c":[]}"#),
            R::KeyReferenceInHeader,
        ),
        (
            "crit",
            es(r#"{"alg":"ES256","crit":["exp"]}"#),
            R::CriticalHeader,
        ),
        (
            "cty JWT",
            es(r#"{"alg":"ES256","cty":"JWT"}"#),
            R::NestedToken,
        ),
        (
            "cty jwt",
            es(r#"{"alg":"ES256","cty":"jwt"}"#),
            R::NestedToken,
        ),
        (
            "kid of 257 bytes",
            es(&format!(r#"{{"alg":"ES256","kid":"{long_kid}"}}"#)),
            R::BadKid,
        ),
        ("kid empty", es(r#"{"alg":"ES256","kid":""}"#), R::BadKid),
        ("kid number", es(r#"{"alg":"ES256","kid":1}"#), R::BadKid),
        ("2 parts", format!("{}.{}", p[0], p[1]), R::NotCompactJws),
        ("4 parts", format!("{token}.x"), R::NotCompactJws),
        ("padding", format!("{token}=="), R::BadBase64),
        (
            "+ in the signature",
            format!("{}.{}.+{}", p[0], p[1], &p[2][1..]),
            R::BadBase64,
        ),
        ("header not JSON", es("nope"), R::BadJson),
        ("header array", es("[]"), R::BadJson),
        (
            "duplicate alg",
            es(r#"{"alg":"none","alg":"ES256"}"#),
            R::BadJson,
        ),
        (
            "duplicate sub",
            sign_with(
                "p256",
                Alg::ES256,
                &header("ES256", "test-p256"),
                &format!("{{\"sub\":\"x\",{}", &claims[1..]),
            ),
            R::BadJson,
        ),
        (
            "claims array",
            sign_with("p256", Alg::ES256, &header("ES256", "test-p256"), "[]"),
            R::ClaimsNotObject,
        ),
        ("oversized", big, R::TooLarge),
    ];
    let mut wrong = Vec::new();
    for (name, t, expected) in &cases {
        match token::parse(t) {
            Ok(_) => wrong.push(format!("  {name}: parsed")),
            Err(got) if got != *expected => {
                wrong.push(format!("  {name}: {got:?}, expected {expected:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "wrong refusals:\n{}", wrong.join("\n"));
    // A kid of exactly 256 bytes is not refused by the parser (only by key lookup).
    let kid256 = es(&format!(r#"{{"alg":"ES256","kid":"{}"}}"#, "k".repeat(256)));
    assert_eq!(
        token::parse(&kid256)
            .unwrap()
            .header
            .kid
            .as_deref()
            .map(str::len),
        Some(256)
    );
    eprintln!("{} cases passed (parser reasons)", cases.len());
}

/// `check_signature_length` is the first thing both verifiers do; each crypto library would
/// also refuse a wrong length, so it is tested on its own here.
#[test]
fn signature_length_is_checked_before_any_arithmetic() {
    use api_guard_core::authn::jwt::jwk::parse_jwk;
    use api_guard_core::authn::jwt::verifier::check_signature_length;
    let mut checked = 0;
    for a in ALL_ALGS {
        let al = alg(a);
        let (file, _) = signer(al);
        let key = parse_jwk(&public(file), "k").unwrap();
        let expected = signature_of(&good(a)).len();
        assert!(
            check_signature_length(&key, al, &vec![0; expected]).is_ok(),
            "{a}"
        );
        for len in [0, 1, expected - 1, expected + 1, expected * 2, 8] {
            assert!(
                check_signature_length(&key, al, &vec![0; len]).is_err(),
                "{a}: length {len} accepted"
            );
            // And through both verifiers, with a verifier-level refusal.
            assert!(RustVerifier
                .verify(&key, al, b"x.y", &vec![0; len])
                .is_err());
            assert!(host_verifier()
                .verify(&key, al, b"x.y", &vec![0; len])
                .is_err());
            checked += 1;
        }
    }
    // RSA signatures are exactly the modulus length: 256 bytes for both 2048-bit keys.
    let rsa = parse_jwk(&public("rsa2048"), "k").unwrap();
    assert_eq!(rsa.rsa_modulus_len, 256);
    eprintln!("{checked} cases passed (signature lengths)");
}
