//! The Kubernetes manifests (envoy/istio, envoy/envoy-gateway): the filter configurations inside
//! them pass the filter's own config validation, as Envoy would run it at start; and the manifest
//! check (tests/check_manifests.py) refuses what it must: a misspelled field deep inside any kind,
//! a wrong enum value, stats tags that drifted from envoy/stats/tags.yaml.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Output;

fn check_manifests(args: &[&str]) -> Output {
    harness::venv_python(&[&["tests/check_manifests.py"], args].concat())
}

#[test]
fn manifest_plugin_configs_are_valid() {
    let configs = harness::venv_python_json(&["tests/check_manifests.py", "--plugin-configs"]);
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

/// A copy of `envoy/` with each `(file, from, to)` applied once (`from` must be there), checked
/// with `--root`; returns the checker's error output, which must be a failure.
fn check_mutated(edits: &[(&str, &str, &str)]) -> String {
    let root = harness::scratch_dir();
    copy_dir(&harness::root().join("envoy"), &root.join("envoy"));
    for (file, from, to) in edits {
        let path = root.join("envoy").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(from),
            "envoy/{file} no longer contains {from:?}"
        );
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
    let out = check_manifests(&["--root", root.to_str().unwrap()]);
    std::fs::remove_dir_all(&root).unwrap();
    assert!(!out.status.success(), "the check passed: {out:?}");
    String::from_utf8(out.stderr).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn assert_reports(errors: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            errors.lines().any(|l| l.ends_with(line)),
            "no {line:?} in:\n{errors}"
        );
    }
    assert_eq!(errors.lines().count(), expected.len(), "{errors}");
}

/// The models of the real CRDs are strict at every depth: one misspelled nested field in each kind
/// (the WasmPlugin's vmConfig, the DestinationRule's trafficPolicy, a container's securityContext
/// and volume mount, the EnvoyExtensionPolicy's wasm entry) and one wrong enum value each fail
/// the check, by path.
#[test]
fn misspelled_nested_fields_fail_the_schema_check() {
    let errors = check_mutated(&[
        (
            "istio/otp-filter.yaml",
            "      valueFrom: HOST",
            "      valueFrm: HOST",
        ),
        (
            "istio/otp-filter.yaml",
            "connectTimeout: 1s",
            "connectTimout: 1s",
        ),
        (
            "istio/credential-service.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
        ),
        ("istio/gateway.yaml", "readOnly: true", "readonly: true"),
        ("envoy-gateway/otp-filter.yaml", "rootID:", "rootId:"),
        (
            "envoy-gateway/envoy-proxy.yaml",
            "type: Merge",
            "type: merge",
        ),
    ]);
    assert_reports(
        &errors,
        &[
            "WasmPlugin/otp-filter: spec.vmConfig.env[0].valueFrm: unknown field 'valueFrm'",
            "DestinationRule/credential-service: spec.trafficPolicy.connectionPool.tcp.connectTimout: unknown field 'connectTimout'",
            "Deployment/credential-service: spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem: unknown field 'readOnlyRootFileSystem'",
            "Deployment/istio-ingressgateway: spec.template.spec.containers[0].volumeMounts[0].readonly: unknown field 'readonly'",
            "EnvoyExtensionPolicy/otp-filter: spec.wasm[0].rootId: unknown field 'rootId'",
            "EnvoyProxy/otp-filter: spec.bootstrap.type: Type '\"merge\"' is not assignable to type 'IBootstrapType | undefined'. Did you mean '\"Merge\"'? [TS2820]",
        ],
    );
}

/// An unknown kind has no model, so it cannot slip through unchecked.
#[test]
fn an_unknown_kind_fails_the_schema_check() {
    let errors = check_mutated(&[(
        "istio/otp-filter.yaml",
        "kind: DestinationRule",
        "kind: DestinationRules",
    )]);
    assert_reports(&errors, &["DestinationRules/credential-service: no model for this apiVersion/kind (Cannot find module '@kubernetes-models/istio/networking.istio.io/v1beta1/DestinationRules' or its corresponding type declarations.)"]);
}

/// envoy/stats/tags.yaml is the one source of the tag regexes: a plain Envoy config, the Istio
/// gateway's bootstrap override or the EnvoyProxy that differs from it fails the check, and so
/// does a gateway whose stats matcher no longer keeps the filter's stats.
#[test]
fn stats_tags_have_one_source() {
    let outcome = r"otp_filter\.outcome(";
    let errors = check_mutated(&[
        ("envoy.yaml", outcome, r"otp_filter\.outcomes("),
        (
            "istio/gateway.yaml",
            r"otp_filter\\.outcome(",
            r"otp_filter\\.outcomes(",
        ),
        // A shorter inclusion prefix still keeps every filter stat: no complaint.
        (
            "istio/gateway.yaml",
            "- wasmcustom.otp_filter",
            "- wasmcustom.otp",
        ),
        (
            "envoy-gateway/envoy-proxy.yaml",
            outcome,
            r"otp_filter\.outcomes(",
        ),
    ]);
    assert_reports(
        &errors,
        &[
            "envoy/envoy.yaml: stats_config differs from envoy/stats/tags.yaml",
            "Deployment/istio-ingressgateway: the bootstrap override's stats_config differs from envoy/stats/tags.yaml",
            "EnvoyProxy/otp-filter: bootstrap.value's stats_config differs from envoy/stats/tags.yaml",
        ],
    );
    // One that is not a prefix of them drops them.
    let errors = check_mutated(&[(
        "istio/gateway.yaml",
        "- wasmcustom.otp_filter",
        "- wasmcustom.otp_filters",
    )]);
    assert_reports(&errors, &["Deployment/istio-ingressgateway: proxy.istio.io/config proxyStatsMatcher.inclusionPrefixes must keep wasmcustom.otp_filter.*"]);
}
