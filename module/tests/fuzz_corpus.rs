//! The module's fuzz target (`api_guard_module::decode::fuzz_host_data`, libFuzzer target
//! `fuzz/fuzz_targets/module_host_data.rs`) over its corpus (`fuzz/corpus/module_host_data/`)
//! and over 20,000 pseudo-random inputs from a fixed seed, on the stable toolchain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_module::decode::fuzz_host_data;
use std::path::Path;

#[test]
fn the_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/module_host_data");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| fuzz_host_data(&data));
        assert!(result.is_ok(), "{} fails the target", path.display());
        count += 1;
    }
    assert!(count >= 5, "{count} corpus files");
}

#[test]
fn random_maps_hold_the_property() {
    // xorshift64: reproducible, no dependency.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // A small alphabet, so that names repeat and collide in case.
    const ALPHABET: &[u8] = b"ab:\n\xff-=+x\x00\x05";
    for _ in 0..20_000 {
        let len = (next() % 48) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
            .collect();
        fuzz_host_data(&data);
    }
}
