//! Tagged Prometheus metrics under Istio and Envoy Gateway, on a real Envoy whose bootstrap is
//! built the way each of them builds it, from the settings shipped in envoy/istio/gateway.yaml and
//! envoy/envoy-gateway/envoy-proxy.yaml (read through `tests/check_manifests.py --mesh-stats`):
//!
//! - Istio: pilot-agent writes its own bootstrap (its `stats_config`: no default tags, its tag
//!   regexes, a stats inclusion list with proxyStatsMatcher's prefixes) and hands Envoy the
//!   ISTIO_BOOTSTRAP_OVERRIDE file as `--config-yaml`, which Envoy merges in. Both are done here.
//! - Envoy Gateway: `bootstrap.type: Merge` merges the value into its default bootstrap (which has
//!   no `stats_config`) with Go's proto.Merge: the same protobuf merge, lists appended, as Envoy's
//!   `--config-yaml`, which does it here.
//!
//! Controls show each setting matters: without the override the series come out flat
//! (`otp_filter_outcome_issued{}`), and without the inclusion prefix they do not come out at all.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use harness::bench::replace_once;
use harness::*;
use serde_json::{json, Value};

/// The shipped mesh stats settings.
fn mesh_stats() -> Value {
    venv_python_json(&["tests/check_manifests.py", "--mesh-stats"])
}

/// The demo config's own stats_config: the non-comment lines of envoy/stats/tags.yaml, which
/// tests/check_manifests.py holds equal to it.
fn demo_stats_config() -> String {
    let tags = std::fs::read_to_string(root().join("envoy/stats/tags.yaml")).unwrap();
    let lines: Vec<&str> = tags.lines().filter(|l| !l.starts_with('#')).collect();
    lines.join("\n") + "\n"
}

/// Istio's stats_config as its bootstrap template (tools/packaging/common/envoy_bootstrap.json)
/// writes it, with one meshConfig extraStatTags entry (`reporter`) and the inclusion list's
/// prefixes, suffixes and regex. Istio's required prefix `wasm` is left out on purpose: older
/// releases do not list it, so the filter's stats must survive on proxyStatsMatcher's prefixes.
fn istio_stats_config(inclusion_prefixes: &[&str]) -> String {
    let tags = [
        (
            "cluster_name",
            r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)",
        ),
        ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
        ("response_code", r"_rq(_(\d{3}))$"),
        ("response_code_class", r"_rq(_(\dxx))$"),
        (
            "http_conn_manager_listener_prefix",
            r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        ),
        (
            "http_conn_manager_prefix",
            r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        ),
        (
            "listener_address",
            r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
        ),
        (
            "mongo_prefix",
            r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$",
        ),
        ("reporter", r"(reporter=\.=(.*?);\.;)"),
        ("cache", r"(cache\.(.+?)\.)"),
        ("component", r"(component\.(.+?)\.)"),
        ("tag", r"(tag\.(.+?);\.)"),
        ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
        ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
        ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
        ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
    ];
    let mut patterns = vec![json!({"prefix": "reporter="})];
    for prefix in [
        "cluster_manager",
        "listener_manager",
        "server",
        "cluster.xds-grpc",
    ]
    .iter()
    .chain(inclusion_prefixes)
    {
        patterns.push(json!({ "prefix": prefix }));
    }
    for suffix in [
        "rbac.allowed",
        "rbac.denied",
        "shadow_allowed",
        "shadow_denied",
        "downstream_cx_active",
    ] {
        patterns.push(json!({ "suffix": suffix }));
    }
    patterns.push(json!({"safe_regex": {"regex": r"vhost\..*\.route\..*"}}));
    patterns.push(json!({"prefix": "component"}));
    patterns.push(json!({"prefix": "istio"}));
    let stats_config = json!({
        "use_all_default_tags": false,
        "stats_tags": tags.iter().map(|(n, r)| json!({"tag_name": n, "regex": r})).collect::<Vec<_>>(),
        "stats_matcher": {"inclusion_list": {"patterns": patterns}},
    });
    // JSON is YAML: one line in place of the demo's block.
    format!("stats_config: {stats_config}\n")
}

/// Envoy on the demo config with its stats_config replaced by `stats_config`, `overlay` merged in.
fn envoy_with(service: &CredentialService, stats_config: &str, overlay: Option<&str>) -> Envoy {
    let config = demo_config(service.port, |c| {
        replace_once(&c, &demo_stats_config(), stats_config)
    });
    match overlay {
        Some(overlay) => Envoy::start_merged(&config, overlay),
        None => Envoy::start(&config),
    }
}

