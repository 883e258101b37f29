//! (f): the do-it-yourself peer. What a platform team would build instead of the filter: a small
//! native Rust OTP service behind an Envoy route, doing the same work with the same code: the
//! token check (same verified-token cache), the body, the throttle, one callout to the credential
//! stub over a keep-alive connection, the mint and the JSON:API answer. It runs `otp_filter::flow`
//! natively, so the logic is identical and only the hosting differs.
//!
//! A thread per connection (Envoy keeps a small pool of keep-alive connections to it), each with
//! its own token cache and credential-stub connection, like one VM per Envoy worker. The throttle
//! state is one mutex-guarded map for the process, like Envoy's shared data.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::bench::head_end;

/// A random cache key, as the filter draws one per VM (std's per-process random SipHash keys).
fn rand_key() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        std::hash::RandomState::new()
            .build_hasher()
            .finish()
            .to_le_bytes()
    };
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&half());
    key[8..].copy_from_slice(&half());
    key
}
use otp_filter::config::{self, Config};
use otp_filter::flow::{self, Ctx, Exchange, RequestHead, Step, TokenState};
use otp_filter::request::request_id::{self, XidGenerator};
use otp_filter::state::store::{SharedStore, StoreError};
use otp_filter::state::{single_use, throttle};
use otp_filter::token::cache::ClaimsCache;
use otp_filter::token::jwks::RemoteJwks;

use crate::http::{content_length, header};

pub struct NativePeer {
    pub port: u16,
}

/// Envoy's shared-data semantics (a value and its CAS version per key) behind one mutex.
#[derive(Default)]
struct LockedStore(Mutex<HashMap<String, (Vec<u8>, u32)>>);

impl SharedStore for LockedStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let map = self.0.lock().map_err(|_| StoreError::Host)?;
        Ok(match map.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut map = self.0.lock().map_err(|_| StoreError::Host)?;
        let current = map.get(key).map(|(_, c)| *c);
        if cas.is_some_and(|c| c != 0 && Some(c) != current) {
            return Err(StoreError::CasMismatch);
        }
        let next = current.map_or(1, |c| c.wrapping_add(1).max(1));
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

struct Shared {
    config_text: String,
    env: HashMap<String, String>,
    jwks: Vec<u8>,
    stub_port: u16,
    store: LockedStore,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The filter's JSON configuration and environment, read from the shipped `envoy/envoy.yaml`.
fn shipped_config(yaml: &str) -> (String, HashMap<String, String>) {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let start = lines
        .iter()
        .position(|l| l.trim() == "value: |")
        .expect("envoy.yaml: the filter's `value: |` block");
    let block_indent = indent(lines[start]);
    let config: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > block_indent)
        .copied()
        .collect();
    let env = lines
        .iter()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(": \"")?;
            let value = rest.split('"').next()?;
            name.starts_with("OTP_")
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect();
    (config.join("\n"), env)
}

/// A blocking HTTP/1.1 exchange on a keep-alive connection: (status, body).
fn exchange(conn: &mut TcpStream, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    conn.write_all(request)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(&buf) {
            let length = content_length(&buf[..end]).unwrap_or(0);
            if buf.len() >= end + length {
                let status = std::str::from_utf8(&buf[9..12])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok((status, buf[end..end + length].to_vec()));
            }
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl NativePeer {
    /// `cache_entries` replaces the shipped verified-token cache size (the cold-token peer's 64).
    pub fn start(stub_port: u16, jwks_port: u16, cache_entries: Option<usize>) -> NativePeer {
        let yaml = std::fs::read_to_string(harness::root().join("envoy/envoy.yaml")).expect("yaml");
        let yaml = match cache_entries {
            Some(n) => crate::envoys::with_cache_entries(&yaml, n),
            None => yaml,
        };
        let (config_text, env) = shipped_config(&yaml);
        let mut jwks_conn = TcpStream::connect(("127.0.0.1", jwks_port)).expect("jwks service");
        let (status, jwks) = exchange(
            &mut jwks_conn,
            b"GET /jwks.json HTTP/1.1\r\nhost: credential-service\r\n\r\n",
        )
        .expect("fetch the JWKS");
        assert_eq!(status, 200, "JWKS fetch");
        let shared = Arc::new(Shared {
            config_text,
            env,
            jwks,
            stub_port,
            store: LockedStore::default(),
        });
        let config = shared.config();
        single_use::initialize(&shared.store, &config.single_use).expect("ledger");
        throttle::initialize(&shared.store, &config.throttle).expect("throttle");

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind peer");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let shared = Arc::clone(&shared);
                thread::spawn(move || Worker::new(&shared, n as u64).serve(conn));
            }
        });
        NativePeer { port }
    }
}

impl Shared {
    fn config(&self) -> Config {
        // The bench config raises max_failures to 100 for (g); the peer does the same.
        let text = self
            .config_text
            .replace(r#""max_failures": 5,"#, r#""max_failures": 100,"#);
        config::parse(text.as_bytes(), &|name| self.env.get(name).cloned()).expect("config")
    }
}

/// One connection's state: what one Envoy worker's VM holds for the filter.
struct Worker<'s> {
    shared: &'s Shared,
    config: Config,
    remote: RemoteJwks,
    cache: ClaimsCache,
    ids: XidGenerator,
    stub: TcpStream,
}

