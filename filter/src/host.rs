//! Every hostcall the filter makes, through the raw proxy-wasm ABI, returning the host's status
//! as a `Result` and never panicking.
//!
//! proxy-wasm 0.2.5's `hostcalls::*` return `Result<_, Status>`, but each one matches the
//! host's status against the few it expects and `panic!`s on any other (`status =>
//! panic!("unexpected status: ..")`); under `panic = "abort"` that kills the worker's VM and
//! every request it carries. Worse, the SDK declares the imports as returning its `Status`
//! enum, which lacks codes a host may return (proxy-wasm's `WasmResult` also has
//! `InvalidMemoryAccess` = 6, `Unimplemented` = 12, ...): such a value is not even a valid
//! `Status`. Here every import returns a plain `u32`, and any code other than `Ok` (or
//! `NotFound` where "absent" is an answer) is an [`HostError`] the caller turns into a
//! fail-closed outcome (a 503 envelope, or a reset stream).
//!
//! The SDK call each wrapper replaces, and what it panics on:
//! - [`log`]: `hostcalls::log` panics on any status but `Ok` (and the SDK's `log::Log` impl and
//!   panic hook `unwrap` it), so [`HostLogger`] replaces the SDK's logger too.
//! - [`log_level`]: `hostcalls::get_log_level` panics on any status but `Ok`, and a level the
//!   SDK's `LogLevel` lacks (Envoy's spdlog `off` is 6) is not a valid `LogLevel`.
//! - [`now_ms`]: `hostcalls::get_current_time` panics on any status but `Ok`.
//! - [`set_tick_period_ms`]: `hostcalls::set_tick_period` panics on any status but `Ok`.
//! - [`get_buffer`]: `hostcalls::get_buffer` panics on any status but `Ok` and `NotFound`.
//! - [`set_buffer`]: `hostcalls::set_buffer` panics on any status but `Ok`.
//! - [`get_header`]: `hostcalls::get_map_value` panics on any status but `Ok`/`NotFound`, and
//!   `unwrap`s a `String::from_utf8` of the value; `get_map_value_bytes` panics on the status.
//! - [`set_header`], [`remove_header`]: `hostcalls::set_map_value` panics on any status but
//!   `Ok` (`proxy_replace_header_map_value` and `proxy_remove_header_map_value`).
//! - [`get_property`]: `hostcalls::get_property` panics on any status but `Ok`, `NotFound`,
//!   `SerializationFailure` and `InternalFailure`.
//! - [`get_shared_data`]: `hostcalls::get_shared_data` panics on any status but `Ok`/`NotFound`.
//! - [`set_shared_data`]: `hostcalls::set_shared_data` panics on any status but `Ok` and
//!   `CasMismatch`.
//! - [`resume_http_request`]: `hostcalls::resume_http_request` panics on any status but `Ok`.
//! - [`reset_http_request`], [`reset_http_response`]: `hostcalls::reset_http_*` panic on any
//!   status but `Ok` (a reset is the last resort of a failure path: it must not abort).
//! - [`send_http_response`]: `hostcalls::send_http_response` panics on any status but `Ok`,
//!   and takes `&str` headers only.
//! - [`set_effective_context`]: `hostcalls::set_effective_context` panics on any status but
//!   `Ok` and `BadArgument`.
//! - [`define_metric`], [`increment_metric`], [`record_metric`]: `hostcalls::define_metric`
//!   and friends panic on any status but `Ok` (and the SDK's metric helpers `unwrap` them).
//! - [`call_foreign_function`]: `hostcalls::call_foreign_function` panics on any status but
//!   `Ok`, `NotFound`, `BadArgument`, `SerializationFailure` and `InternalFailure`.
//!
//! The one SDK hostcall left is `hostcalls::dispatch_http_call` (in `jwks`): the SDK's
//! dispatcher must record the call's token, or its `proxy_on_http_call_response` `expect`s a
//! token it does not know and panics, and that record is private to the SDK. It panics on a
//! status other than `Ok`, `BadArgument` and `InternalFailure`, which are the ones Envoy's
//! `http_call` returns for arguments read from valid memory (ours always are).
//!
//! Header maps, read and written whole, are in `host_headers` (same approach).