/// Issues a code and verifies it (one outcome of each success, one credential callout, one
/// authority ruling), then returns /stats/prometheus.
fn issue_and_verify(envoy: &Envoy) -> String {
    envoy.wait_for_keys();
    let t = token_claims(r#"{"scope":"user:otp:create user:otp:verify"}"#);
    let (code, _) = assert_created(&create_otp(envoy.port, &t, r#"{"pin":"8299"}"#));
    let auth = format!("Bearer {t}");
    let body = json!({ "otp": code }).to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let verify = request(
        "POST",
        "/user/2022-1/user/otp/verify",
        &headers,
        Some(&body),
    );
    assert_eq!(send(envoy.port, &verify).status, 204);
    get(envoy.admin_port, "/stats/prometheus").text()
}

/// The filter's series as the dashboards and alerts of docs/operations.md name them.
fn assert_tagged(prometheus: &str) {
    for line in [
        "# TYPE otp_filter_outcome counter",
        r#"otp_filter_outcome{otp_outcome="issued"} 1"#,
        r#"otp_filter_outcome{otp_outcome="verified"} 1"#,
        r#"otp_filter_outcome{otp_outcome="token_expired"} 0"#,
        "# TYPE otp_filter_credential counter",
        r#"otp_filter_credential{otp_credential_result="valid"} 1"#,
        "# TYPE otp_filter_authority counter",
        r#"otp_filter_authority{otp_authority_result="consumed"} 1"#,
        "# TYPE otp_filter_time_filter_us histogram",
    ] {
        assert!(
            prometheus.lines().any(|l| l == line),
            "no {line:?} in:\n{prometheus}"
        );
    }
    let flat: Vec<&str> = prometheus
        .lines()
        .filter(|l| l.starts_with("otp_filter_outcome_") || l.starts_with("otp_filter_credential_"))
        .collect();
    assert!(flat.is_empty(), "untagged series: {flat:?}");
}

fn istio() -> (String, Vec<String>) {
    let settings = &mesh_stats()["istio"];
    assert_eq!(settings.as_array().unwrap().len(), 1, "one gateway");
    let override_text = settings[0]["bootstrap_override"].as_str().unwrap();
    let prefixes = settings[0]["inclusion_prefixes"].as_array().unwrap();
    (
        override_text.to_string(),
        prefixes
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
    )
}

#[test]
fn istio_gateway_exports_tagged_series() {
    let (override_text, prefixes) = istio();
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let service = CredentialService::start(&[]);
    let envoy = envoy_with(
        &service,
        &istio_stats_config(&prefixes),
        Some(&override_text),
    );
    assert_tagged(&issue_and_verify(&envoy));
}

#[test]
fn istio_controls_without_the_override_or_the_prefix() {
    let (override_text, prefixes) = istio();
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let service = CredentialService::start(&[]);
    // Without the override: Istio's tags only, so the filter's series come out flat (the issue).
    let envoy = envoy_with(&service, &istio_stats_config(&prefixes), None);
    let prometheus = get(envoy.admin_port, "/stats/prometheus").text();
    assert!(
        prometheus
            .lines()
            .any(|l| l == "otp_filter_outcome_issued{} 0"),
        "{prometheus}"
    );
    assert!(!prometheus.contains("otp_outcome="), "{prometheus}");
    drop(envoy);
    // Without the inclusion prefix (and Istio's `wasm`): the stats matcher drops them all.
    let envoy = envoy_with(&service, &istio_stats_config(&[]), Some(&override_text));
    let prometheus = get(envoy.admin_port, "/stats/prometheus").text();
    assert!(
        !prometheus.lines().any(|l| l.starts_with("otp_filter")),
        "{prometheus}"
    );
    assert!(prometheus.contains("envoy_server_live"), "{prometheus}");
}

#[test]
fn envoy_gateway_exports_tagged_series() {
    let settings = &mesh_stats()["envoy_gateway"];
    assert_eq!(settings.as_array().unwrap().len(), 1, "one EnvoyProxy");
    let merge = settings[0]["bootstrap_merge"].as_str().unwrap();
    let service = CredentialService::start(&[]);
    // Envoy Gateway's default bootstrap has no stats_config at all.
    let envoy = envoy_with(&service, "", Some(merge));
    assert_tagged(&issue_and_verify(&envoy));
}
