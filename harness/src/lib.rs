//! End-to-end harness: a real Envoy (from the project's virtualenv) running the release `.wasm`,
//! the reference credential service, and a raw HTTP/1.1 client that controls every byte sent.
//! A dev-dependency of otp-filter: its tests (`use harness::*;`) and its benches use it.
//!
//! Every process is started on ports the OS picks, and killed when its handle drops (or, should
//! the test thread die, by the kernel through PR_SET_PDEATHSIG).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod postgres;

pub const CALLOUT_AUTH: &str = "Bearer dev-only-credential-secret";
pub const INTROSPECTION_SECRET: &str = "dev-only-introspection-secret";

/// The repository root: the parent of this crate's directory (`harness/`).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("harness/ lies in the repository root")
        .to_path_buf()
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `make test`, which builds the .wasm, the credential service and the Envoy venv first",
        path.display()
    );
    path
}

pub fn envoy_bin() -> PathBuf {
    built(root().join(".venv/bin/envoy"))
}
/// The release .wasm, or the build `OTP_FILTER_WASM` names (an A/B of two builds, or the
/// `dist/` artifact of `make release`).
pub fn wasm() -> PathBuf {
    match std::env::var_os("OTP_FILTER_WASM") {
        Some(path) => built(PathBuf::from(path)),
        None => built(root().join("target/wasm32-wasip1/release/otp_filter.wasm")),
    }
}
pub fn service_bin() -> PathBuf {
    built(root().join("target/release/credential-service"))
}
pub fn token_bin() -> PathBuf {
    built(root().join("target/release/demo-token"))
}

/// Runs the child in its own process group and has the kernel kill it if this thread dies.
fn guarded(cmd: &mut Command) -> &mut Command {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// A child process that is killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "otp-filter-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// The reference credential service

pub struct CredentialService {
    pub port: u16,
    /// The database URL it was started with (a fresh SQLite file unless the caller gave one).
    pub database_url: String,
    _proc: Proc,
}

pub fn dev_jwks_file() -> PathBuf {
    built(root().join("envoy/dev-keys/jwks.json"))
}

/// A fresh SQLite database URL in a scratch directory.
pub fn scratch_sqlite_url() -> String {
    format!(
        "sqlite://{}",
        scratch_dir().join("credentials.db").display()
    )
}

impl CredentialService {
    /// Starts the release service on a fresh SQLite store with the demo users; it publishes the
    /// dev JWKS unless `extra_args` name another file.
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_bin(&service_bin(), extra_args, &[])
    }

    /// Starts `bin` (a credential-service binary) with the test auth and introspection secrets
    /// and `env`, on `--database-url` from `extra_args` or else a fresh SQLite file, seeding the
    /// demo users unless `extra_args` contain `--no-seed` (which is not passed on).
    pub fn start_bin(bin: &std::path::Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin);
        let args: Vec<&str> = extra_args
            .iter()
            .copied()
            .filter(|a| *a != "--no-seed")
            .collect();
        cmd.args(["--listen", "127.0.0.1:0"]).args(&args);
        if !extra_args.contains(&"--jwks-file") {
            cmd.arg("--jwks-file").arg(dev_jwks_file());
        }
        let database_url = match extra_args.iter().position(|a| *a == "--database-url") {
            Some(i) => extra_args[i + 1].to_owned(),
            None => {
                let url = scratch_sqlite_url();
                cmd.args(["--database-url", &url]);
                url
            }
        };
        if !extra_args.contains(&"--no-seed") && !extra_args.contains(&"--seed-demo-users") {
            cmd.arg("--seed-demo-users");
        }
        cmd.env("CREDENTIAL_SERVICE_AUTH", CALLOUT_AUTH)
            .env("INTROSPECTION_CLIENT_SECRET", INTROSPECTION_SECRET)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            // HARNESS_SERVICE_LOGS=1 shows the service's log lines, for debugging a test.
            .stderr(match std::env::var_os("HARNESS_SERVICE_LOGS") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            });
        let mut child = guarded(&mut cmd).spawn().expect("start credential-service");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from credential-service: {line:?}"));
        CredentialService {
            port,
            database_url,
            _proc: Proc(child),
        }
    }

    /// The sum of the Prometheus samples (`GET /metrics`) whose name is `name` and whose labels
    /// include every `key="value"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> u64 {
        get(self.port, "/metrics")
            .text()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// `GET /v1/stats`: how many checks of each kind reached the store.
    pub fn stats(&self) -> Value {
        get(self.port, "/v1/stats").json()
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy

pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
    _proc: Proc,
}

