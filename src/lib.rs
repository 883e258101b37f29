//! otp-filter: PACE's "Create OTP" endpoint served inside Envoy as a proxy-wasm filter.
//!
//! Every folder but `wasm` is plain Rust with no host calls, tested natively with `cargo test`;
//! `wasm` (wasm32 only) maps proxy-wasm callbacks onto `flow::Exchange` and performs its steps.
//! Units depend on the ones before them only (docs/architecture.md):
//! secret, timefmt → otp → reply → request → callout → token → state → config → stats → flow → wasm.
//!
//! The host-free folders are public: natively there is no entry point, and the unit tests, fuzz/
//! and benches/ drive them directly (a private module would read as dead code there). Only the
//! wasm entry is private.

pub mod callout;
pub mod config;
pub mod flow;
pub mod otp;
pub mod reply;
pub mod request;
pub mod secret;
pub mod state;
pub mod stats;
pub mod timefmt;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(test)]
mod testkit;
