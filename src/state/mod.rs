//! What every worker shares: Envoy's shared data behind a trait, the single-use ledger and the
//! per-user throttle.

pub mod single_use;
pub mod store;
pub mod table;
pub mod throttle;