/// Secrets that must never appear in Envoy's log, whatever the test did: any JWT (they all start
/// with the base64 of `{"`), the demo password and the dev-only keys and shared secrets.
const NEVER_LOGGED: [&str; 5] = [
    "eyJ",
    "correct-horse-battery-staple",
    "yNndX/Qxq7uAJihwEVB9yzuMdouxMLJlp4HF25eDOQI=",
    "dev-only-credential-secret",
    "dev-only-introspection-secret",
];

impl Drop for Envoy {
    /// Every end-to-end test doubles as a log audit: on drop, Envoy's log (with wasm at debug) is
    /// scanned for secrets. Skipped when the test is already failing.
    fn drop(&mut self) {
        if thread::panicking() {
            return;
        }
        // Let the last lines reach the file (flush interval 50 ms).
        thread::sleep(Duration::from_millis(100));
        let log = self.log_text();
        for secret in NEVER_LOGGED {
            assert!(
                !log.contains(secret),
                "Envoy's log contains a secret ({}...)",
                &secret[..3]
            );
        }
    }
}

/// The shipped demo config with test ports and an absolute .wasm path; `edit` may change more.
/// The credential service also serves the JWKS.
pub fn demo_config(credential_port: u16, edit: impl FnOnce(String) -> String) -> String {
    demo_config_split(credential_port, credential_port, edit)
}

/// As `demo_config`, with the JWKS fetched from another port.
pub fn demo_config_split(
    credential_port: u16,
    jwks_port: u16,
    edit: impl FnOnce(String) -> String,
) -> String {
    config_file("envoy.yaml", credential_port, jwks_port, edit)
}

