//! The filter configuration (whatever an operator or a control plane puts in the Envoy YAML).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = |name: &str| match name {
        "OTP_MASTER_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()),
        _ => Some("short".to_string()),
    };
    let _ = otp_filter::config::parse(data, &env);
});
