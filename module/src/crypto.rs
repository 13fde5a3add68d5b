//! Signature verification in the dynamic module: `ring` (BoringSSL's assembly for P-256, P-384,
//! RSA and Ed25519) instead of the RustCrypto crates the wasm build carries. Measured in
//! `benches/crypto.rs` (criterion, same run): see the README's Performance section.
//!
//! Same checks as the core's `RustVerifier`, in the same order: the signature's length first
//! (`check_signature_length`: a JWS signature of the wrong length never reaches big-number
//! arithmetic), then the algorithm against the key's type. The keys are the core's parsed JWKs,
//! read back as the encodings ring takes (an uncompressed SEC1 point, the RSA modulus and
//! exponent). HMAC stays with the core (constant-time tag comparison), and so does Ed25519
//! (`Ed25519Strict`, ed25519-dalek's strict verification): both adapters then accept exactly
//! the same EdDSA signatures, and dalek natively is within a few percent of ring there.

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::authn::jwt::jwk::{Jwk, KeyMaterial};
use api_guard_core::authn::jwt::verifier::{
    check_signature_length, Refusal, RustVerifier, SignatureVerifier,
};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use rsa::traits::PublicKeyParts;

const BAD_SIGNATURE: Refusal = "signature does not verify";

pub struct NativeVerifier;

fn rsa_params(alg: Alg) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl SignatureVerifier for NativeVerifier {
    fn verify(&self, key: &Jwk, alg: Alg, input: &[u8], sig: &[u8]) -> Result<(), Refusal> {
        check_signature_length(key, alg, sig)?;
        let verified = match (&key.material, alg) {
            (KeyMaterial::Rsa(public), _) => {
                let params = rsa_params(alg).ok_or("key type does not fit the algorithm")?;
                let n = public.n().to_bytes_be();
                let e = public.e().to_bytes_be();
                RsaPublicKeyComponents { n: &n, e: &e }.verify(params, input, sig)
            }
            (KeyMaterial::P256(vk), Alg::ES256) => {
                let point = vk.to_encoded_point(false);
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point.as_bytes())
                    .verify(input, sig)
            }
            (KeyMaterial::P384(vk), Alg::ES384) => {
                let point = vk.to_encoded_point(false);
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point.as_bytes())
                    .verify(input, sig)
            }
            (KeyMaterial::Ed25519(_) | KeyMaterial::Hmac(_), _) => {
                return RustVerifier.verify(key, alg, input, sig)
            }
            _ => return Err("key type does not fit the algorithm"),
        };
        verified.map_err(|_| BAD_SIGNATURE)
    }

    fn name(&self) -> &'static str {
        "native (ring)"
    }
}
