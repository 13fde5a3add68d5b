//! Signature verification behind one seam, with two implementations: pure Rust (RustCrypto),
//! which runs everywhere, and the host's `verify_signature` foreign function (Envoy's BoringSSL),
//! which is about ten times faster inside V8 for RSA PKCS#1 v1.5 and ECDSA. Both verify through
//! jwt-compact's [`Algorithm`] trait: its own `Rsa`, `Es256` and `Hs*` where they are as strict
//! as ours, our `Es384`, `Ed25519Strict` and `HostAlgorithm` where it has none or is lenient.

use super::alg::{Alg, HashAlg, KeyFamily};
use super::jwk::{Jwk, KeyMaterial};
use jwt_compact::alg::{Es256, Hs256, Hs256Key, Hs384, Hs384Key, Hs512, Hs512Key, Rsa};
use jwt_compact::{Algorithm, AlgorithmSignature};
use std::borrow::Cow;
use std::cell::Cell;

/// Why a signature did not verify (internal: goes to the log, never to the client).
pub type Refusal = &'static str;

pub trait SignatureVerifier {
    /// Verifies `signature` over `signing_input` with `key` under `alg`. The caller has already
    /// checked that `key.accepts(alg)`.
    fn verify(
        &self,
        key: &Jwk,
        alg: Alg,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), Refusal>;
    /// For the log line that says which crypto path is in use.
    fn name(&self) -> &'static str;
}

/// Length checks that hold whatever implementation verifies: a JWS signature of the wrong length
/// is refused before any big-number arithmetic is spent on it.
pub fn check_signature_length(key: &Jwk, alg: Alg, signature: &[u8]) -> Result<(), Refusal> {
    let expected = match alg.family() {
        KeyFamily::Rsa => key.rsa_modulus_len,
        KeyFamily::EcP256 => 64,
        KeyFamily::EcP384 => 96,
        KeyFamily::Ed25519 => 64,
        KeyFamily::Hmac => alg.hash().output_len(),
    };
    if signature.len() == expected {
        Ok(())
    } else {
        Err("signature has the wrong length")
    }
}

/// The JWS ECDSA signature is the raw `r || s`; the host wants ASN.1 DER. Parsing through the
/// curve's type also refuses r = 0, s = 0 and values not below the group order.
pub fn ecdsa_raw_to_der(family: KeyFamily, raw: &[u8]) -> Result<Vec<u8>, Refusal> {
    const BAD: Refusal = "malformed ECDSA signature";
    match family {
        KeyFamily::EcP256 => p256::ecdsa::Signature::from_slice(raw)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|_| BAD),
        KeyFamily::EcP384 => p384::ecdsa::Signature::from_slice(raw)
            .map(|s| s.to_der().as_bytes().to_vec())
            .map_err(|_| BAD),
        _ => Err(BAD),
    }
}

/// One jwt-compact [`Algorithm`] run on one signature: the bytes are parsed by the algorithm's
/// signature type (ECDSA's refuses r = 0, s = 0 and values not below the group order), then
/// verified. `malformed` is the refusal for bytes that are not a signature of that type.
///
/// Only the algorithm is jwt-compact's: the token was parsed and its claims checked by
/// `token` and `claims`, which are stricter than jwt-compact's `UntrustedToken` and
/// `Validator` (see `token.rs`), so the validator is not used.
fn run<A: Algorithm>(
    alg: &A,
    key: &A::VerifyingKey,
    input: &[u8],
    signature: &[u8],
    malformed: Refusal,
) -> Result<(), Refusal> {
    let signature = A::Signature::try_from_slice(signature).map_err(|_| malformed)?;
    if alg.verify_signature(&signature, key, input) {
        Ok(())
    } else {
        Err(BAD_SIGNATURE)
    }
}

/// Pure Rust: jwt-compact's `Rsa` (RS*, PS* with the salt as long as the hash, RFC 7518
/// section 3.5), `Es256` and `Hs*` (constant-time tag comparison); and two of ours where
/// jwt-compact has none or is more lenient: [`Es384`] and [`Ed25519Strict`].
pub struct RustVerifier;

const BAD_SIGNATURE: Refusal = "signature does not verify";
const MALFORMED_ECDSA: Refusal = "malformed ECDSA signature";

