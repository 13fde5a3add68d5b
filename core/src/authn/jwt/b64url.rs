//! Strict base64url (RFC 7515 section 2): no padding, no whitespace, no non-alphabet bytes, and
//! no non-zero trailing bits, so that each value has exactly one encoding. A lenient decoder lets
//! one token be written many ways, which defeats caches and deny-lists keyed on the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