use proxy_wasm::types::{BufferType, LogLevel, MapType};
use std::ptr::{null, null_mut};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;
const STATUS_CAS_MISMATCH: u32 = 8;

/// proxy-wasm `StreamType` values (the SDK's enum is not needed for two numbers).
const STREAM_HTTP_REQUEST: u32 = 0;
const STREAM_HTTP_RESPONSE: u32 = 1;

/// A status other than `Ok` from the host (the raw proxy-wasm `WasmResult` code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl HostError {
    pub fn is_cas_mismatch(self) -> bool {
        self.0 == STATUS_CAS_MISMATCH
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            5 => "BadExpression",
            6 => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            9 => "ResultMismatch",
            10 => "InternalFailure",
            11 => "BrokenConnection",
            12 => "Unimplemented",
            _ => "unknown",
        };
        write!(f, "host status {} ({name})", self.0)
    }
}

fn status(code: u32) -> Result<(), HostError> {
    match code {
        STATUS_OK => Ok(()),
        other => Err(HostError(other)),
    }
}

/// Takes ownership of a buffer the host allocated for an out-parameter.
///
/// # Safety
/// `data` is null or was allocated by the host through this module's `proxy_on_memory_allocate`
/// (the SDK's allocator: a boxed slice of exactly `size` bytes), and nothing else owns it. This
/// is how every SDK getter frees such a buffer.
unsafe fn take_host_bytes(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(data, size, size))
    }
}

pub fn log(level: LogLevel, message: &str) -> Result<(), HostError> {
    // SAFETY: the host reads `message.len()` bytes from the pointer during the call.
    status(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// The host's log level for the filter (Envoy: the `wasm` component's level) as a `log` filter;
/// `None` when the host does not say.
pub fn log_level() -> Option<log::LevelFilter> {
    let mut level: u32 = 0;
    // SAFETY: the host writes one u32 into the out-parameter.
    status(unsafe { proxy_get_log_level(&mut level) }).ok()?;
    Some(match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        // Critical (5), spdlog's off (6): nothing the filter writes below critical shows.
        _ => log::LevelFilter::Off,
    })
}

/// proxy-wasm `MetricType` values.
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;

/// Defines a metric (Envoy: the stat `wasmcustom.<name>`); the id to increment or record it.
pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, HostError> {
    let mut id: u32 = 0;
    // SAFETY: the host reads `name.len()` bytes from the pointer during the call and writes one
    // u32 into the out-parameter.
    status(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_record_metric(id, value) })
}

/// The host's wall clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> Result<u64, HostError> {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64 into the out-parameter.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos / 1_000_000)
}

pub fn set_tick_period_ms(period_ms: u64) -> Result<(), HostError> {
    let period = u32::try_from(period_ms).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    status(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Up to `max_size` bytes of a buffer from `start`; `Ok(None)` when the host has no such buffer.
pub fn get_buffer(
    buffer: BufferType,
    start: usize,
    max_size: usize,
) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size into the out-parameters; see
    // `take_host_bytes` for who owns the buffer.
    unsafe {
        match proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size) {
            STATUS_OK => Ok(take_host_bytes(data, size)),
            STATUS_NOT_FOUND => Ok(None),
            other => Err(HostError(other)),
        }
    }
}

/// Replaces `size` bytes of a buffer from `start` with `value` (`size` 0 at 0: prepends).
pub fn set_buffer(
    buffer: BufferType,
    start: usize,
    size: usize,
    value: &[u8],
) -> Result<(), HostError> {
    // SAFETY: the host reads `value.len()` bytes from the pointer during the call.
    status(unsafe {
        proxy_set_buffer_bytes(buffer as u32, start, size, value.as_ptr(), value.len())
    })
}

