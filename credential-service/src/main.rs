//! `credential-service`: a small reference credential service for otp-filter.
//!
//! ```text
//! credential-service [--listen 127.0.0.1:10001] [--max-failures 10] [--lockout-seconds 300]
//!                    [--jwks-file PATH] [--introspection-client otp-filter]
//!                    [--introspection-key envoy/dev-keys/rs256-DEV-ONLY.pem]
//!                    [--introspection-delay-ms 0]
//! credential-service hash        # reads one secret on stdin, prints its argon2id PHC string
//! ```
//!
//! Env `CREDENTIAL_SERVICE_AUTH`: when set and non-empty, verify requests must carry an
//! `authorization` header equal to it. See `protocol.rs` for the wire contract.
//!
//! For demos and tests it also stands in for an identity provider: `GET /jwks.json` serves
//! the `--jwks-file` as it is at that moment, and `POST /v1/introspect` is an RFC 7662
//! introspection endpoint (see `introspect.rs`), enabled by env
//! `INTROSPECTION_CLIENT_SECRET`.

mod http;
mod introspect;
mod lockout;
mod protocol;
mod service;
mod store;

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::Argon2;

use crate::introspect::Introspector;
use crate::lockout::LockoutPolicy;
use crate::service::Service;
use crate::store::Store;

const USAGE: &str = "usage:
  credential-service [--listen ADDR:PORT] [--max-failures N] [--lockout-seconds N]
                     [--jwks-file PATH] [--introspection-client ID]
                     [--introspection-key PATH] [--introspection-delay-ms N]
      defaults: --listen 127.0.0.1:10001 --max-failures 10 --lockout-seconds 300
                --introspection-client otp-filter
                --introspection-key envoy/dev-keys/rs256-DEV-ONLY.pem
                --introspection-delay-ms 0
      env CREDENTIAL_SERVICE_AUTH: if set and non-empty, required `authorization` header value
      --jwks-file: served as-is at GET /jwks.json, re-read on every request (503 without it)
      env INTROSPECTION_CLIENT_SECRET: if set and non-empty, enables POST /v1/introspect for
          HTTP Basic client ID:SECRET; active = RS256-signed by --introspection-key, unexpired
  credential-service hash
      reads one secret from stdin, prints its argon2id PHC string";

const AUTH_ENV: &str = "CREDENTIAL_SERVICE_AUTH";
const INTROSPECTION_SECRET_ENV: &str = "INTROSPECTION_CLIENT_SECRET";
/// The dev key that signs introspectable tokens, relative to the repo root.
const DEFAULT_INTROSPECTION_KEY: &str = "envoy/dev-keys/rs256-DEV-ONLY.pem";
/// Upper bound of `--introspection-delay-ms`: enough for any timeout test, and a slow
/// answer holds a worker thread for that long.
const MAX_INTROSPECTION_DELAY_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServeConfig {
    listen: String,
    max_failures: u32,
    lockout_seconds: u64,
    jwks_file: Option<String>,
    introspection_client: String,
    /// `None`: [`DEFAULT_INTROSPECTION_KEY`].
    introspection_key: Option<String>,
    introspection_delay_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:10001".to_owned(),
            max_failures: 10,
            lockout_seconds: 300,
            jwks_file: None,
            introspection_client: "otp-filter".to_owned(),
            introspection_key: None,
            introspection_delay_ms: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Serve(ServeConfig),
    Hash,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut cfg = ServeConfig::default();
    let mut it = args.iter();
    match args.first().map(String::as_str) {
        Some("hash") if args.len() == 1 => return Ok(Command::Hash),
        Some("hash") => return Err("`hash` takes no arguments".to_owned()),
        _ => {}
    }
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        if matches!(flag, "-h" | "--help") {
            return Ok(Command::Help);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--listen" => cfg.listen = value()?,
            "--max-failures" => {
                let v = value()?;
                cfg.max_failures = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("--max-failures: not a positive integer: {v:?}"))?;
            }
            "--lockout-seconds" => {
                let v = value()?;
                cfg.lockout_seconds =
                    v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("--lockout-seconds: not a positive integer: {v:?}")
                    })?;
            }
            "--jwks-file" => {
                let v = value()?;
                if v.is_empty() {
                    return Err("--jwks-file: empty path".to_owned());
                }
                cfg.jwks_file = Some(v);
            }
            "--introspection-client" => {
                let v = value()?;
                // RFC 7617: a Basic user-id cannot contain a colon.
                if v.is_empty() || v.contains(':') || v.chars().any(char::is_control) {
                    return Err(format!(
                        "--introspection-client: must be non-empty, without ':' or control characters: {v:?}"
                    ));
                }
                cfg.introspection_client = v;
            }
            "--introspection-key" => {
                let v = value()?;
                if v.is_empty() {
                    return Err("--introspection-key: empty path".to_owned());
                }
                cfg.introspection_key = Some(v);
            }
            "--introspection-delay-ms" => {
                let v = value()?;
                cfg.introspection_delay_ms = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_INTROSPECTION_DELAY_MS)
                    .ok_or_else(|| {
                        format!(
                            "--introspection-delay-ms: not an integer from 0 to {MAX_INTROSPECTION_DELAY_MS}: {v:?}"
                        )
                    })?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Command::Serve(cfg))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match parse_args(&args) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            Ok(())
        }
        Ok(Command::Hash) => hash(),
        Ok(Command::Serve(cfg)) => serve(&cfg),
        Err(msg) => Err(format!("{msg}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("credential-service: {msg}");
            ExitCode::from(2)
        }
    }
}

