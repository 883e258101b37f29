//! Native cost of the host-free logic: token verification per algorithm and the other per-request
//! steps. Not a test: it prints ns/op and the ratio to a baseline measured in the same run
//! (SHA-256 over the token), because absolute numbers on a shared 2-core machine are noise.
//!
//!     make bench-native        (builds demo-token first: the tokens come from it)

// A benchmark fails by panicking, like a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use otp_filter::reply::jsonapi;
use otp_filter::request::{body, negotiation};
use otp_filter::token::cache::ClaimsCache;
use otp_filter::{config, otp, token};
use serde_json::json;
use sha2::{Digest, Sha256};

const HS_SECRET: &str = "bench-hs256-secret-of-at-least-32-bytes!";

fn demo_token(args: &[&str]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/target/release/demo-token"))
        .args(args)
        .current_dir(root)
        .output()
        .expect("target/release/demo-token (run `make bench-native`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Median ns per call over 7 rounds, each long enough to be measurable.
fn measure(mut f: impl FnMut()) -> f64 {
    let mut iterations = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        if start.elapsed() > Duration::from_millis(20) {
            break;
        }
        iterations *= 2;
    }
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.total_cmp(b));
    rounds[3]
}

fn main() {
    let jwks: serde_json::Value = serde_json::from_str(&demo_token(&["jwks"])).unwrap();
    let config_json = json!({
        "credential_service": {"cluster": "c", "authority": "a"},
        "token": {
            "issuer": "https://id.demo.invalid/realms/pace",
            "audiences": ["otp-filter-demo"],
            "jwks": jwks,
            "hmac_keys": [{"kid": "dev-hs256", "alg": "HS256", "secret_env": "HS"}]
        }
    });
    let env = |name: &str| match name {
        "OTP_MASTER_KEY" => Some("yNndX/Qxq7uAJihwEVB9yzuMdouxMLJlp4HF25eDOQI=".to_string()),
        "HS" => Some(HS_SECRET.to_string()),
        _ => None,
    };
    let config = config::parse(config_json.to_string().as_bytes(), &env).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    let rs256 = demo_token(&[]);
    let baseline = measure(|| {
        black_box(Sha256::digest(black_box(rs256.as_bytes())));
    });
    println!("{:<34} {:>12} {:>10}", "case", "ns/op", "× baseline");
    let report = |name: &str, ns: f64| println!("{name:<34} {ns:>12.0} {:>10.1}", ns / baseline);
    report("baseline: sha256(RS256 token)", baseline);

    for alg in [
        "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256",
    ] {
        let t = if alg == "HS256" {
            demo_token(&["--alg", alg, "--secret", HS_SECRET])
        } else {
            demo_token(&["--alg", alg])
        };
        let checked = token::verify(&config.token, None, None, &t, now);
        assert!(checked.is_ok(), "{alg}: {checked:?}");
        report(
            &format!("verify {alg} (signature + claims)"),
            measure(|| {
                black_box(token::verify(&config.token, None, None, black_box(&t), now).ok());
            }),
        );
        let mut cache = ClaimsCache::new(16, Duration::from_secs(300), [7; 16]);
        report(
            &format!("verify {alg}, cached"),
            measure(|| {
                black_box(
                    token::verify(&config.token, None, Some(&mut cache), black_box(&t), now).ok(),
                );
            }),
        );
    }
    let header = format!("Bearer {rs256}");
    report(
        "bearer extraction",
        measure(|| {
            black_box(token::bearer_token(black_box(Some(&header))).ok());
        }),
    );
    report(
        "Accept + Content-Type",
        measure(|| {
            black_box(negotiation::accept_is_acceptable(black_box(Some(
                "application/json",
            ))));
            black_box(negotiation::content_type_is_supported(black_box(Some(
                "application/json",
            ))));
        }),
    );
    report(
        "body parse",
        measure(|| {
            black_box(
                body::parse(black_box(
                    br#"{"password":"correct-horse-battery-staple","pin":"8299"}"#,
                ))
                .ok(),
            );
        }),
    );
    report(
        "mint (HMAC-SHA256 key + HOTP)",
        measure(|| {
            black_box(otp::mint(
                &config.otp,
                black_box("demo-user"),
                1_800_000_000_000,
            ));
        }),
    );
    let minted = otp::mint(&config.otp, "demo-user", 1_800_000_000_000).unwrap();
    report(
        "render 201",
        measure(|| {
            black_box(jsonapi::created_reply(
                black_box(&minted),
                "9m4e2mr0ui3e8a215n4g",
            ));
        }),
    );
    report(
        "render JSON:API error",
        measure(|| {
            black_box(jsonapi::error_reply(
                black_box(otp_filter::reply::failure::Failure::InvalidCredentials),
                "9m4e2mr0ui3e8a215n4g",
            ));
        }),
    );
}
