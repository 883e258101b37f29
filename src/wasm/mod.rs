//! The thin layer between Envoy and `flow`: the only code that calls the host, and it only
//! performs what the host-free code decided.
//!
//! Host calls go through `proxy_wasm::hostcalls`, which return `Result`s, rather than the trait
//! helpers, which `unwrap()`. Those wrappers still `panic!` on statuses they do not expect, so every
//! call made per request except `dispatch_http_call` goes through `host`, which returns every
//! status. Header values are read as bytes because the SDK's string getter panics on
//! non-UTF-8 (Envoy accepts obs-text bytes in header values): one odd header from a client would
//! otherwise kill the VM for every request on that worker.
//!
//! - `root`: the root context (configure, the tick: JWKS fetches and sweeps);
//! - `http`: one stream context per request, driving a `flow::Exchange`;
//! - `stats`: the stats, defined with Envoy from `crate::stats`;
//! - `host`: direct host imports that return every status.

mod host;
mod http;
mod root;
mod stats;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

use crate::state::store::{SharedStore, StoreError};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    // A panic traps the VM; say so loudly before it dies. The message is ours (filter code denies
    // panics, so this fires only for a dependency bug) and carries no request data.
    std::panic::set_hook(Box::new(|info| {
        let _ = host::log(LogLevel::Critical as u32, &format!("otp-filter panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::new()) });
}}

fn log(level: LogLevel, message: &str) {
    // Logging failing is not worth failing a request over.
    let _ = host::log(level as u32, message);
}

/// Envoy's clock in ms; `None` when it cannot be read. Nothing time-bound is ever decided without
/// it: requests fail closed (`clock-unavailable`), timers skip their turn.
fn now_ms() -> Option<u64> {
    host::now_ns().ok().map(|ns| ns / 1_000_000)
}

thread_local! {
    /// Envoy's log level for this VM's logger, read at configure time and on every tick: a debug
    /// line asks this instead of the host, which saved host calls on every request. A level changed
    /// through Envoy's admin endpoint takes effect within one tick (500 ms).
    static LOG_LEVEL: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Reads Envoy's log level again (see LOG_LEVEL).
fn refresh_log_level() {
    LOG_LEVEL.with(|level| level.set(host::log_level()));
}

/// Whether Envoy would print a debug line, asked before one is formatted: on the hot path at the
/// default `info` level this saves building the line.
fn debug_enabled() -> bool {
    let level = LOG_LEVEL.with(|level| level.get()).or_else(|| {
        refresh_log_level();
        LOG_LEVEL.with(|level| level.get())
    });
    level.is_some_and(|level| level <= LogLevel::Debug as u32)
}

fn debug(message: impl FnOnce() -> String) {
    if debug_enabled() {
        log(LogLevel::Debug, &message());
    }
}

/// Warns that corrupt single-use buckets were fenced: codes in them are refused until the fence
/// expires, so users there need a fresh code. Worth an operator's look: only a bug or another
/// module writing into this `vm_id`'s shared data corrupts a bucket.
fn warn_fenced(count: usize, request_id: Option<&str>) {
    let at = request_id.map_or(String::new(), |id| format!(" request-id={id}:"));
    log(
        LogLevel::Warn,
        &format!("otp-filter:{at} {count} corrupt single-use bucket(s) found and fenced; codes minted before now in them are refused until they expire"),
    );
}

/// Envoy's shared data: one key-value store for all VMs with the same `vm_id` (all workers).
struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        host::get_shared_data(key).map_err(|_| StoreError::Host)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match host::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(status) if status.is_cas_mismatch() => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Host),
        }
    }
}
