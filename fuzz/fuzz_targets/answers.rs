//! Everything a peer answers: credential-service verdicts, JWKS documents (fetched set) and
//! introspection answers. The first byte picks the HTTP status.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use otp_filter::callout::UpstreamSettings;
use otp_filter::token::jwks::{RemoteJwks, RemoteJwksSettings};

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first() {
        Some((0, rest)) => (None, rest),
        Some((b, rest)) if *b < 128 => (Some(200), rest),
        Some((b, rest)) => (Some(u16::from(*b) + 300), rest),
        None => (Some(200), data),
    };
    let _ = otp_filter::callout::credential::read_answer(status, body);
    let _ = otp_filter::token::introspection::read_answer(status, body);
    let mut remote = RemoteJwks::new(RemoteJwksSettings {
        upstream: UpstreamSettings {
            cluster: "c".into(),
            authority: "a".into(),
            path: "/jwks".into(),
            timeout: Duration::from_secs(1),
        },
        refresh: Duration::from_secs(300),
        min_refetch: Duration::from_secs(30),
    });
    let _ = remote.due(0);
    let _ = remote.on_answer(status, body, 0);
});
