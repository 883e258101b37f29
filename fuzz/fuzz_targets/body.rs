//! The request bodies of the create and verify routes: any bytes, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = otp_filter::request::body::parse(data);
    let _ = otp_filter::request::body::parse_verify(data);
});
