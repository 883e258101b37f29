//! The reference credential service's request bodies (verify, consume, failure): any bytes,
//! never a panic, and whatever parses obeys the contract's limits.
//!
//! The parser is compiled straight from `credential-service/src/protocol.rs` (it needs only
//! serde, serde_json and zeroize), so fuzzing it does not pull in the service's HTTP and
//! database stack.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../credential-service/src/protocol.rs"]
#[allow(dead_code)]
mod protocol;

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= protocol::MAX_ID_BYTES && !id.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    let small = data.len() <= protocol::MAX_BODY_BYTES;
    if let Ok(v) = protocol::parse_verify_body(data) {
        assert!(small);
        assert!(format!("{v:?}").contains(r#"secret: "<redacted>""#));
    }
    if let Ok(c) = protocol::parse_consume_body(data) {
        assert!(small && id_ok(&c.user) && id_ok(&c.key_id));
        assert!(c.step >= 0 && c.expires_at_ms >= 0);
    }
    if let Ok(f) = protocol::parse_failure_body(data) {
        assert!(small && id_ok(&f.user));
    }
});