/// An Envoy YAML from `envoy/` with test ports and an absolute .wasm path. `aux_port` replaces the
/// port marked `# ... endpoint` (the JWKS or introspection endpoint); `edit` may change more.
pub fn config_file(
    name: &str,
    credential_port: u16,
    aux_port: u16,
    edit: impl FnOnce(String) -> String,
) -> String {
    let text = std::fs::read_to_string(root().join("envoy").join(name)).expect("envoy config");
    let aux = text
        .lines()
        .map(|line| match line.find("port_value: 10001 }  # ") {
            Some(i) if line.ends_with(" endpoint") => {
                format!("{}port_value: {aux_port} }}", &line[..i])
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let replaced = aux
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace(
            "port_value: 10001",
            &format!("port_value: {credential_port}"),
        )
        .replace(
            "filename: target/wasm32-wasip1/release/otp_filter.wasm",
            &format!("filename: {}", wasm().display()),
        );
    assert_ne!(
        text, replaced,
        "envoy/{name} no longer has the expected ports"
    );
    edit(replaced)
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; panics with its log if it exits instead.
    pub fn start(config: &str) -> Self {
        match Self::try_start(config) {
            Ok(envoy) => envoy,
            Err(log) => panic!("Envoy did not start:\n{log}"),
        }
    }

    /// Starts Envoy; `Err` carries its log when it exits before becoming ready.
    pub fn try_start(config: &str) -> Result<Self, String> {
        Self::try_start_with(config, 1, &[])
    }

    /// Starts Envoy with `workers` worker threads (one wasm VM each) and waits until it is ready.
    pub fn start_with_workers(config: &str, workers: u32) -> Self {
        match Self::try_start_with(config, workers, &[]) {
            Ok(envoy) => envoy,
            Err(log) => panic!("Envoy did not start:\n{log}"),
        }
    }

    /// Starts Envoy on `config` with `overlay` (YAML or JSON) merged into it by Envoy itself
    /// (`--config-yaml`: protobuf merge, lists appended), as Istio's pilot-agent hands Envoy a
    /// bootstrap override.
    pub fn start_merged(config: &str, overlay: &str) -> Self {
        match Self::try_start_with(config, 1, &["--config-yaml", overlay]) {
            Ok(envoy) => envoy,
            Err(log) => panic!("Envoy did not start:\n{log}"),
        }
    }

    fn try_start_with(config: &str, workers: u32, extra: &[&str]) -> Result<Self, String> {
        let dir = scratch_dir();
        let config_path = dir.join("envoy.yaml");
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        std::fs::write(&config_path, config).expect("write config");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--concurrency",
                &workers.to_string(),
                "--disable-hot-restart",
                "-l",
                "info",
            ])
            .args(["--component-log-level", "wasm:debug"])
            .args(extra)
            // The log file is flushed on this interval (default 10 s); tests read it.
            .args(["--file-flush-interval-msec", "50"])
            .arg("--log-path")
            .arg(&log)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("envoy.stderr")).expect("stderr file"));
        let mut child = Proc(guarded(&mut cmd).spawn().expect("start envoy"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.0.try_wait() {
                let stderr = std::fs::read_to_string(dir.join("envoy.stderr")).unwrap_or_default();
                return Err(std::fs::read_to_string(&log).unwrap_or_default() + &stderr);
            }
            if let Some(admin_port) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().rsplit(':').next()?.parse::<u16>().ok())
            {
                let ready = try_get(admin_port, "/ready").is_some_and(|r| r.status == 200);
                if ready {
                    let listeners = get(admin_port, "/listeners?format=json").json();
                    let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                        ["port_value"]
                        .as_u64()
                        .expect("listener port") as u16;
                    return Ok(Envoy {
                        port,
                        admin_port,
                        log,
                        _proc: child,
                    });
                }
            }
            assert!(Instant::now() < deadline, "Envoy not ready after 30 s");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the filter has token keys: a well-signed token is then refused for its Accept
    /// header (406) rather than for missing keys (500 `jwks-unavailable`). Nothing reaches the
    /// credential service's verify path.
    pub fn wait_for_keys(&self) {
        let auth = format!("Bearer {}", token());
        let probe = request(
            "POST",
            OTP_PATH,
            &[("authorization", &auth), ("accept", "text/html")],
            Some("{}"),
        );
        wait_for("the filter to load its token keys", || {
            send(self.port, &probe).status == 406
        });
    }

    /// The filter's counters from the admin endpoint, by name without the `wasmcustom.` prefix.
    pub fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        let stats = get(self.admin_port, "/stats?format=json&filter=otp_filter").json();
        stats["stats"]
            .as_array()
            .expect("stats")
            .iter()
            .filter_map(|s| {
                let name = s["name"]
                    .as_str()?
                    .trim_start_matches("wasmcustom.")
                    .to_string();
                Some((name, s["value"].as_u64()?))
            })
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The TEST-ONLY crash build (`make build-crash-test`): the release logic plus the switches of
/// `x-otp-filter-crash` (see the adapter). Never deployed.
pub fn crash_wasm() -> PathBuf {
    let path = root().join("target/wasm32-wasip1/crash-test/otp_filter.wasm");
    assert!(
        path.exists(),
        "{} is missing: run `make build-crash-test` (part of `make test`)",
        path.display()
    );
    path
}

/// `config` (any shipped Envoy YAML) with the crash build in place of the release `.wasm`.
pub fn with_crash_wasm(config: String) -> String {
    let release = format!("filename: {}", wasm().display());
    assert!(
        config.contains(&release),
        "the config loads the release .wasm"
    );
    config.replace(&release, &format!("filename: {}", crash_wasm().display()))
}

/// `config` (any shipped Envoy YAML) with the demo's gated paths (PIN change, user deletion,
/// payments) routed to a real upstream on `upstream_port` (an `Echo`, which reads every body)
/// instead of the stand-in `direct_response`s, which answer without reading the body.
pub fn with_gated_upstream(config: String, upstream_port: u16) -> String {
    let routes = r#"              - match: { path: "/user/2021-2/user/pin" }
                route: { cluster: echo }
              - match: { path: "/user/2021-2/user" }
                route: { cluster: echo }
              - match: { prefix: "/pay/" }
                route: { cluster: echo }
"#;
    let cluster = format!(
        r#"
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }}
"#
    );
    let anchor = "              # PACE's user API.";
    assert!(config.contains(anchor), "the config has the user API route");
    config.replacen(anchor, &format!("{routes}{anchor}"), 1) + &cluster
}

