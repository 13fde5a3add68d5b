//! Host data the adapter turns into edits, without the host: pure, so the fuzz target and the
//! native tests can drive it.
//!
//! The core hands the adapter a whole response header map to write (one write is what
//! proxy-wasm offers). The dynamic-module ABI edits a map one header at a time instead, so the
//! map Envoy has and the map the core wants become a list of edits: every name whose values
//! differ is set to its first wanted value and given the rest in order; every name no longer
//! wanted is removed. Names the core leaves as they are cost nothing.

/// One change to a header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    /// Remove every value of this name.
    Remove(&'a [u8]),
    /// Replace every value of this name by this one.
    Set(&'a [u8], &'a [u8]),
    /// Append this value to the name (after a `Set` of the same name).
    Add(&'a [u8], &'a [u8]),
}

fn values<'a>(map: &[(&'a [u8], &'a [u8])], name: &[u8]) -> Vec<&'a [u8]> {
    map.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .collect()
}

/// The edits that turn `current` into `wanted` (names compared without case, as HTTP does;
/// the order of a name's values is kept).
pub fn header_edits<'a>(
    current: &[(&'a [u8], &'a [u8])],
    wanted: &[(&'a [u8], &'a [u8])],
) -> Vec<HeaderEdit<'a>> {
    let mut edits = Vec::new();
    let mut seen: Vec<&[u8]> = Vec::new();
    for (name, _) in current {
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            continue;
        }
        seen.push(name);
        if !wanted.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            edits.push(HeaderEdit::Remove(name));
        }
    }
    let mut done: Vec<&[u8]> = Vec::new();
    for (name, _) in wanted {
        if done.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            continue;
        }
        done.push(name);
        let want = values(wanted, name);
        if values(current, name) == want {
            continue;
        }
        let mut rest = want.into_iter();
        if let Some(first) = rest.next() {
            edits.push(HeaderEdit::Set(name, first));
        }
        edits.extend(rest.map(|value| HeaderEdit::Add(name, value)));
    }
    edits
}

/// Applies `edits` to a map held as pairs: what Envoy's map becomes (for the tests and the
/// fuzz target, which check that the result is `wanted`).
pub fn apply<'a>(map: &mut Vec<(&'a [u8], &'a [u8])>, edits: &[HeaderEdit<'a>]) {
    for edit in edits {
        match *edit {
            HeaderEdit::Remove(name) => map.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            HeaderEdit::Set(name, value) => {
                map.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                map.push((name, value));
            }
            HeaderEdit::Add(name, value) => map.push((name, value)),
        }
    }
}

/// Whether two maps hold the same values per name, in the same order per name.
pub fn same_map(a: &[(&[u8], &[u8])], b: &[(&[u8], &[u8])]) -> bool {
    let covered = |x: &[(&[u8], &[u8])], y: &[(&[u8], &[u8])]| {
        x.iter().all(|(name, _)| values(x, name) == values(y, name))
    };
    covered(a, b) && covered(b, a)
}

/// The fuzz target (`fuzz/fuzz_targets/module_header_edits.rs`; replayed over its corpus by
/// `module/tests/fuzz_corpus.rs`): `data` is two header maps, separated by a 0xFF byte, one
/// `name:value` per line. Whatever the maps, applying the edits to the first gives the second,
/// and no edit names a header neither map has.
pub fn fuzz_header_edits(data: &[u8]) {
    let mut halves = data.splitn(2, |b| *b == 0xff);
    let parse = |half: &'_ [u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
        half.split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| match line.iter().position(|b| *b == b':') {
                Some(at) => (line[..at].to_vec(), line[at + 1..].to_vec()),
                None => (line.to_vec(), Vec::new()),
            })
            .collect()
    };
    let current = parse(halves.next().unwrap_or_default());
    let wanted = parse(halves.next().unwrap_or_default());
    let current: Vec<(&[u8], &[u8])> = current
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    let wanted: Vec<(&[u8], &[u8])> = wanted
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    let edits = header_edits(&current, &wanted);
    let known = |name: &[u8]| {
        current
            .iter()
            .chain(wanted.iter())
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    for edit in &edits {
        let (HeaderEdit::Remove(name) | HeaderEdit::Set(name, _) | HeaderEdit::Add(name, _)) = edit;
        assert!(known(name), "an edit names a header neither map has");
    }
    let mut map = current.clone();
    apply(&mut map, &edits);
    assert!(same_map(&map, &wanted), "the edits do not give the wanted map");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn pairs<'a>(list: &[(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        list.iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    #[test]
    fn unchanged_headers_cost_no_edit() {
        let current = pairs(&[(":status", "200"), ("content-type", "a/b"), ("x-a", "1")]);
        let wanted = pairs(&[
            (":status", "200"),
            ("content-type", "a/b"),
            ("x-a", "1"),
            ("x-frame-options", "DENY"),
        ]);
        assert_eq!(
            header_edits(&current, &wanted),
            [HeaderEdit::Set(b"x-frame-options", b"DENY")]
        );
    }

    #[test]
    fn removed_changed_and_repeated_headers() {
        let current = pairs(&[("server", "x"), ("vary", "a"), ("set-cookie", "1")]);
        let wanted = pairs(&[("vary", "a"), ("vary", "origin"), ("set-cookie", "1")]);
        let edits = header_edits(&current, &wanted);
        assert_eq!(
            edits,
            [
                HeaderEdit::Remove(b"server"),
                HeaderEdit::Set(b"vary", b"a"),
                HeaderEdit::Add(b"vary", b"origin"),
            ]
        );
        let mut map = current.clone();
        apply(&mut map, &edits);
        assert!(same_map(&map, &wanted));
    }
}
