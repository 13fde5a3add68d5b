//! Header maps in the proxy-wasm wire format, read without trusting the bytes to be UTF-8.
//!
//! HTTP/1.1 lets a header value carry obs-text (bytes 0x80–0xFF) and Envoy passes such values
//! through. The SDK's `get_map` turns every name and value into a `String` with `unwrap`: one
//! request with a Latin-1 byte in any header panicked the worker's VM, and every later request on
//! that worker was refused. This codec keeps the map as the host's bytes, lets the caller decide
//! what non-UTF-8 means, and costs one allocation for the whole map instead of two per header.
//!
//! Format (little-endian): a `u32` pair count, then a `u32` name length and a `u32` value length
//! per pair, then each name and each value followed by a NUL byte.

use std::ops::Range;

/// A header map as the host sent it, indexed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderPairs {
    bytes: Vec<u8>,
    spans: Vec<(Range<usize>, Range<usize>)>,
}

/// The host's bytes did not follow the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedPairs;

fn read_u32(bytes: &[u8], at: usize) -> Result<usize, MalformedPairs> {
    let word = bytes.get(at..at + 4).ok_or(MalformedPairs)?;
    let mut le = [0u8; 4];
    le.copy_from_slice(word);
    usize::try_from(u32::from_le_bytes(le)).map_err(|_| MalformedPairs)
}

impl HeaderPairs {
    /// Indexes `bytes`; every length is bounds-checked against the buffer.
    pub fn parse(bytes: Vec<u8>) -> Result<HeaderPairs, MalformedPairs> {
        if bytes.is_empty() {
            return Ok(HeaderPairs::default());
        }
        let count = read_u32(&bytes, 0)?;
        // Each pair takes at least 10 bytes (two lengths, two NULs): a count the buffer cannot
        // hold is refused before anything is reserved for it.
        if count > bytes.len() / 10 {
            return Err(MalformedPairs);
        }
        let mut spans = Vec::with_capacity(count);
        let mut at = 4 + count * 8;
        for i in 0..count {
            let name_len = read_u32(&bytes, 4 + i * 8)?;
            let value_len = read_u32(&bytes, 8 + i * 8)?;
            let name = at..at.checked_add(name_len).ok_or(MalformedPairs)?;
            let value_start = name.end + 1;
            let value = value_start..value_start.checked_add(value_len).ok_or(MalformedPairs)?;
            if bytes.get(name.end) != Some(&0) || bytes.get(value.end) != Some(&0) {
                return Err(MalformedPairs);
            }
            at = value.end + 1;
            spans.push((name, value));
        }
        Ok(HeaderPairs { bytes, spans })
    }

    /// Copies a header map a host hands out as views (the dynamic module's zero-copy
    /// `get_headers`) into one buffer.
    pub fn copy_from<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> HeaderPairs {
        let (count, bytes) = pairs.clone().fold((0, 0), |(count, bytes), (n, v)| {
            (count + 1, bytes + n.len() + v.len())
        });
        let mut out = HeaderPairs {
            bytes: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(count),
        };
        for (name, value) in pairs {
            let name_start = out.bytes.len();
            out.bytes.extend_from_slice(name);
            let value_start = out.bytes.len();
            out.bytes.extend_from_slice(value);
            out.spans
                .push((name_start..value_start, value_start..out.bytes.len()));
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone + '_ {
        self.spans.iter().filter_map(|(name, value)| {
            Some((
                self.bytes.get(name.clone())?,
                self.bytes.get(value.clone())?,
            ))
        })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The first value of `name` (lower case, as Envoy gives names).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }
}

/// Serialises `pairs` for the host.
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| n.len() + v.len() + 10)
        .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        bytes.extend_from_slice(name);
        bytes.push(0);
        bytes.extend_from_slice(value);
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_bytes() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":status", b"200"),
            (b"x-latin-1", b"caf\xe9"),
            (b"empty", b""),
            (b"x-dup", b"1"),
            (b"x-dup", b"2"),
        ];
        let parsed = HeaderPairs::parse(serialize(&pairs)).unwrap();
        assert_eq!(parsed.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed.get("x-latin-1"), Some(&b"caf\xe9"[..]));
        assert_eq!(parsed.get("x-dup"), Some(&b"1"[..]));
        assert_eq!(parsed.get("absent"), None);
        assert!(HeaderPairs::parse(Vec::new()).unwrap().is_empty());
        assert!(HeaderPairs::parse(serialize(&[])).unwrap().is_empty());
    }

    #[test]
    fn refuses_every_truncation_and_bad_length_without_panicking() {
        let good = serialize(&[(b"a", b"bc"), (b"de", b"f")]);
        for end in 1..good.len() {
            assert_eq!(
                HeaderPairs::parse(good[..end].to_vec()),
                Err(MalformedPairs),
                "truncated at {end}"
            );
        }
        // A length that runs past the buffer, a missing NUL, a huge count.
        let mut long = good.clone();
        long[4] = 200;
        assert_eq!(HeaderPairs::parse(long), Err(MalformedPairs));
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(HeaderPairs::parse(no_nul), Err(MalformedPairs));
        let mut huge = good;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderPairs::parse(huge), Err(MalformedPairs));
        assert_eq!(
            HeaderPairs::parse(vec![0xff; 64]),
            Err(MalformedPairs),
            "noise"
        );
    }
}