/// One header's value, as bytes; `Ok(None)` when absent.
pub fn get_header(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `get_buffer`; the host reads `name.len()` bytes from its pointer.
    unsafe {
        match proxy_get_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        ) {
            STATUS_OK => Ok(Some(take_host_bytes(data, size).unwrap_or_default())),
            STATUS_NOT_FOUND => Ok(None),
            other => Err(HostError(other)),
        }
    }
}

/// Sets a header (replacing every value it had).
pub fn set_header(map: MapType, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: the host reads the two byte ranges during the call.
    status(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_header(map: MapType, name: &str) -> Result<(), HostError> {
    // SAFETY: the host reads `name.len()` bytes from the pointer during the call.
    status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A host property (`["source", "address"]`); `Ok(None)` when the host has none.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    // The ABI's path: the segments joined by NUL bytes.
    let serialized = path.join("\0");
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `get_buffer`.
    unsafe {
        match proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) {
            STATUS_OK => Ok(take_host_bytes(data, size)),
            STATUS_NOT_FOUND => Ok(None),
            other => Err(HostError(other)),
        }
    }
}

/// A shared-data value and its CAS token (0: none); `Ok(None)` when the key is absent. An empty
/// value comes back without data but with its token: an empty vector.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: as in `get_buffer`, plus one u32 out-parameter.
    unsafe {
        match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
            STATUS_OK => match (take_host_bytes(data, size), cas) {
                (Some(value), cas) => Ok(Some((value, cas))),
                (None, 0) => Ok(None),
                (None, cas) => Ok(Some((Vec::new(), cas))),
            },
            STATUS_NOT_FOUND => Ok(None),
            other => Err(HostError(other)),
        }
    }
}

/// Writes a shared-data value, if `cas` (0: unconditional) still matches.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: the host reads the two byte ranges during the call.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Resumes the request of the current (or effective) context.
pub fn resume_http_request() -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_continue_stream(STREAM_HTTP_REQUEST) })
}

pub fn reset_http_request() -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_close_stream(STREAM_HTTP_REQUEST) })
}

pub fn reset_http_response() -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_close_stream(STREAM_HTTP_RESPONSE) })
}

/// Sends a local reply; `headers` is a map serialised as the ABI wants it
/// (`header_pairs::serialize`).
pub fn send_http_response(status_code: u16, headers: &[u8], body: &[u8]) -> Result<(), HostError> {
    // SAFETY: the host reads the byte ranges during the call; details are empty (null, 0).
    status(unsafe {
        proxy_send_local_response(
            u32::from(status_code),
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Lets the root act for request `context_id` (or for itself).
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_effective_context(context_id) })
}

pub fn call_foreign_function(function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: as in `get_buffer`.
    unsafe {
        status(proxy_call_foreign_function(
            function.as_ptr(),
            function.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut data,
            &mut size,
        ))?;
        Ok(take_host_bytes(data, size).unwrap_or_default())
    }
}

/// The `log` facade over the host's log call. The SDK's own logger (`proxy_wasm::set_log_level`)
/// `unwrap`s `hostcalls::log`, and its panic hook does too: a host that refused one line would
/// abort the VM. This one drops a line the host refuses (nothing sensible is left to do with it).
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        // A line without arguments (every security event: `"{}"` of one string is formatted
        // by the caller) needs no second copy.
        let _ = match record.args().as_str() {
            Some(text) => log(level, text),
            None => log(level, &record.args().to_string()),
        };
    }

    fn flush(&self) {}
}

/// Installs [`HostLogger`] and a panic hook that writes the panic to the host's log (what the
/// SDK's `set_log_level` did, without its `unwrap`s), at level `Info` until
/// [`refresh_log_level`] asks the host.
pub fn install_logger() {
    // Err only if a logger is set already: this function is its one caller.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|panic_info| {
        let _ = log(LogLevel::Critical, &panic_info.to_string());
    }));
}

/// Takes the host's current log level as the `log` facade's: a line the host would drop is
/// then not even formatted. Called at every configuration and timer tick, so that a change of
/// Envoy's level (`/logging?wasm=debug`) shows by then.
pub fn refresh_log_level() {
    if let Some(level) = log_level() {
        log::set_max_level(level);
    }
}
