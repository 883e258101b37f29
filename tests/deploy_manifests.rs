//! The filter configurations inside the Kubernetes manifests (envoy/istio, envoy/envoy-gateway)
//! pass the filter's own config validation, as Envoy would run it at start.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use serde_json::Value;

#[test]
fn manifest_plugin_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/.venv/bin/python"))
        .arg(format!("{root}/tests/check_manifests.py"))
        .arg("--plugin-configs")
        .output()
        .expect("the project venv (run `make test`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let configs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let configs = configs.as_array().unwrap();
    assert_eq!(configs.len(), 2, "one WasmPlugin, one EnvoyExtensionPolicy");
    let env = |name: &str| match name {
        "OTP_MASTER_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()),
        "OTP_CREDENTIAL_SERVICE_AUTH" => Some("Bearer test".to_string()),
        _ => None,
    };
    for entry in configs {
        let text = entry["config"].to_string();
        if let Err(problems) = otp_filter::config::parse(text.as_bytes(), &env) {
            panic!("{}: {problems}", entry["source"]);
        }
    }
}
