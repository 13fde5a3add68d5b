#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| api_guard::fuzz_targets::body_schema(data));
