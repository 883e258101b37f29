//! Accept and Content-Type values (the input is split at the first NUL into the two headers).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (accept, content_type) = text.split_once('\0').unwrap_or((&text, ""));
    let _ = otp_filter::request::negotiation::accept_is_acceptable(Some(accept));
    let _ = otp_filter::request::negotiation::content_type_is_supported(Some(content_type));
});