/// The three ways the filter can check a token, each with its shipped config: it verifies the JWS
/// itself, trusts Envoy's `jwt_authn`, or asks an RFC 7662 introspection endpoint (the reference
/// credential service serves the JWKS and the endpoint).
pub const TOKEN_MODES: [&str; 3] = [
    "envoy.yaml",
    "envoy-jwt-authn.yaml",
    "envoy-introspection.yaml",
];

/// Envoy on the shipped config `file` in front of `service` (also its JWKS or introspection
/// endpoint), ready to mint: a demo token gets a 201 (jwt_authn fetches its keys on first use).
pub fn mode_envoy(
    file: &str,
    service: &CredentialService,
    edit: impl FnOnce(String) -> String,
) -> Envoy {
    let envoy = Envoy::start(&config_file(file, service.port, service.port, edit));
    wait_for(&format!("{file} to mint"), || {
        create_otp(envoy.port, &token(), r#"{"pin":"8299"}"#).status == 201
    });
    envoy
}

/// Envoy with the shipped config in front of a fresh credential service.
pub struct Stack {
    pub envoy: Envoy,
    pub service: CredentialService,
}

impl Stack {
    pub fn start() -> Self {
        let service = CredentialService::start(&[]);
        let envoy = Envoy::start(&demo_config(service.port, |c| c));
        envoy.wait_for_keys();
        Stack { envoy, service }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens (through the same demo-token binary as `make token`)

/// The project venv's Python (`make test` creates it) run in the repository with `args`.
pub fn venv_python(args: &[&str]) -> std::process::Output {
    Command::new(built(root().join(".venv/bin/python")))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run the project venv's python")
}

/// `venv_python`, which must succeed, with its output read as JSON.
pub fn venv_python_json(args: &[&str]) -> Value {
    let out = venv_python(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the venv's python")
}

pub fn token_with(args: &[&str]) -> String {
    let out = Command::new(token_bin())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run demo-token");
    assert!(
        out.status.success(),
        "demo-token {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 token")
        .trim()
        .to_string()
}

pub fn token() -> String {
    token_with(&[])
}

pub fn token_claims(claims: &str) -> String {
    token_with(&["--claims", claims])
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 client

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds a request with `content-length` for the body (unless a header already frames it).
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    if let (Some(body), false) = (body, framed) {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    if let Some(body) = body {
        out.push_str(body);
    }
    out.into_bytes()
}

/// Sends `parts` on one connection, pausing `gap` between them, and reads one response.
pub fn send_parts(port: u16, parts: &[&[u8]], gap: Duration) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            thread::sleep(gap);
        }
        stream.write_all(part).expect("write");
    }
    try_read_response(&mut stream).unwrap_or_else(|e| panic!("reading the response: {e}"))
}

/// A keep-alive HTTP/1.1 connection, for measuring many requests without connection setup.
pub struct Conn(TcpStream);

impl Conn {
    pub fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        Conn(stream)
    }

    pub fn exchange(&mut self, raw: &[u8]) -> Response {
        self.0.write_all(raw).expect("write");
        try_read_response(&mut self.0).expect("response")
    }
}

pub fn send(port: u16, raw: &[u8]) -> Response {
    send_parts(port, &[raw], Duration::ZERO)
}

pub fn get(port: u16, path: &str) -> Response {
    send(port, &request("GET", path, &[], None))
}

/// Like `get`, but `None` on any I/O failure (for polling a process that may be exiting).
pub fn try_get(port: u16, path: &str) -> Option<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(&request("GET", path, &[], None)).ok()?;
    try_read_response(&mut stream).ok()
}

