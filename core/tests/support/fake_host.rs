//! Envoy's `verify_signature` foreign function implemented with RustCrypto, for native tests of
//! the host verification path (`HostVerifier`): the same protobuf contract, independent code.
//! Included by the test files that need it with `#[path = "support/fake_host.rs"] mod fake_host;`.

use api_guard_core::authn::jwt::verifier::{ForeignFunctions, HostCallFailed};
use std::cell::Cell;

/// A host whose `verify_signature` is Envoy's contract implemented with RustCrypto: it decodes
/// the protobuf arguments, parses the SPKI DER key (RSA, P-256, P-384), hashes the text with the
/// named hash, and checks a PKCS#1 v1.5 or DER ECDSA signature.
#[derive(Default)]
pub struct FakeHost {
    pub calls: Cell<usize>,
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
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

/// VerifySignatureArguments: 1 hash_function, 2 public_key, 3 signature, 4 text.
fn decode_verify_arguments(bytes: &[u8]) -> Option<[Vec<u8>; 4]> {
    let mut fields: [Option<Vec<u8>>; 4] = [None, None, None, None];
    let mut pos = 0;
    while pos < bytes.len() {
        let tag = read_varint(bytes, &mut pos)?;
        if tag & 7 != 2 {
            return None;
        }
        let len = usize::try_from(read_varint(bytes, &mut pos)?).ok()?;
        let end = pos.checked_add(len).filter(|e| *e <= bytes.len())?;
        let field = usize::try_from(tag >> 3).ok()?;
        let slot = fields.get_mut(field.checked_sub(1)?)?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(bytes[pos..end].to_vec());
        pos = end;
    }
    let [a, b, c, d] = fields;
    Some([a?, b?, c?, d?])
}

fn fake_host_verify(hash: &[u8], spki: &[u8], signature: &[u8], text: &[u8]) -> Option<bool> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use rsa::pkcs8::DecodePublicKey;
    use sha2::{Digest, Sha256, Sha384, Sha512};
    let (digest, pkcs1) = match hash {
        b"sha256" => (
            Sha256::digest(text).to_vec(),
            rsa::Pkcs1v15Sign::new::<Sha256>(),
        ),
        b"sha384" => (
            Sha384::digest(text).to_vec(),
            rsa::Pkcs1v15Sign::new::<Sha384>(),
        ),
        b"sha512" => (
            Sha512::digest(text).to_vec(),
            rsa::Pkcs1v15Sign::new::<Sha512>(),
        ),
        _ => return None,
    };
    if let Ok(key) = rsa::RsaPublicKey::from_public_key_der(spki) {
        return Some(key.verify(pkcs1, &digest, signature).is_ok());
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
        return Some(
            p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify_prehash(&digest, &s).is_ok()),
        );
    }
    if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
        return Some(
            p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| key.verify_prehash(&digest, &s).is_ok()),
        );
    }
    None
}

impl ForeignFunctions for FakeHost {
    fn call(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
        assert_eq!(function, "verify_signature");
        self.calls.set(self.calls.get() + 1);
        let [hash, spki, signature, text] =
            decode_verify_arguments(arguments).ok_or(HostCallFailed)?;
        match fake_host_verify(&hash, &spki, &signature, &text).ok_or(HostCallFailed)? {
            true => Ok(vec![0x08, 0x01]),
            // result: false, error: "bad signature"
            false => Ok(b"\x12\x0dbad signature".to_vec()),
        }
    }
}
