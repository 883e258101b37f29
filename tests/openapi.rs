//! docs/openapi.yaml against the real thing: Schemathesis (pinned, in `.venv`, installed by the
//! Makefile) generates requests from the document and sends them to a real Envoy running the
//! release `.wasm` with the demo config, in front of the reference credential service with the
//! demo users. Every answer must conform to the document (status, content type, headers, body),
//! no answer may be a 5xx, and without a valid token every operation must answer 401.
//!
//! The settings, the hooks (rules JSON Schema cannot state, and the check that the document still
//! matches envoy/envoy.yaml) and the baseline of accepted deviations, each with its reason, are in
//! tests/schemathesis/.
//!
//! The user's attempt budget: random PINs and codes lock demo-user within a few requests (the
//! filter's throttle after 5, the credential service after 10). Each test has its own credential
//! service on a fresh SQLite file, so no other test and no `make run` database is touched, and
//! the documented 429 (with `Retry-After`) is a conforming answer like any other. The examples
//! phase runs first, so the README's example still meets a fresh budget and must mint (201).

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use harness::*;
use serde_json::{json, Value};

/// The operations of docs/openapi.yaml: create, verify and the demo config's three gates.
const OPERATIONS: u64 = 5;

fn schemathesis_dir() -> PathBuf {
    root().join("tests/schemathesis")
}

/// What one Schemathesis run reported.
struct Run {
    /// The JSON run report (`--report json`): operations, test cases, failures, exit code.
    report: Value,
    /// Every request and response (`--report har`), read and then deleted: bodies hold the demo
    /// PIN and minted codes.
    entries: Vec<Value>,
}

impl Run {
    fn statuses(&self, method: &str, path: &str) -> BTreeSet<u64> {
        self.entries
            .iter()
            .filter(|e| e["request"]["method"] == method)
            .filter(|e| {
                let url = e["request"]["url"].as_str().unwrap_or_default();
                url.split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                    .is_some_and(|p| p.starts_with(path))
            })
            .filter_map(|e| e["response"]["status"].as_u64())
            .collect()
    }

    fn sent_authorization(entry: &Value) -> bool {
        entry["request"]["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| {
                h["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("authorization"))
            })
    }
}

/// Runs Schemathesis on docs/openapi.yaml against Envoy on `port` with the config file `config`
/// (in tests/schemathesis/), the token in `token` (read by the config), and `args`. Asserts that
/// it passed (exit status 0, failures only those in the baseline) and tested every operation.
fn schemathesis(port: u16, config: &str, token: &str, args: &[&str]) -> Run {
    let bin = root().join(".venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run `make test`, whose venv recipe installs the pinned Schemathesis",
        bin.display()
    );
    // Its own working directory: Schemathesis looks for a schemathesis.toml there and keeps
    // replay files there, and none of that belongs in the repository.
    let dir = scratch_dir();
    let (json, har) = (dir.join("report.json"), dir.join("report.har"));
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = Command::new(bin)
        .current_dir(&dir)
        .env("SCHEMATHESIS_HOOKS", schemathesis_dir().join("hooks.py"))
        .env("OTP_OPENAPI_TOKEN", token)
        .arg("--config-file")
        .arg(schemathesis_dir().join(config))
        .arg("run")
        .arg(root().join("docs/openapi.yaml"))
        .args(["--url", &url, "--seed", "1", "--workers", "1", "--no-color"])
        .args(["--generation-database", "none", "--request-timeout", "5"])
        .arg("--baseline")
        .arg(schemathesis_dir().join("baseline.json"))
        .args(["--report", "json,har", "--report-json-path"])
        .arg(&json)
        .arg("--report-har-path")
        .arg(&har)
        .args(args)
        .output()
        .expect("run schemathesis");
    // Schemathesis filters the Authorization header out of what it prints.
    let output =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis ({config}, {args:?}): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let har_doc: Option<Value> = std::fs::read(&har)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).expect("har report parses"));
    let _ = std::fs::remove_file(&har);
    assert!(out.status.success(), "schemathesis failed:\n{output}");
    let har_doc = har_doc.expect("har report");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("json report"))
        .expect("json report parses");
    let entries = har_doc["log"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    let operations = &report["operations"];
    assert_eq!(
        (
            operations["total"].as_u64(),
            operations["tested"].as_u64(),
            operations["errored"].as_u64()
        ),
        (Some(OPERATIONS), Some(OPERATIONS), Some(0)),
        "every operation of the document is tested:\n{output}"
    );
    assert_eq!(report["exit_code"], 0, "{output}");
    assert_eq!(report["complete"], true, "{output}");
    assert_eq!(report["errors"], json!([]), "{output}");
    // Failures only of the kinds the baseline accepts (which Schemathesis then leaves out).
    assert_eq!(report["failures"], json!([]), "{output}");
    assert_eq!(report["baseline"]["new"], 0, "{output}");
    assert!(
        entries.len() as u64 >= 10 * OPERATIONS,
        "only {} requests were sent:\n{output}",
        entries.len()
    );
    Run { report, entries }
}

