//! A bad configuration stops Envoy at start with one message that lists every problem.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use harness::*;

fn bad_config() -> String {
    demo_config(10001, |c| {
        c.replace(r#""digits": 6"#, r#""digits": 11"#)
            .replace(
                r#""leeway_seconds": 30"#,
                r#""leeway_seconds": 90, "leway": 1"#,
            )
            .replace("OTP_MASTER_KEY: ", "SOME_OTHER_NAME: ")
    })
}

const EXPECTED: [&str; 5] = [
    "otp-filter configuration has 4 problem(s)",
    "otp.digits: must be an integer from 6 to 10",
    "token.leeway_seconds: must be an integer from 0 to 60",
    "token.leway: unknown field",
    "otp.master_key_env: environment variable OTP_MASTER_KEY is not set in the VM",
];

#[test]
fn envoy_refuses_to_start_and_says_why() {
    let log = match Envoy::try_start(&bad_config()) {
        Ok(_) => panic!("Envoy started with a bad otp-filter config"),
        Err(log) => log,
    };
    for expected in EXPECTED {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
    assert!(
        log.contains("Unable to create Wasm HTTP filter")
            || log.contains("Unable to create Wasm plugin"),
        "{log}"
    );
    assert!(
        !log.contains("yNndX/Qxq7uAJihwEVB9yzuMdouxMLJlp4HF25eDOQI="),
        "the key leaked into the log"
    );
}

#[test]
fn validate_mode_runs_the_same_checks() {
    let dir = std::env::temp_dir().join(format!("otp-filter-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, bad_config()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&path)
        .current_dir(root())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "validate accepted a bad config:\n{text}"
    );
    for expected in EXPECTED {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let good = demo_config(10001, |c| c);
    std::fs::write(&path, good).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&path)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