impl<'s> Worker<'s> {
    fn new(shared: &'s Shared, n: u64) -> Worker<'s> {
        let config = shared.config();
        let settings = config.token.remote_jwks.clone().expect("remote_jwks");
        let mut remote = RemoteJwks::new(settings);
        remote
            .on_answer(Some(200), &shared.jwks, now_ms())
            .expect("JWKS loads");
        let cache = ClaimsCache::new(
            config.token.cache_entries,
            Duration::from_secs(config.token.cache_seconds),
            rand_key(),
        );
        let stub = TcpStream::connect(("127.0.0.1", shared.stub_port)).expect("stub");
        let _ = stub.set_nodelay(true);
        Worker {
            shared,
            config,
            remote,
            cache,
            ids: XidGenerator::new((n ^ now_ms()).to_le_bytes()),
            stub,
        }
    }

    fn serve(mut self, mut conn: TcpStream) {
        let _ = conn.set_nodelay(true);
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        loop {
            while let Some(end) = head_end(&buf) {
                let length = content_length(&buf[..end]).unwrap_or(0);
                if buf.len() < end + length {
                    break;
                }
                let answer = self.handle(&buf[..end], &buf[end..end + length]);
                if conn.write_all(&answer).is_err() {
                    return;
                }
                buf.drain(..end + length);
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn handle(&mut self, head: &[u8], body: &[u8]) -> Vec<u8> {
        let text = |name| header(head, name).and_then(|v| std::str::from_utf8(v).ok());
        let line = head.split(|&b| b == b' ').collect::<Vec<_>>();
        let method = std::str::from_utf8(line[0]).unwrap_or("");
        let path = std::str::from_utf8(line[1]).unwrap_or("");
        let Some(route) = flow::route(&self.config, method, path) else {
            return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec();
        };
        let now = now_ms();
        let id = match text("request-id") {
            Some(id) if request_id::is_valid(id) => id.to_string(),
            _ => self.ids.next(now / 1000),
        };
        let request = RequestHead {
            method,
            authorization: text("authorization"),
            accept: text("accept"),
            content_type: text("content-type"),
            content_length: text("content-length"),
            verified_claims: None,
            otp_header: None,
            end_of_stream: body.is_empty(),
        };
        let ctx = Ctx {
            config: &self.config,
            store: &self.shared.store,
            now_ms: now,
        };
        let state = TokenState {
            remote_jwks: Some(&mut self.remote),
            verified: Some(&mut self.cache),
        };
        let (mut exchange, mut step) = Exchange::start(&ctx, route, state, &request, id);
        if matches!(step, Step::Wait) && !body.is_empty() {
            step = exchange.on_body(&ctx, body.len(), true, || Ok(body.to_vec()));
        }
        loop {
            step = match step {
                Step::Call(call) => {
                    let mut raw = String::new();
                    let (mut method, mut path) = ("POST", "/");
                    let mut rest = String::new();
                    for (name, value) in &call.headers {
                        match name.as_str() {
                            ":method" => method = value,
                            ":path" => path = value,
                            ":authority" => rest.push_str(&format!("host: {value}\r\n")),
                            _ => rest.push_str(&format!("{name}: {value}\r\n")),
                        }
                    }
                    let body = call.body.expose();
                    raw.push_str(&format!("{method} {path} HTTP/1.1\r\n{rest}"));
                    raw.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
                    let mut raw = raw.into_bytes();
                    raw.extend_from_slice(body);
                    let (status, answer) =
                        exchange_or_reconnect(&mut self.stub, &raw, self.shared.stub_port);
                    let ctx = Ctx {
                        config: &self.config,
                        store: &self.shared.store,
                        now_ms: now_ms(),
                    };
                    exchange.on_answer(&ctx, Some(&mut self.cache), status, &answer)
                }
                Step::Reply { reply, .. } => {
                    let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
                    for (name, value) in &reply.headers {
                        out.push_str(&format!("{name}: {value}\r\n"));
                    }
                    out.push_str(&format!("content-length: {}\r\n\r\n", reply.body.len()));
                    let mut out = out.into_bytes();
                    out.extend_from_slice(&reply.body);
                    return out;
                }
                Step::Wait | Step::Continue | Step::Forward => {
                    return b"HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n".to_vec();
                }
            };
        }
    }
}

/// The callout; a dropped keep-alive connection is reopened once.
fn exchange_or_reconnect(stub: &mut TcpStream, raw: &[u8], port: u16) -> (Option<u16>, Vec<u8>) {
    for _ in 0..2 {
        match exchange(stub, raw) {
            Ok((status, body)) => return (Some(status), body),
            Err(_) => {
                if let Ok(fresh) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = fresh.set_nodelay(true);
                    *stub = fresh;
                }
            }
        }
    }
    (None, Vec::new())
}