impl SignatureVerifier for RustVerifier {
    fn verify(&self, key: &Jwk, alg: Alg, input: &[u8], sig: &[u8]) -> Result<(), Refusal> {
        // First, and not left to jwt-compact: its `Hs*Signature::try_from_slice` panics on a
        // tag of the wrong length, and its `Rsa` takes a signature of any length.
        check_signature_length(key, alg, sig)?;
        match (&key.material, alg) {
            (KeyMaterial::Rsa(public), Alg::RS256) => {
                run(&Rsa::rs256(), public, input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Rsa(public), Alg::RS384) => {
                run(&Rsa::rs384(), public, input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Rsa(public), Alg::RS512) => {
                run(&Rsa::rs512(), public, input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Rsa(public), Alg::PS256) => {
                run(&Rsa::ps256(), public, input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Rsa(public), Alg::PS384) => {
                run(&Rsa::ps384(), public, input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Rsa(public), Alg::PS512) => {
                run(&Rsa::ps512(), public, input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::P256(vk), Alg::ES256) => run(&Es256, vk, input, sig, MALFORMED_ECDSA),
            (KeyMaterial::P384(vk), Alg::ES384) => run(&Es384, vk, input, sig, MALFORMED_ECDSA),
            (KeyMaterial::Ed25519(vk), Alg::EdDSA) => {
                run(&Ed25519Strict, vk, input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Hmac(secret), Alg::HS256) => {
                run(&Hs256, &Hs256Key::new(&secret.0), input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Hmac(secret), Alg::HS384) => {
                run(&Hs384, &Hs384Key::new(&secret.0), input, sig, BAD_SIGNATURE)
            }
            (KeyMaterial::Hmac(secret), Alg::HS512) => {
                run(&Hs512, &Hs512Key::new(&secret.0), input, sig, BAD_SIGNATURE)
            }
            _ => Err("key type does not fit the algorithm"),
        }
    }

    fn name(&self) -> &'static str {
        "rust"
    }
}

/// A signature type for the algorithms below: the bytes as they came (their own types parse
/// them at verification).
#[derive(Debug, Clone)]
pub struct RawSignature(Vec<u8>);

impl AlgorithmSignature for RawSignature {
    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Ok(RawSignature(slice.to_vec()))
    }
    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

/// The algorithms here only verify: a signing key of this type cannot exist.
#[derive(Debug)]
pub enum NoSigningKey {}

/// EdDSA (Ed25519) with `verify_strict`, which refuses non-canonical encodings and small-order
/// components. jwt-compact's `Ed25519` calls ed25519-dalek's `verify`, which accepts them: the
/// rule "verify_strict" would be lost, so this algorithm stays ours.
pub struct Ed25519Strict;

impl Algorithm for Ed25519Strict {
    type SigningKey = NoSigningKey;
    type VerifyingKey = ed25519_dalek::VerifyingKey;
    type Signature = ed25519_dalek::Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("EdDSA")
    }
    fn sign(&self, key: &NoSigningKey, _: &[u8]) -> Self::Signature {
        match *key {}
    }
    fn verify_signature(
        &self,
        signature: &Self::Signature,
        key: &Self::VerifyingKey,
        message: &[u8],
    ) -> bool {
        key.verify_strict(message, signature).is_ok()
    }
}

/// ES384 (ECDSA on P-384 with SHA-384): jwt-compact 0.8 has no ES384.
pub struct Es384;

/// `r || s` on P-384; parsing refuses r = 0, s = 0 and values not below the group order.
pub struct P384Signature(p384::ecdsa::Signature);

impl AlgorithmSignature for P384Signature {
    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        p384::ecdsa::Signature::from_slice(slice)
            .map(P384Signature)
            .map_err(|_| anyhow::anyhow!("malformed P-384 signature"))
    }
    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.0.to_bytes().to_vec())
    }
}

impl Algorithm for Es384 {
    type SigningKey = NoSigningKey;
    type VerifyingKey = p384::ecdsa::VerifyingKey;
    type Signature = P384Signature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("ES384")
    }
    fn sign(&self, key: &NoSigningKey, _: &[u8]) -> Self::Signature {
        match *key {}
    }
    fn verify_signature(
        &self,
        signature: &Self::Signature,
        key: &Self::VerifyingKey,
        message: &[u8],
    ) -> bool {
        use p384::ecdsa::signature::Verifier as _;
        key.verify(message, &signature.0).is_ok()
    }
}

/// The host refused a foreign-function call (missing function, bad argument, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCallFailed;

/// A call into the host's foreign-function table (`proxy_call_foreign_function`).
pub trait ForeignFunctions {
    fn call(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostCallFailed>;
}

/// Envoy's `verify_signature` foreign function as a jwt-compact [`Algorithm`]: the verifying
/// key is SPKI DER, the signature what the host wants (DER for ECDSA, raw for RSA PKCS#1 v1.5).
/// `verify_signature` can only answer yes or no; a failed host call is a no, and is also
/// recorded in `failed` so that [`HostVerifier`] can fall back to the Rust path.
pub struct HostAlgorithm<'h, F: ForeignFunctions> {
    host: &'h F,
    alg: Alg,
    failed: Cell<bool>,
}

impl<F: ForeignFunctions> Algorithm for HostAlgorithm<'_, F> {
    type SigningKey = NoSigningKey;
    type VerifyingKey = Vec<u8>;
    type Signature = RawSignature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.alg.name())
    }
    fn sign(&self, key: &NoSigningKey, _: &[u8]) -> Self::Signature {
        match *key {}
    }
    fn verify_signature(
        &self,
        signature: &Self::Signature,
        spki: &Self::VerifyingKey,
        message: &[u8],
    ) -> bool {
        match host_verify(self.host, self.alg.hash(), spki, &signature.0, message) {
            Ok(verified) => verified,
            Err(HostCallFailed) => {
                self.failed.set(true);
                false
            }
        }
    }
}

