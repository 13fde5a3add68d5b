//! Signature verification behind one seam, with two implementations: pure Rust (RustCrypto),
//! which runs everywhere, and the host's `verify_signature` foreign function (Envoy's BoringSSL),
//! which is about ten times faster inside V8 for RSA PKCS#1 v1.5 and ECDSA.

use super::alg::{Alg, HashAlg, KeyFamily};
use super::jwk::{Jwk, KeyMaterial};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};

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

pub struct RustVerifier;

const BAD_SIGNATURE: Refusal = "signature does not verify";

fn hmac_verify<M: Mac + hmac::digest::KeyInit>(
    secret: &[u8],
    input: &[u8],
    signature: &[u8],
) -> Result<(), Refusal> {
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(secret).map_err(|_| BAD_SIGNATURE)?;
    mac.update(input);
    // verify_slice compares in constant time.
    mac.verify_slice(signature).map_err(|_| BAD_SIGNATURE)
}

impl SignatureVerifier for RustVerifier {
    fn verify(&self, key: &Jwk, alg: Alg, input: &[u8], signature: &[u8]) -> Result<(), Refusal> {
        check_signature_length(key, alg, signature)?;
        use rsa::signature::Verifier as _;
        match (&key.material, alg) {
            (KeyMaterial::Rsa(public), Alg::RS256 | Alg::RS384 | Alg::RS512) => {
                let (scheme, digest) = match alg.hash() {
                    HashAlg::Sha256 => (
                        rsa::Pkcs1v15Sign::new::<Sha256>(),
                        Sha256::digest(input).to_vec(),
                    ),
                    HashAlg::Sha384 => (
                        rsa::Pkcs1v15Sign::new::<Sha384>(),
                        Sha384::digest(input).to_vec(),
                    ),
                    HashAlg::Sha512 => (
                        rsa::Pkcs1v15Sign::new::<Sha512>(),
                        Sha512::digest(input).to_vec(),
                    ),
                };
                public
                    .verify(scheme, &digest, signature)
                    .map_err(|_| BAD_SIGNATURE)
            }
            (KeyMaterial::Rsa(public), Alg::PS256 | Alg::PS384 | Alg::PS512) => {
                // RFC 7518 section 3.5: MGF1 with the same hash, salt as long as the hash.
                let (scheme, digest) = match alg.hash() {
                    HashAlg::Sha256 => (
                        rsa::Pss::new_with_salt::<Sha256>(32),
                        Sha256::digest(input).to_vec(),
                    ),
                    HashAlg::Sha384 => (
                        rsa::Pss::new_with_salt::<Sha384>(48),
                        Sha384::digest(input).to_vec(),
                    ),
                    HashAlg::Sha512 => (
                        rsa::Pss::new_with_salt::<Sha512>(64),
                        Sha512::digest(input).to_vec(),
                    ),
                };
                public
                    .verify(scheme, &digest, signature)
                    .map_err(|_| BAD_SIGNATURE)
            }
            (KeyMaterial::P256(vk), Alg::ES256) => {
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| "malformed ECDSA signature")?;
                vk.verify(input, &sig).map_err(|_| BAD_SIGNATURE)
            }
            (KeyMaterial::P384(vk), Alg::ES384) => {
                let sig = p384::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| "malformed ECDSA signature")?;
                vk.verify(input, &sig).map_err(|_| BAD_SIGNATURE)
            }
            (KeyMaterial::Ed25519(vk), Alg::EdDSA) => {
                let sig =
                    ed25519_dalek::Signature::from_slice(signature).map_err(|_| BAD_SIGNATURE)?;
                // verify_strict refuses non-canonical and small-order components.
                vk.verify_strict(input, &sig).map_err(|_| BAD_SIGNATURE)
            }
            (KeyMaterial::Hmac(secret), Alg::HS256) => {
                hmac_verify::<Hmac<Sha256>>(&secret.0, input, signature)
            }
            (KeyMaterial::Hmac(secret), Alg::HS384) => {
                hmac_verify::<Hmac<Sha384>>(&secret.0, input, signature)
            }
            (KeyMaterial::Hmac(secret), Alg::HS512) => {
                hmac_verify::<Hmac<Sha512>>(&secret.0, input, signature)
            }
            _ => Err("key type does not fit the algorithm"),
        }
    }

    fn name(&self) -> &'static str {
        "rust"
    }
}

/// The host refused a foreign-function call (missing function, bad argument, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCallFailed;

/// A call into the host's foreign-function table (`proxy_call_foreign_function`).
pub trait ForeignFunctions {
    fn call(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostCallFailed>;
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
        let Some(spki) = key.spki_der.as_deref() else {
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
        match host_verify(&self.host, alg.hash(), spki, host_signature, input) {
            Ok(true) => Ok(()),
            Ok(false) => Err(BAD_SIGNATURE),
            // The host refused the call itself: fall back rather than fail every token.
            Err(HostCallFailed) => RustVerifier.verify(key, alg, input, signature),
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
