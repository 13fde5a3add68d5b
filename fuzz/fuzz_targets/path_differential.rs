#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| api_guard_core::fuzz_targets::path_differential(data));
