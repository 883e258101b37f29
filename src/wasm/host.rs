//! The host calls the filter makes per request, imported directly and returning `Result`s.
//! proxy-wasm 0.2.5's wrappers `panic!` on any status they do not list, and a panic traps the VM
//! for every request on the worker: reading a failed callout's headers did exactly that (status 2,
//! see docs/security-review.md). Statuses and enums cross the ABI as plain `u32`, so an unexpected
//! value from the host can never become an invalid Rust enum.
//!
//! Left to the SDK: `dispatch_http_call` (the SDK must record the call to route its answer back)
//! and the calls made once at configure time.
//!
//! Every buffer the host returns was allocated through this module's `proxy_on_memory_allocate`
//! (the SDK's: a `Vec<u8>` of exactly that capacity), so it is taken over with
//! `Vec::from_raw_parts(data, size, size)`, as the SDK itself does.

use proxy_wasm::types::{BufferType, MapType};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)] // the ABI's
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
}

/// `StreamType::HttpRequest` in the ABI.
const HTTP_REQUEST: u32 = 0;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;

/// A host status other than success, for logs.
#[derive(Debug)]
pub struct HostStatus(u32);

impl HostStatus {
    pub fn is_cas_mismatch(&self) -> bool {
        self.0 == CAS_MISMATCH
    }
}

fn result(status: u32) -> Result<(), HostStatus> {
    match status {
        OK => Ok(()),
        status => Err(HostStatus(status)),
    }
}

impl std::fmt::Display for HostStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host status {}", self.0)
    }
}

/// Takes over a buffer the host allocated for us (see the module comment).
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: `data` is a host-filled allocation of `size` bytes made by our allocator.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// A whole header map in Envoy's serialized form (parse it with `header_map::parse`): one host
/// call for all headers, instead of one call and one allocation per header.
pub fn header_pairs(map: MapType) -> Result<Vec<u8>, HostStatus> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: both out-pointers point at locals.
    match unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) } {
        OK => Ok(owned(data, size)),
        status => Err(HostStatus(status)),
    }
}

/// One header's value; `None` when absent. Unlike the SDK's getter this does not panic when the
/// map is gone (Envoy answers a failed callout with no response headers: status 2).
pub fn header_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostStatus> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the key is a valid slice; the out-pointers point at locals.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    match status {
        OK => Ok(Some(owned(data, size))),
        NOT_FOUND => Ok(None),
        status => Err(HostStatus(status)),
    }
}

/// Up to `max` bytes of a buffer from `start`; `None` when there is none.
pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostStatus> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the out-pointers point at locals.
    match unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) } {
        OK if data.is_null() => Ok(None),
        OK => Ok(Some(owned(data, size))),
        NOT_FOUND | EMPTY => Ok(None),
        status => Err(HostStatus(status)),
    }
}

/// Envoy's current level for wasm logs (0 trace … 5 critical), if it says.
pub fn log_level() -> Option<u32> {
    let mut level = u32::MAX;
    // SAFETY: the out-pointer points at a local.
    (unsafe { proxy_get_log_level(&mut level) } == OK).then_some(level)
}

pub fn log(level: u32, message: &str) -> Result<(), HostStatus> {
    // SAFETY: a valid slice.
    result(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

/// Nanoseconds since the Unix epoch, from Envoy's clock.
pub fn now_ns() -> Result<u64, HostStatus> {
    let mut time = 0u64;
    // SAFETY: the out-pointer points at a local.
    result(unsafe { proxy_get_current_time_nanoseconds(&mut time) }).map(|()| time)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostStatus> {
    // SAFETY: plain values.
    result(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostStatus> {
    // SAFETY: plain values.
    result(unsafe { proxy_record_metric(id, value) })
}

/// A shared-data value and its CAS version; `(None, None)` when the key does not exist.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostStatus> {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    // SAFETY: the key is a valid slice; the out-pointers point at locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    let cas = (cas != 0).then_some(cas);
    match status {
        OK if data.is_null() => Ok((None, cas)),
        OK => Ok((Some(owned(data, size)), cas)),
        NOT_FOUND => Ok((None, None)),
        status => Err(HostStatus(status)),
    }
}

/// Sets a shared-data value; with `cas`, only if the value is still at that version.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostStatus> {
    // SAFETY: valid slices.
    result(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Answers the request from the filter. `headers` in Envoy's serialized form
/// (`header_map::serialize`).
pub fn send_local_response(status: u32, headers: &[u8], body: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: valid slices; no details string; -1: not a gRPC answer.
    result(unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn resume_http_request() -> Result<(), HostStatus> {
    // SAFETY: a plain value.
    result(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

pub fn reset_http_request() -> Result<(), HostStatus> {
    // SAFETY: a plain value.
    result(unsafe { proxy_close_stream(HTTP_REQUEST) })
}