/// Envoy's `verify_signature` (BoringSSL) for RSA PKCS#1 v1.5 and ECDSA; everything else, and any
/// key without SPKI DER, goes to the Rust path.
pub struct HostVerifier<F: ForeignFunctions> {
    pub host: F,
}

impl<F: ForeignFunctions> HostVerifier<F> {
    /// Whether the host's function exists and answers correctly: one good and one tampered
    /// ES256 signature, made here with a fixed key. Run once at start.
    pub fn self_test(host: &F) -> bool {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::EncodePublicKey as _;
        let Ok(signing) = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]) else {
            return false;
        };
        let message = b"api-guard verify_signature self-test";
        let signature: p256::ecdsa::Signature = signing.sign(message);
        let Ok(spki) = signing.verifying_key().to_public_key_der() else {
            return false;
        };
        let der = signature.to_der();
        let good = host_verify(
            host,
            HashAlg::Sha256,
            spki.as_bytes(),
            der.as_bytes(),
            message,
        );
        let bad = host_verify(
            host,
            HashAlg::Sha256,
            spki.as_bytes(),
            der.as_bytes(),
            b"tampered",
        );
        good == Ok(true) && bad == Ok(false)
    }
}

impl<F: ForeignFunctions> SignatureVerifier for HostVerifier<F> {
    fn verify(&self, key: &Jwk, alg: Alg, input: &[u8], signature: &[u8]) -> Result<(), Refusal> {
        let Some(spki) = key.spki_der.as_ref() else {
            return RustVerifier.verify(key, alg, input, signature);
        };
        check_signature_length(key, alg, signature)?;
        let der_signature;
        let host_signature = match alg {
            Alg::RS256 | Alg::RS384 | Alg::RS512 => signature,
            Alg::ES256 | Alg::ES384 => {
                der_signature = ecdsa_raw_to_der(key.family, signature)?;
                &der_signature
            }
            _ => return RustVerifier.verify(key, alg, input, signature),
        };
        let host = HostAlgorithm {
            host: &self.host,
            alg,
            failed: Cell::new(false),
        };
        match run(&host, spki, input, host_signature, BAD_SIGNATURE) {
            // The host refused the call itself: fall back rather than fail every token.
            Err(_) if host.failed.get() => RustVerifier.verify(key, alg, input, signature),
            outcome => outcome,
        }
    }

    fn name(&self) -> &'static str {
        "host verify_signature (BoringSSL) with Rust fallback"
    }
}

