//! Shared by the credential service's integration tests: the debug binary as a real process on
//! a real store, SQLite (a scratch file) or PostgreSQL (a throwaway cluster), and raw HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub use harness::postgres::Postgres;
pub use harness::{request, send, CredentialService, Response, CALLOUT_AUTH};
use serde_json::json;

pub const PEPPER_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="; // 32 x 'A'
pub const PEPPER_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="; // 32 x 'B'

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_credential-service"))
}

/// A store for one test: a fresh SQLite file, or a throwaway PostgreSQL cluster.
pub struct Db {
    pub url: String,
    pub pg: Option<Postgres>,
}

impl Db {
    pub fn sqlite() -> Db {
        Db {
            url: harness::scratch_sqlite_url(),
            pg: None,
        }
    }

    pub fn postgres() -> Db {
        let pg = Postgres::start();
        Db {
            url: pg.url(),
            pg: Some(pg),
        }
    }

    /// The service on this store (demo users seeded), with `args` and `env`.
    pub fn start(&self, args: &[&str], env: &[(&str, &str)]) -> CredentialService {
        let mut all = vec!["--database-url", self.url.as_str()];
        all.extend_from_slice(args);
        CredentialService::start_bin(bin(), &all, env)
    }

    /// `credential-service users …` on this store, with `stdin` and `env`.
    pub fn users(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
        let mut child = Command::new(bin())
            .arg("users")
            .args(["--database-url", &self.url])
            .args(args)
            .env_remove("CREDENTIAL_SERVICE_PEPPER")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run users");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// The library's store on the same database, for looking inside.
    pub fn store(&self) -> (tokio::runtime::Runtime, credential_service::store::Store) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt
            .block_on(credential_service::store::Store::connect(&self.url, 2))
            .unwrap();
        (rt, store)
    }

    /// (failures, locked_until_ms, hard_locked) of `user`.
    pub fn budget(&self, user: &str) -> Option<(i64, i64, bool)> {
        let (rt, store) = self.store();
        rt.block_on(store.budget(user)).unwrap()
    }
}

/// Runs `$body(&Db)` once per engine, as two tests.
#[macro_export]
macro_rules! on_both_engines {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn sqlite() {
                ($body)(&Db::sqlite());
            }
            #[test]
            fn postgres() {
                ($body)(&Db::postgres());
            }
        }
    };
}

pub fn post(port: u16, path: &str, body: &str) -> Response {
    send(
        port,
        &request(
            "POST",
            path,
            &[
                ("authorization", CALLOUT_AUTH),
                ("content-type", "application/json"),
            ],
            Some(body),
        ),
    )
}

/// The verify answer's body.
pub fn verify(port: u16, user: &str, kind: &str, secret: &str) -> String {
    let r = post(
        port,
        "/v1/credentials/verify",
        &json!({"user": user, "kind": kind, "secret": secret}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

pub fn consume(port: u16, user: &str, key: &str, step: u64, expires_at_ms: u64) -> String {
    let r = post(
        port,
        "/v1/otp/consume",
        &json!({"user": user, "keyId": key, "step": step, "expiresAtMs": expires_at_ms})
            .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

pub fn failure(port: u16, user: &str) -> String {
    let r = post(port, "/v1/otp/failure", &json!({"user": user}).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub const VALID: &str = r#"{"result":"valid"}"#;
pub const INVALID: &str = r#"{"result":"invalid"}"#;
pub const HARD: &str = r#"{"result":"locked","retryAfterSeconds":86400}"#;

pub fn is_locked(answer: &str) -> bool {
    answer.starts_with(r#"{"result":"locked","retryAfterSeconds":"#)
}

/// `n` requests at once, each on its own connection; the answers.
pub fn parallel(n: usize, f: impl Fn(usize) -> String + Send + Sync + 'static) -> Vec<String> {
    let f = std::sync::Arc::new(f);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}
