//! Request body size limits (`routes[].max_body_bytes`): refused at once by `Content-Length`,
//! or counted as the body streams when there is no length (HTTP/1.1 chunked, HTTP/2 and HTTP/3
//! DATA frames without a `content-length` header).
//!
//! The counter applies even when a `Content-Length` was declared and accepted: the declared
//! length is the client's word, and the count is what actually arrives.

use crate::request::head::RequestHead;

pub const INVALID_CONTENT_LENGTH: &str = "invalid content-length";
pub const SEVERAL_CONTENT_LENGTHS: &str = "several content-length values";

/// Whether the declared `Content-Length` is above `max` (the limit itself is allowed). `Ok(false)`
/// when there is no `Content-Length`. An unparsable or repeated value is an error (400): two
/// parsers that read it differently is how request smuggling starts, so only the unambiguous
/// form `1*DIGIT` is accepted, and `5, 5` is refused although RFC 9110 8.6 would let a recipient
/// fold it (Envoy refuses it on HTTP/1.1 too).
pub fn content_length_exceeds(head: &RequestHead, max: u64) -> Result<bool, &'static str> {
    let mut values = head.header_values("content-length");
    let Some(value) = values.next() else {
        return Ok(false);
    };
    if values.next().is_some() {
        return Err(SEVERAL_CONTENT_LENGTHS);
    }
    // RFC 9110 5.5: leading and trailing whitespace is not part of a field value.
    let digits = value.trim_matches([' ', '\t']);
    if digits.contains(',') {
        return Err(SEVERAL_CONTENT_LENGTHS);
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(INVALID_CONTENT_LENGTH);
    }
    // Only digits are left, so the one way to fail is a number beyond u64: certainly over `max`.
    Ok(digits.parse::<u64>().map_or(true, |length| length > max))
}

/// Counts body bytes as they stream. Once over the limit it stays over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCounter {
    max: u64,
    received: u64,
}

impl BodyCounter {
    pub fn new(max: u64) -> BodyCounter {
        BodyCounter { max, received: 0 }
    }

    /// Adds a chunk of `n` bytes; true when the body is now over the limit. The chunk that
    /// crosses the limit must not be forwarded, so the upstream never gets a complete request
    /// over the limit.
    pub fn add(&mut self, n: usize) -> bool {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.received = self.received.saturating_add(n);
        self.is_over()
    }

    pub fn is_over(&self) -> bool {
        self.received > self.max
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lengths: &[&str]) -> RequestHead {
        let mut all = vec![(":method".to_string(), "POST".to_string())];
        all.extend(
            lengths
                .iter()
                .map(|v| ("content-length".to_string(), v.to_string())),
        );
        RequestHead::from_host(all, None)
    }

    #[test]
    fn content_length_is_compared_with_the_limit_inclusive() {
        assert_eq!(content_length_exceeds(&head(&[]), 10), Ok(false));
        assert_eq!(content_length_exceeds(&head(&["10"]), 10), Ok(false));
        assert_eq!(content_length_exceeds(&head(&["11"]), 10), Ok(true));
        assert_eq!(content_length_exceeds(&head(&["0"]), 0), Ok(false));
        assert_eq!(content_length_exceeds(&head(&["0010"]), 10), Ok(false));
        assert_eq!(content_length_exceeds(&head(&[" 5\t"]), 10), Ok(false));
        assert_eq!(content_length_exceeds(&head(&[" 50"]), 10), Ok(true));
    }

    #[test]
    fn huge_lengths_exceed_any_limit() {
        assert_eq!(
            content_length_exceeds(&head(&["18446744073709551615"]), u64::MAX),
            Ok(false)
        );
        assert_eq!(
            content_length_exceeds(&head(&["18446744073709551616"]), u64::MAX),
            Ok(true)
        );
        assert_eq!(
            content_length_exceeds(&head(&["99999999999999999999999999999999"]), 1_048_576),
            Ok(true)
        );
    }

    #[test]
    fn malformed_lengths_are_errors() {
        for value in ["+5", "-5", "", " ", "5 5", "5.0", "0x5", "5a", "١"] {
            assert_eq!(
                content_length_exceeds(&head(&[value]), 100),
                Err(INVALID_CONTENT_LENGTH),
                "{value:?}"
            );
        }
        for lengths in [&["5, 5"][..], &["5,6"], &["5", "5"], &["5", "6"]] {
            assert_eq!(
                content_length_exceeds(&head(lengths), 100),
                Err(SEVERAL_CONTENT_LENGTHS),
                "{lengths:?}"
            );
        }
    }

    #[test]
    fn counter_trips_on_the_chunk_that_crosses_the_limit_and_stays_tripped() {
        let mut counter = BodyCounter::new(10);
        assert!(!counter.add(4));
        assert!(!counter.add(6));
        assert!(!counter.add(0));
        assert!(counter.add(1));
        assert!(counter.add(0));
        assert_eq!(counter.received(), 11);
        let mut huge = BodyCounter::new(u64::MAX - 1);
        assert!(!huge.add(usize::MAX / 2));
        assert!(huge.add(usize::MAX));
        assert!(huge.add(usize::MAX));
        assert_eq!(huge.received(), u64::MAX);
    }
}
