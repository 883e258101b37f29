//! The few host calls whose SDK wrappers could panic on what Envoy really returns, imported
//! directly and returning `Result`s. (proxy-wasm 0.2.5 `panic!`s on any status a wrapper does not
//! list; a panic traps the VM for every request on the worker.) Statuses and enums cross the ABI
//! as plain `u32`, so an unexpected value from the host can never become an invalid Rust enum.
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
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const EMPTY: u32 = 7;

/// A host status other than success, for logs.
#[derive(Debug)]
pub struct HostStatus(u32);

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
