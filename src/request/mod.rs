//! What comes in: Envoy's header map, the `Request-Id`, content negotiation and the bodies.

pub mod body;
pub mod header_map;
pub mod negotiation;
pub mod request_id;
