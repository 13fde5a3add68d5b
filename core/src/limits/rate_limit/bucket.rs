//! Buckets: the values in shared data (four client entries and an overflow entry each).

use super::*;

/// One counter. `window_ms == 0` marks an empty entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Entry {
    /// Keyed hash of (limit name, window, client key); unused in the overflow entry.
    pub(super) fingerprint: u64,
    /// The window length the counts were taken with (a reconfigured window starts afresh).
    pub(super) window_ms: u64,
    /// `window_start_ms / window_ms` of `current`.
    pub(super) window_index: u64,
    pub(super) current: u64,
    pub(super) previous: u64,
}

impl Entry {
    pub(super) fn is_empty(&self) -> bool {
        self.window_ms == 0
    }

    /// No admission in the last two windows: the entry weighs nothing any more, so another
    /// client may take it without loosening anyone's limit.
    pub(super) fn is_idle(&self, now_ms: u64) -> bool {
        self.is_empty() || now_ms / self.window_ms >= self.window_index.saturating_add(2)
    }
}

pub(super) const BUCKET_VERSION: u8 = 1;
pub(super) const ENTRY_BYTES: usize = 40;
pub(super) const BUCKET_BYTES: usize = 1 + (WAYS + 1) * ENTRY_BYTES;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Bucket {
    /// Shared by every client of this bucket that found no entry of its own.
    pub(super) overflow: Entry,
    pub(super) ways: [Entry; WAYS],
}

impl Bucket {
    /// Version byte, then the overflow entry and the client entries, each five little-endian
    /// u64s: fingerprint, window_ms, window_index, current, previous.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(BUCKET_BYTES);
        bytes.push(BUCKET_VERSION);
        for entry in std::iter::once(&self.overflow).chain(self.ways.iter()) {
            for field in [
                entry.fingerprint,
                entry.window_ms,
                entry.window_index,
                entry.current,
                entry.previous,
            ] {
                bytes.extend_from_slice(&field.to_le_bytes());
            }
        }
        bytes
    }

    /// Anything that is not a bucket of this version reads as an empty bucket (it is then
    /// overwritten under CAS); never a panic.
    pub(super) fn decode(bytes: &[u8]) -> Bucket {
        let Some((&BUCKET_VERSION, body)) = bytes.split_first() else {
            return Bucket::default();
        };
        if body.len() != (WAYS + 1) * ENTRY_BYTES {
            return Bucket::default();
        }
        let mut entries = body.chunks_exact(ENTRY_BYTES).map(|chunk| {
            let mut fields = chunk.chunks_exact(8).map(|word| {
                let mut le = [0u8; 8];
                le.copy_from_slice(word);
                u64::from_le_bytes(le)
            });
            let mut next = || fields.next().unwrap_or(0);
            Entry {
                fingerprint: next(),
                window_ms: next(),
                window_index: next(),
                current: next(),
                previous: next(),
            }
        });
        let mut bucket = Bucket {
            overflow: entries.next().unwrap_or_default(),
            ways: [Entry::default(); WAYS],
        };
        for (way, entry) in bucket.ways.iter_mut().zip(entries) {
            *way = entry;
        }
        bucket
    }
}

/// Where a client's count lives in its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    Own(usize),
    /// A free entry the client takes, starting from the overflow counts.
    Claim(usize),
    Overflow,
}