fn try_read_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = find("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Create OTP requests and assertions

pub const OTP_PATH: &str = "/user/2021-2/user/otp";

/// The documentation's curl: bearer token, JSON content type, JSON body.
pub fn create_otp(port: u16, token: &str, body: &str) -> Response {
    let auth = format!("Bearer {token}");
    send(
        port,
        &request(
            "POST",
            OTP_PATH,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some(body),
        ),
    )
}

/// Asserts a JSON:API error document: status, code, content type, and id == Request-Id (an xid).
pub fn assert_error(response: &Response, status: u16, code: &str) -> Value {
    assert_eq!(
        (response.status, response.header("content-type")),
        (status, Some("application/vnd.api+json")),
        "body: {}",
        response.text()
    );
    let body = response.json();
    let errors = body["errors"].as_array().expect("errors array");
    assert_eq!(errors.len(), 1, "{body}");
    let error = &errors[0];
    let mut keys: Vec<&str> = error
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let expected: &[&str] = if error.get("source").is_some() {
        &["code", "detail", "id", "source", "status", "title"]
    } else {
        &["code", "detail", "id", "status", "title"]
    };
    assert_eq!(keys, expected, "{body}");
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["status"], status.to_string(), "{body}");
    assert!(
        error["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        error["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    let request_id = response.header("request-id").expect("request-id header");
    assert_eq!(error["id"], request_id, "{body}");
    assert!(is_xid(request_id), "{request_id}");
    assert!(body.get("data").is_none());
    error.clone()
}

pub fn is_xid(s: &str) -> bool {
    s.len() == 20 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v'))
}

/// Asserts a 201 with a code of `digits` digits and an `expiresAt` in the future.
pub fn assert_created(response: &Response) -> (String, String) {
    assert_eq!(response.status, 201, "body: {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(is_xid(response.header("request-id").unwrap_or("")));
    let body = response.json();
    let object = body.as_object().expect("object");
    assert_eq!(object.len(), 2, "{body}");
    let otp = body["otp"].as_str().expect("otp").to_string();
    assert!(
        otp.len() == 6 && otp.bytes().all(|b| b.is_ascii_digit()),
        "{otp}"
    );
    let expires = body["expiresAt"].as_str().expect("expiresAt").to_string();
    assert_eq!(expires.len(), 24, "{expires}");
    assert!(
        expires.ends_with('Z') && expires.as_bytes()[19] == b'.',
        "{expires}"
    );
    (otp, expires)
}

/// A one-shot HTTP stub standing in for a misbehaving credential service: it answers every
/// request on every connection with `raw` after `delay`.
pub struct Stub {
    pub port: u16,
}

impl Stub {
    pub fn start(raw: &'static [u8], delay: Duration) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    let _ = conn.set_nodelay(true);
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        thread::sleep(delay);
                        if conn.write_all(raw).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Stub { port }
    }
}

/// An upstream that reads every request whole (head and `content-length` body, on keep-alive
/// connections) and answers 200 with the request's own bytes as the body, so a test can see
/// exactly what Envoy forwarded, and how many requests arrived.
pub struct Echo {
    pub port: u16,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Echo {
    pub fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let counter = counter.clone();
                thread::spawn(move || echo_connection(conn, &counter));
            }
        });
        Echo { port, seen }
    }

    /// Requests read whole so far.
    pub fn requests(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn echo_connection(mut conn: TcpStream, seen: &std::sync::atomic::AtomicUsize) {
    let _ = conn.set_nodelay(true);
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    loop {
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut echoed = head.into_bytes();
        echoed.extend_from_slice(&body);
        let mut out = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-echo: yes\r\ncontent-length: {}\r\n\r\n", echoed.len()).into_bytes();
        out.extend_from_slice(&echoed);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}
pub mod bench;
mod fleet;
pub mod h2c;

pub use fleet::{fleet_config, Fleet};
pub use postgres::Postgres;

/// A peer that answers every request with `prefix` (a status line, headers that promise a longer
/// body, part of it) and then closes the connection, or first stalls for `stall`: an answer cut
/// short. Returns its port.
pub fn cut_short(prefix: &'static [u8], stall: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind cut-short peer");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = conn.read(&mut [0u8; 8192]);
                let _ = conn.write_all(prefix);
                thread::sleep(stall);
            });
        }
    });
    port
}

/// A static answer: `status` with a JSON content type and `body`, for misbehaving-peer stubs.
pub fn answer(status: &str, body: &str) -> &'static [u8] {
    Box::leak(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into_boxed_slice(),
    )
}