#[test]
fn every_answer_conforms_to_the_document() {
    let stack = Stack::start();
    let token = token_claims(r#"{"scope":"openid user:otp:create user:otp:verify"}"#);
    let run = schemathesis(
        stack.envoy.port,
        "schemathesis.toml",
        &token,
        &["--max-examples", "100"],
    );
    for phase in ["examples", "coverage", "fuzzing"] {
        assert_eq!(
            run.report["phases"][phase]["status"], "success",
            "{phase}: {}",
            run.report["phases"]
        );
    }

    // The run reached the answers that matter, not only the early refusals: the README's example
    // minted, the wrong-PIN example and the verify example were judged, the gates refused.
    let create = run.statuses("POST", "/user/2021-2/user/otp");
    for status in [201, 401, 404, 415, 422, 429] {
        assert!(
            create.contains(&status),
            "create never answered {status}: {create:?}"
        );
    }
    let verify = run.statuses("POST", "/user/2021-2/user/otp/verify");
    for status in [401, 404, 422, 429] {
        assert!(
            verify.contains(&status),
            "verify never answered {status}: {verify:?}"
        );
    }
    for (method, path) in [
        ("PUT", "/user/2021-2/user/pin"),
        ("DELETE", "/user/2021-2/user"),
        ("POST", "/pay/"),
    ] {
        let statuses = run.statuses(method, path);
        assert!(statuses.contains(&403), "{method} {path}: {statuses:?}");
    }
    // No 5xx with the credential service up (Schemathesis checks it too, via not_a_server_error).
    let server_errors = run
        .entries
        .iter()
        .filter(|e| e["response"]["status"].as_u64().is_some_and(|s| s >= 500))
        .count();
    assert_eq!(server_errors, 0);
}

#[test]
fn without_a_valid_token_every_operation_answers_401() {
    let stack = Stack::start();
    let args = ["--mode", "positive", "--max-examples", "25"];
    // No Authorization header at all: 401 `token-missing`.
    let mut none = args.to_vec();
    none.extend(["--generation-with-security-parameters", "false"]);
    let run = schemathesis(stack.envoy.port, "unauthenticated.toml", "", &none);
    for entry in &run.entries {
        assert!(!Run::sent_authorization(entry), "{}", entry["request"]);
        assert_eq!(entry["response"]["status"], 401, "{}", entry["request"]);
        let body: Value =
            serde_json::from_str(entry["response"]["content"]["text"].as_str().unwrap()).unwrap();
        assert_eq!(body["errors"][0]["code"], "token-missing");
    }
    // The bearer values Schemathesis generates: none is a token the filter accepts.
    let run = schemathesis(stack.envoy.port, "unauthenticated.toml", "", &args);
    for entry in &run.entries {
        assert!(Run::sent_authorization(entry), "{}", entry["request"]);
        assert_eq!(entry["response"]["status"], 401, "{}", entry["request"]);
    }
}

/// The create operation's code sample is the README's curl, line for line.
#[test]
fn the_documents_example_is_the_readmes_curl() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let doc = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    let curl: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("TOKEN=$(make -s token)"))
        .take_while(|l| !l.starts_with("# HTTP/1.1"))
        .collect();
    assert!(curl.len() >= 4, "the README's curl is gone");
    for line in curl {
        assert!(
            doc.lines().any(|d| d.trim_start() == line.trim_start()),
            "docs/openapi.yaml lacks the README's line {line:?}"
        );
    }
    assert!(doc.contains("value: { pin: '8299' }"));
}
