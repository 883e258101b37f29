//! otp-filter: PACE's "Create OTP" endpoint served inside Envoy as a proxy-wasm filter.
//!
//! Everything except `adapter` is plain Rust with no host calls, tested natively with `cargo test`.
//! `adapter` (wasm32 only) maps proxy-wasm callbacks onto `flow::Exchange` and performs its steps.

pub mod body;
pub mod claims_cache;
pub mod config;
pub mod credential;
pub mod failure;
pub mod flow;
pub mod header_map;
pub mod introspection;
pub mod jsonapi;
pub mod jwk;
pub mod jwks;
pub mod jwt_authn_metadata;
pub mod metrics;
pub mod negotiation;
pub mod otp;
pub mod request_id;
pub mod secret;
pub mod shared_store;
pub mod single_use;
pub mod throttle;
pub mod timefmt;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(test)]
mod testkit;
