//! `ResponseEdits::changes` (what the dynamic module applies header by header) gives the same
//! map as `ResponseEdits::merge` (what the wasm filter writes whole), on 50,000 pseudo-random
//! maps and edit lists drawn from a small alphabet so that names collide, repeat and overlap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::pipeline::policy::{apply_changes, ResponseEdits};

/// Same values per name, in the same order per name (the order across names is the host's).
fn same_map(a: &[(&[u8], &[u8])], b: &[(&[u8], &[u8])]) -> bool {
    let values = |m: &[(&[u8], &[u8])], name: &[u8]| -> Vec<Vec<u8>> {
        m.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_vec())
            .collect()
    };
    a.iter()
        .chain(b.iter())
        .all(|(name, _)| values(a, name) == values(b, name))
}

const NAMES: [&str; 5] = ["vary", "server", "x-a", "content-length", "set-cookie"];
const VALUES: [&str; 5] = ["origin", "a", "b", "Origin, accept", "1"];

#[test]
fn changes_give_the_merged_map() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut with_changes = 0;
    for _ in 0..50_000 {
        let headers: Vec<(&[u8], &[u8])> = (0..next(6))
            .map(|_| (NAMES[next(5)].as_bytes(), VALUES[next(5)].as_bytes()))
            .collect();
        let edits = ResponseEdits {
            remove: (0..next(3)).map(|_| NAMES[next(5)]).collect(),
            set: (0..next(4))
                .map(|_| (NAMES[next(5)], VALUES[next(5)]))
                .collect(),
            append: (0..next(3))
                .map(|_| (NAMES[next(5)], VALUES[next(5)]))
                .collect(),
            ..ResponseEdits::default()
        };
        let merged = edits.merge(&headers);
        let changes = edits.changes(&headers);
        with_changes += usize::from(!changes.is_empty());
        let mut applied = headers.clone();
        apply_changes(&mut applied, &changes);
        assert!(
            same_map(&applied, &merged),
            "headers {headers:?}\nedits {edits:?}\nchanges {changes:?}\napplied {applied:?}\nmerged {merged:?}"
        );
    }
    // The test can tell: most cases change something.
    assert!(with_changes > 25_000, "{with_changes}");
}