fn host_verify<F: ForeignFunctions>(
    host: &F,
    hash: HashAlg,
    spki: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Result<bool, HostCallFailed> {
    let request = encode_verify_arguments(hash.host_name(), spki, signature, text);
    let reply = host.call("verify_signature", &request)?;
    decode_verify_result(&reply).ok_or(HostCallFailed)
}

// Envoy's VerifySignatureArguments protobuf (source/extensions/common/wasm/ext/verify_signature.proto):
//   1: string hash_function, 2: bytes public_key (DER), 3: bytes signature, 4: bytes text.
// Hand-encoded: four length-delimited fields are not worth a protobuf dependency in the wasm.
pub fn encode_verify_arguments(hash: &str, spki: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hash.len() + spki.len() + signature.len() + text.len() + 16);
    for (field, bytes) in [(1u8, hash.as_bytes()), (2, spki), (3, signature), (4, text)] {
        out.push((field << 3) | 2);
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// VerifySignatureResult: 1: bool result, 2: string error. An empty message means `false`.
pub fn decode_verify_result(bytes: &[u8]) -> Option<bool> {
    let mut pos = 0;
    let mut result = false;
    while pos < bytes.len() {
        let tag = get_varint(bytes, &mut pos)?;
        match tag & 7 {
            0 => {
                let value = get_varint(bytes, &mut pos)?;
                if tag >> 3 == 1 {
                    result = value != 0;
                }
            }
            2 => {
                let len = usize::try_from(get_varint(bytes, &mut pos)?).ok()?;
                pos = pos.checked_add(len).filter(|end| *end <= bytes.len())?;
            }
            _ => return None,
        }
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_round_trip() {
        let encoded = encode_verify_arguments("sha256", &[1, 2, 3], &[9; 200], b"abc");
        assert_eq!(
            &encoded[..8],
            &[0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6']
        );
        assert_eq!(&encoded[8..13], &[0x12, 3, 1, 2, 3]);
        // 200 needs a two-byte varint.
        assert_eq!(&encoded[13..16], &[0x1a, 0xc8, 0x01]);
        assert_eq!(decode_verify_result(&[0x08, 0x01]), Some(true));
        assert_eq!(decode_verify_result(&[]), Some(false));
        assert_eq!(
            decode_verify_result(&[0x12, 0x03, b'b', b'a', b'd']),
            Some(false)
        );
        assert_eq!(decode_verify_result(&[0x12, 0x09, b'x']), None);
    }

    /// A fake host that verifies with the Rust path, to test the HostVerifier plumbing natively.
    struct RustBackedHost;
    impl ForeignFunctions for RustBackedHost {
        fn call(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
            assert_eq!(function, "verify_signature");
            // Decode the four fields back.
            let mut pos = 0;
            let mut fields: Vec<&[u8]> = Vec::new();
            while pos < arguments.len() {
                let _tag = get_varint(arguments, &mut pos).ok_or(HostCallFailed)?;
                let len = get_varint(arguments, &mut pos).ok_or(HostCallFailed)? as usize;
                fields.push(&arguments[pos..pos + len]);
                pos += len;
            }
            use p256::ecdsa::signature::Verifier;
            use p256::pkcs8::DecodePublicKey;
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(fields[1])
                .map_err(|_| HostCallFailed)?;
            let sig = p256::ecdsa::Signature::from_der(fields[2]).map_err(|_| HostCallFailed)?;
            Ok(if vk.verify(fields[3], &sig).is_ok() {
                vec![0x08, 0x01]
            } else {
                vec![0x12, 0x01, b'x']
            })
        }
    }

    #[test]
    fn self_test_passes_with_a_working_host_and_fails_with_a_liar() {
        assert!(HostVerifier::self_test(&RustBackedHost));
        struct AlwaysYes;
        impl ForeignFunctions for AlwaysYes {
            fn call(&self, _: &str, _: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
                Ok(vec![0x08, 0x01])
            }
        }
        assert!(!HostVerifier::self_test(&AlwaysYes));
        struct Missing;
        impl ForeignFunctions for Missing {
            fn call(&self, _: &str, _: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
                Err(HostCallFailed)
            }
        }
        assert!(!HostVerifier::self_test(&Missing));
    }

    #[test]
    fn raw_ecdsa_with_zero_component_is_refused() {
        let mut raw = [0u8; 64];
        raw[63] = 1; // r = 0
        assert!(ecdsa_raw_to_der(KeyFamily::EcP256, &raw).is_err());
        let mut raw = [0u8; 64];
        raw[31] = 1; // s = 0
        assert!(ecdsa_raw_to_der(KeyFamily::EcP256, &raw).is_err());
        let mut raw = [0u8; 64];
        raw[31] = 1;
        raw[63] = 1;
        assert!(ecdsa_raw_to_der(KeyFamily::EcP256, &raw).is_ok());
    }
}
