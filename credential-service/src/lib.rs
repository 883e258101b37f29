//! `credential-service`: the reference credential service for otp-filter (docs/credential-service.md).
//!
//! It checks passwords and PINs for the filter (`POST /v1/credentials/verify`), is the
//! fleet-wide authority for one-time codes (`POST /v1/otp/consume`, `POST /v1/otp/failure`),
//! keeps users and per-user failure budgets in SQLite or PostgreSQL, and has an operator CLI.
//! For demos and tests it also stands in for an identity provider (`GET /jwks.json`,
//! `POST /v1/introspect`).
//!
//! Layout: `cli` (flags) → `app` (start) → `server` (hyper connections) → `routes` (axum, HTTP
//! shapes) → `service` (decisions) → `store` (SQL) and `hasher` (argon2 + pepper); `protocol`
//! is the wire contract, `users` the operator commands, `metrics` what is counted.

pub mod app;
pub mod auth;
pub mod cli;
pub mod hasher;
pub mod introspect;
pub mod metrics;
pub mod pin_rule;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod service;
pub mod store;
pub mod users;
