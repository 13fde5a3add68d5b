//! The IP list lookup against lists of 10 and 10,000 CIDRs (IPv4 and IPv6): the lookup probes
//! one hash set per prefix length in the list, so its cost should not grow with the list.
//! `cargo bench -p api-guard-core --bench network` (part of `make bench`).

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use api_guard_core::request::network::IpList;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

/// `count` IPv4 /24s and `count` IPv6 /48s, in a spread of prefix lengths like a real
/// blocklist's (a tenth of them /16s and /56s).
fn cidrs(count: u32) -> Vec<String> {
    let v4 = (0..count).map(|i| {
        if i % 10 == 0 {
            format!("{}.{}.0.0/16", 100 + i / 65_536, (i / 256) % 256)
        } else {
            format!("{}.{}.{}.0/24", 10 + i / 65_536, (i / 256) % 256, i % 256)
        }
    });
    let v6 = (0..count).map(|i| {
        if i % 10 == 0 {
            format!("2001:db8:{i:x}:ff00::/56")
        } else {
            format!("2001:db8:{i:x}::/48")
        }
    });
    v4.chain(v6).collect()
}

fn lookups(c: &mut Criterion) {
    for count in [10, 10_000] {
        let list = IpList::compile(&cidrs(count), "deny_ips", false).unwrap();
        for (what, address) in [
            ("IPv4 hit", "10.0.5.77"),
            ("IPv4 miss", "192.0.2.1"),
            ("IPv6 hit", "2001:db8:5::1"),
            ("IPv6 miss", "2001:db9::1"),
        ] {
            c.bench_function(&format!("ip list: {what}, {} CIDRs", 2 * count), |b| {
                b.iter(|| list.matching(black_box(address)))
            });
        }
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