/// `credential-service hash`: one secret on stdin (trailing newline stripped) → PHC string.
fn hash() -> Result<(), String> {
    let mut input = String::new();
    io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let secret = input
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&input);
    if secret.is_empty() {
        return Err("empty secret on stdin".to_owned());
    }
    let salt = SaltString::generate(&mut OsRng);
    let phc = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| format!("hashing: {e}"))?;
    println!("{phc}");
    Ok(())
}

/// A non-empty environment variable, `None` when unset or empty.
fn env_value(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(Some(v)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// The default key path: relative to the current directory (the repo root, normally), else
/// relative to this crate's source tree, as `demo-token` finds its keys.
fn default_introspection_key() -> PathBuf {
    let here = PathBuf::from(DEFAULT_INTROSPECTION_KEY);
    if here.exists() {
        return here;
    }
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_INTROSPECTION_KEY);
    if from_source.exists() {
        from_source
    } else {
        here
    }
}

/// The introspector, when `INTROSPECTION_CLIENT_SECRET` enables it. The key is loaded now,
/// so a bad key stops the start instead of failing every request; an explicit
/// `--introspection-key` is checked even while the endpoint is disabled, to catch typos.
fn introspector(cfg: &ServeConfig) -> Result<Option<Introspector>, String> {
    let secret = env_value(INTROSPECTION_SECRET_ENV)?;
    if secret.is_none() && cfg.introspection_key.is_none() {
        return Ok(None);
    }
    let path = cfg
        .introspection_key
        .as_ref()
        .map_or_else(default_introspection_key, PathBuf::from);
    let key = introspect::load_public_key(&path)?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    Introspector::new(
        cfg.introspection_client.clone(),
        secret,
        key,
        Duration::from_millis(cfg.introspection_delay_ms),
    )
    .map(Some)
}

fn serve(cfg: &ServeConfig) -> Result<(), String> {
    let auth = env_value(AUTH_ENV)?;
    let policy = LockoutPolicy {
        max_failures: cfg.max_failures,
        lockout: Duration::from_secs(cfg.lockout_seconds),
    };
    let store = Store::embedded(policy).map_err(|e| format!("embedded user store: {e}"))?;
    let introspector = introspector(cfg)?;
    let introspection = if introspector.is_some() { "on" } else { "off" };
    let service = Service::new(store, auth)
        .with_jwks_file(cfg.jwks_file.as_ref().map(PathBuf::from))
        .with_introspector(introspector);

    let listener = TcpListener::bind(&cfg.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;

    // Paths and the client id are not secrets; the client secret is never printed.
    eprintln!(
        "credential-service: max-failures={} lockout-seconds={} auth={} jwks-file={} introspection={}",
        cfg.max_failures,
        cfg.lockout_seconds,
        if service.requires_auth() {
            "required"
        } else {
            "off"
        },
        cfg.jwks_file.as_deref().map_or_else(|| "-".to_owned(), |p| quoted(Some(p))),
        if introspection == "on" {
            format!(
                "on client={} delay-ms={}",
                quoted(Some(&cfg.introspection_client)),
                cfg.introspection_delay_ms
            )
        } else {
            "off".to_owned()
        }
    );
    // The one stdout line tests parse.
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    drop(stdout);

    // Every connection has its own thread (see `http.rs`), but argon2 is CPU-bound and
    // needs 19 MiB a check: at most a few more requests than cores are handled at once.
    // /healthz and /v1/stats skip the queue, so they answer while verifications run.
    let workers = thread::available_parallelism()
        .map_or(2, usize::from)
        .saturating_mul(2)
        .clamp(4, 16);
    let slots = Slots::new(workers);
    http::serve(listener, http::Limits::default(), move |exchange| {
        serve_one(&service, &slots, exchange);
    })
}

/// A counting semaphore bounding the requests handled at once.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Self {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

fn serve_one(service: &Service, slots: &Slots, exchange: &mut http::Exchange<'_>) {
    let method = exchange.method().to_owned();
    let url = exchange.target().to_owned();
    let authorization = exchange.header("authorization").map(str::to_owned);
    let request_id = exchange.header("request-id").map(str::to_owned);

    let req = service::Request {
        method: &method,
        url: &url,
        authorization: authorization.as_deref(),
    };
    let path = url.split_once('?').map_or(url.as_str(), |(p, _)| p);
    let cheap = matches!(path, service::HEALTH_PATH | service::STATS_PATH);
    let slot = (!cheap).then(|| slots.acquire());
    let answer = service.handle(&req, &mut || exchange.read_body());
    drop(slot);

    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(allow) = answer.allow {
        headers.push(("allow", allow));
    }
    if let Some(challenge) = answer.www_authenticate {
        headers.push(("www-authenticate", challenge));
    }
    let sent = exchange.respond(&http::Reply {
        status: answer.status,
        content_type: answer.content_type,
        headers: &headers,
        body: answer.body.as_bytes(),
    });

    // One line per request. Never the body, the secret, a token or the authorization header.
    let line = format!(
        "{} {} request-id={} user={} kind={} status={} result={}{}\n",
        clean(&method, 16),
        clean(path, 200),
        quoted(request_id.as_deref()),
        quoted(answer.user.as_deref()),
        answer.kind.map_or("-", |k| k.as_str()),
        answer.status,
        answer.result,
        match sent {
            Ok(()) => String::new(),
            Err(e) => format!(" write-error={}", clean(&e.to_string(), 200)),
        }
    );
    // stderr is unbuffered: one write per line, not one per formatted piece.
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Escapes control characters, quotes and backslashes, and truncates: client-supplied values
/// must not be able to forge log lines.
fn clean(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn quoted(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("\"{}\"", clean(v, 128)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn cli_defaults_and_flags() {
        assert_eq!(
            parse_args(&[]),
            Ok(Command::Serve(ServeConfig {
                listen: "127.0.0.1:10001".into(),
                max_failures: 10,
                lockout_seconds: 300,
                jwks_file: None,
                introspection_client: "otp-filter".into(),
                introspection_key: None,
                introspection_delay_ms: 0,
            }))
        );
        assert_eq!(
            parse_args(&args(&[
                "--listen",
                "127.0.0.1:0",
                "--max-failures=3",
                "--lockout-seconds",
                "5"
            ])),
            Ok(Command::Serve(ServeConfig {
                listen: "127.0.0.1:0".into(),
                max_failures: 3,
                lockout_seconds: 5,
                ..ServeConfig::default()
            }))
        );
        assert_eq!(
            parse_args(&args(&[
                "--jwks-file",
                "/tmp/jwks.json",
                "--introspection-client=filter-2",
                "--introspection-key",
                "k.pem",
                "--introspection-delay-ms",
                "2500",
            ])),
            Ok(Command::Serve(ServeConfig {
                jwks_file: Some("/tmp/jwks.json".into()),
                introspection_client: "filter-2".into(),
                introspection_key: Some("k.pem".into()),
                introspection_delay_ms: 2500,
                ..ServeConfig::default()
            }))
        );
        for bad in [
            &["--jwks-file"][..],
            &["--jwks-file="],
            &["--introspection-client", ""],
            &["--introspection-client", "a:b"],
            &["--introspection-key="],
            &["--introspection-delay-ms", "-1"],
            &["--introspection-delay-ms", "60001"],
            &["--introspection-delay-ms", "soon"],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(parse_args(&args(&["hash"])), Ok(Command::Hash));
        assert!(parse_args(&args(&["hash", "x"])).is_err());
        assert!(parse_args(&args(&["--max-failures", "0"])).is_err());
        assert!(parse_args(&args(&["--lockout-seconds", "-1"])).is_err());
        assert!(parse_args(&args(&["--listen"])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
        assert_eq!(parse_args(&args(&["--help"])), Ok(Command::Help));
    }

    #[test]
    fn log_values_are_cleaned() {
        assert_eq!(clean("demo-user", 10), "demo-user");
        assert_eq!(clean("a\nb\"c d\u{1b}", 10), "a\\nb\\\"c d\\u{1b}");
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(quoted(None), "-");
        assert_eq!(quoted(Some("x y")), "\"x y\"");
    }
}
