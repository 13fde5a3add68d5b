#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| api_guard_core::fuzz_targets::api_key_header(data));
