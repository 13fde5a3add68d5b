#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| api_guard_module::decode::fuzz_host_data(data));
