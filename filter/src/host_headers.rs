//! Header maps read and written as bytes, through the raw proxy-wasm hostcalls.
//!
//! The SDK's `get_map` and `get_map_value` `unwrap` a `String::from_utf8` of every name and
//! value: a single obs-text byte in a request header panicked the VM of the worker that read
//! it. These calls hand the host's bytes to [`HeaderPairs`] instead, and write maps back from
//! bytes, so a header the filter does not edit goes back exactly as it came.

use api_guard_core::request::header_pairs::{serialize, HeaderPairs};
use proxy_wasm::types::MapType;
use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_header_map_pairs(map_type: u32, map_data: *const u8, map_size: usize) -> u32;
}

const STATUS_OK: u32 = 0;

/// Why a map could not be read or written.
#[derive(Debug)]
pub enum HostHeadersError {
    /// The host refused the call with this proxy-wasm status code.
    Host(u32),
    /// The host's bytes did not follow the map format.
    Malformed,
}

impl std::fmt::Display for HostHeadersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostHeadersError::Host(code) => write!(f, "host status {code}"),
            HostHeadersError::Malformed => f.write_str("malformed header map"),
        }
    }
}

pub fn read(map: MapType) -> Result<HeaderPairs, HostHeadersError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into the two out-parameters. The buffer was
    // allocated through this module's `proxy_on_memory_allocate` (the SDK's allocator: a boxed
    // slice of exactly `size` bytes), so it is owned here and freed as a `Vec` of that capacity,
    // which is what the SDK's own `get_map` does.
    let bytes = unsafe {
        let status = proxy_get_header_map_pairs(map as u32, &mut data, &mut size);
        if status != STATUS_OK {
            return Err(HostHeadersError::Host(status));
        }
        if data.is_null() {
            return Ok(HeaderPairs::default());
        }
        Vec::from_raw_parts(data, size, size)
    };
    HeaderPairs::parse(bytes).map_err(|_| HostHeadersError::Malformed)
}

pub fn write(map: MapType, pairs: &[(&[u8], &[u8])]) -> Result<(), HostHeadersError> {
    let bytes = serialize(pairs);
    // SAFETY: the host only reads `bytes.len()` bytes from the pointer during the call.
    let status = unsafe { proxy_set_header_map_pairs(map as u32, bytes.as_ptr(), bytes.len()) };
    match status {
        STATUS_OK => Ok(()),
        other => Err(HostHeadersError::Host(other)),
    }
}
