//! What the adapter makes of host data, without the host: pure, so that the fuzz target and the
//! native tests drive the very functions the hooks call.
//!
//! - A request header map as Envoy lends it (views of any bytes) becomes the core's
//!   `RequestHead` (`RequestHead::from_views`).
//! - The response headers the core wants become changes to Envoy's map, header by header
//!   (`HttpFlow::on_response_header_changes`): the ABI has no whole-map write.
//! - A callout answer becomes the rate limit service's reply (`grpc_over_http::reply`).

use api_guard_core::limits::rate_limit_service::grpc_over_http::{self, HttpAnswer};
use api_guard_core::limits::rate_limit_service::ServiceReply;
use api_guard_core::pipeline::policy::{apply_changes, ResponseEdits};
use api_guard_core::request::head::RequestHead;

/// Whether two maps hold the same values per name, in the same order per name.
pub fn same_map(a: &[(&[u8], &[u8])], b: &[(&[u8], &[u8])]) -> bool {
    let values = |m: &'_ [(&'_ [u8], &'_ [u8])], name: &[u8]| {
        m.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_vec())
            .collect::<Vec<_>>()
    };
    a.iter()
        .chain(b.iter())
        .all(|(name, _)| values(a, name) == values(b, name))
}

fn lines(half: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
    half.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.iter().position(|b| *b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        })
}

/// The fuzz target (`fuzz/fuzz_targets/module_host_data.rs`, replayed over its corpus by
/// `module/tests/fuzz_corpus.rs`). `data` is up to three parts separated by 0xFF bytes:
/// 1. a header map, `name:value` per line, read as Envoy's request headers: the head is built
///    and every regular header of it is one of the map's;
/// 2. a response map, then after a line `--` edits (`-name` remove, `=name:value` set,
///    `+name:value` append): applying the changes gives exactly the merged map;
/// 3. bytes read as a rate limit service answer body: a well-framed message comes back whole,
///    anything else is a failure.
pub fn fuzz_host_data(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let request = parts.next().unwrap_or_default();
    let response = parts.next().unwrap_or_default();
    let answer = parts.next().unwrap_or_default();

    let head = RequestHead::from_views(lines(request), Box::new(|| None));
    for (name, value) in head.headers() {
        let listed = lines(request).any(|(n, v)| {
            String::from_utf8_lossy(n) == name && String::from_utf8_lossy(v) == value
        });
        assert!(listed, "the head holds a header the map does not");
    }

    let text = String::from_utf8_lossy(response);
    let (map_text, edit_text) = text.split_once("\n--\n").unwrap_or((&text, ""));
    let map: Vec<(&[u8], &[u8])> = lines(map_text.as_bytes()).collect();
    let mut edits = ResponseEdits::default();
    for line in edit_text.lines() {
        let (name, value) = line
            .get(1..)
            .unwrap_or("")
            .split_once(':')
            .unwrap_or((line.get(1..).unwrap_or(""), ""));
        match line.as_bytes().first() {
            Some(b'-') => edits.remove.push(name),
            Some(b'=') => edits.set.push((name, value)),
            Some(b'+') => edits.append.push((name, value)),
            _ => {}
        }
    }
    let merged = edits.merge(&map);
    let mut applied = map.clone();
    apply_changes(&mut applied, &edits.changes(&map));
    assert!(
        same_map(&applied, &merged),
        "the changes do not give the merged map"
    );

    let reply = grpc_over_http::reply(Some(HttpAnswer {
        status: 200,
        grpc_status: None,
        body: answer,
    }));
    if let ServiceReply::Message(message) = reply {
        assert_eq!(
            answer.get(5..),
            Some(message.as_slice()),
            "a message is the frame's body"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_three_parts() {
        fuzz_host_data(
            b":path:/a\nx-a:1\xff:status:200\nserver:envoy\n--\n-server\n=x-frame-options:DENY\n+vary:origin\xff\x00\x00\x00\x00\x02\x08\x01",
        );
    }
}
