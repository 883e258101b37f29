//! The thin layer between Envoy and `flow`. Only this module calls the host.
//!
//! Host calls go through `proxy_wasm::hostcalls`, which return `Result`s, rather than the trait
//! helpers, which `unwrap()`. Those wrappers still `panic!` on statuses they do not expect, so every
//! call made per request except `dispatch_http_call` goes through `host`, which returns every
//! status. Header values are read as bytes because the SDK's string getter panics on
//! non-UTF-8 (Envoy accepts obs-text bytes in header values): one odd header from a client would
//! otherwise kill the VM for every request on that worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use serde_json::{Map, Value};

use crate::claims_cache::ClaimsCache;
use crate::config::{self, Config, OtpSource};
use crate::credential::MAX_ANSWER_BYTES;
use crate::failure::Failure;
use crate::flow::{self, Ctx, Exchange, RequestHead, Route, Step, TokenState};
use crate::header_map;
use crate::host;
use crate::introspection::MAX_ANSWER_BYTES as MAX_INTROSPECTION_BYTES;
use crate::jsonapi::{self, Reply};
use crate::jwks::{RemoteJwks, MAX_JWKS_BYTES};
use crate::jwt_authn_metadata;
use crate::metrics;
use crate::request_id::{self, XidGenerator};
use crate::shared_store::{SharedStore, StoreError};
use crate::single_use;
use crate::throttle;
use crate::token::TokenSource;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_HASH: &str = env!("OTP_FILTER_GIT_HASH");

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    // A panic traps the VM; say so loudly before it dies. The message is ours (filter code denies
    // panics, so this fires only for a dependency bug) and carries no request data.
    std::panic::set_hook(Box::new(|info| {
        let _ = host::log(LogLevel::Critical as u32, &format!("otp-filter panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new()) });
}}

fn log(level: LogLevel, message: &str) {
    // Logging failing is not worth failing a request over.
    let _ = host::log(level as u32, message);
}

/// Envoy's clock in ms; `None` when it cannot be read. Nothing time-bound is ever decided without
/// it: requests fail closed (`clock-unavailable`), timers skip their turn.
fn now_ms() -> Option<u64> {
    host::now_ns().ok().map(|ns| ns / 1_000_000)
}

struct Root {
    config: Option<Rc<Config>>,
    stats: Option<Rc<Stats>>,
    /// The fetched key set, shared with this VM's streams; `None` without `remote_jwks`.
    remote: Option<Rc<RefCell<RemoteJwks>>>,
    /// Tokens already verified (signature, or introspection), shared with this VM's streams.
    verified: Option<Rc<RefCell<ClaimsCache>>>,
    ids: Rc<RefCell<XidGenerator>>,
    last_sweep_ms: u64,
}

/// How often the root context checks whether the JWKS is due for a fetch. The check is a few
/// comparisons; the fetch schedule itself lives in `RemoteJwks`.
const TICK: Duration = Duration::from_millis(500);

/// How often expired single-use records and forgotten throttle records are swept.
const SWEEP_EVERY_MS: u64 = 30_000;

/// Stat ids, defined once per VM (Envoy shares the stats themselves across VMs by name).
struct Stats {
    outcomes: HashMap<&'static str, u32>,
    credential: HashMap<&'static str, u32>,
    jwks_ok: u32,
    jwks_failed: u32,
    corrupt_fenced: u32,
    single_use_records: u32,
    throttled_users: u32,
    credential_latency_ms: u32,
    filter_time_us: u32,
}

impl Stats {
    fn define() -> Result<Stats, Status> {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name);
        let mut outcomes = HashMap::new();
        for outcome in metrics::all_outcomes() {
            outcomes.insert(outcome, counter(&metrics::outcome(outcome))?);
        }
        let mut credential = HashMap::new();
        for result in metrics::CREDENTIAL_RESULTS {
            credential.insert(result, counter(&metrics::credential(result))?);
        }
        Ok(Stats {
            outcomes,
            credential,
            jwks_ok: counter(metrics::JWKS_FETCH_OK)?,
            jwks_failed: counter(metrics::JWKS_FETCH_FAILED)?,
            corrupt_fenced: counter(metrics::SINGLE_USE_CORRUPT_FENCED)?,
            single_use_records: hostcalls::define_metric(
                MetricType::Gauge,
                metrics::SINGLE_USE_RECORDS,
            )?,
            throttled_users: hostcalls::define_metric(MetricType::Gauge, metrics::THROTTLED_USERS)?,
            credential_latency_ms: hostcalls::define_metric(
                MetricType::Histogram,
                metrics::CREDENTIAL_LATENCY_MS,
            )?,
            filter_time_us: hostcalls::define_metric(
                MetricType::Histogram,
                metrics::FILTER_TIME_US,
            )?,
        })
    }

    // Stats are best effort: a failed increment must never fail a request.
    fn count(&self, id: Option<&u32>) {
        if let Some(id) = id {
            let _ = host::increment_metric(*id, 1);
        }
    }

    fn outcome(&self, outcome: &str) {
        self.count(self.outcomes.get(outcome));
    }

    fn credential(&self, result: &str) {
        self.count(self.credential.get(result));
    }

    fn record(&self, id: u32, value: u64) {
        let _ = host::record_metric(id, value);
    }
}

/// Envoy's shared data: one key-value store for all VMs with the same `vm_id` (all workers).
struct EnvoyStore;

impl SharedStore for EnvoyStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        host::get_shared_data(key).map_err(|_| StoreError::Host)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match host::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(status) if status.is_cas_mismatch() => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Host),
        }
    }
}

impl Root {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        if getrandom::getrandom(&mut seed).is_err() {
            // Uniqueness, not secrecy, is what a Request-Id needs; the clock will do.
            seed = now_ms().unwrap_or(0).to_le_bytes();
        }
        Root {
            config: None,
            stats: None,
            remote: None,
            verified: None,
            ids: Rc::new(RefCell::new(XidGenerator::new(seed))),
            last_sweep_ms: 0,
        }
    }

    /// Drops expired single-use records and forgotten throttle records, every SWEEP_EVERY_MS.
    fn sweep_if_due(&mut self) {
        let (Some(config), Some(now)) = (&self.config, now_ms()) else {
            return;
        };
        if now.saturating_sub(self.last_sweep_ms) < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_ms = now;
        let used = single_use::sweep(&EnvoyStore, &config.single_use, now);
        let users = throttle::sweep(&EnvoyStore, &config.throttle, now);
        if let (Some(stats), Ok(used), Ok(users)) = (&self.stats, &used, &users) {
            stats.record(stats.single_use_records, used.records as u64);
            stats.record(stats.throttled_users, *users as u64);
            for _ in 0..used.fenced {
                stats.count(Some(&stats.corrupt_fenced));
            }
        }
        match (used, users) {
            (Ok(used), Ok(users)) => {
                if used.fenced > 0 {
                    warn_fenced(used.fenced, None);
                }
                debug(|| {
                    format!("otp-filter: swept; {} code(s) in the single-use ledger, {users} user(s) throttled", used.records)
                });
            }
            _ => log(
                LogLevel::Warn,
                "otp-filter: sweeping the shared state failed",
            ),
        }
    }

    /// Sends the JWKS fetch if one is due. `early`: the attempt made while the VM configures
    /// itself, when Envoy may still be starting or only validating the config; if it cannot be
    /// sent, the next tick retries without a warning or backoff.
    fn fetch_jwks_if_due(&self, early: bool) {
        let (Some(remote), Some(now)) = (&self.remote, now_ms()) else {
            return;
        };
        let mut remote = remote.borrow_mut();
        let Some(fetch) = remote.due(now) else {
            return;
        };
        let headers: Vec<(&str, &str)> = fetch
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let cluster = remote.settings().cluster.clone();
        if let Err(status) =
            hostcalls::dispatch_http_call(&cluster, headers, None, vec![], fetch.timeout)
        {
            let message =
                format!("otp-filter: JWKS fetch to cluster \"{cluster}\" not sent: {status:?}");
            if early {
                remote.on_early_fetch_not_sent();
                debug(|| format!("{message}; retrying on the next tick"));
            } else {
                remote.on_not_sent();
                log(LogLevel::Warn, &message);
            }
        }
    }
}

impl Context for Root {
    /// The JWKS answer (the root context sends no other callouts).
    fn on_http_call_response(&mut self, _: u32, num_headers: usize, body_size: usize, _: usize) {
        let Some(remote) = &self.remote else { return };
        let (status, body) = call_response(num_headers, body_size, MAX_JWKS_BYTES);
        let mut remote = remote.borrow_mut();
        let Some(now) = now_ms() else {
            // The refresh schedule runs on the clock: count this as a failed attempt, retry later.
            remote.on_not_sent();
            log(
                LogLevel::Warn,
                "otp-filter: JWKS answer dropped: the clock could not be read",
            );
            return;
        };
        let answer = remote.on_answer(status, &body, now);
        if let Some(stats) = &self.stats {
            stats.count(Some(if answer.is_ok() {
                &stats.jwks_ok
            } else {
                &stats.jwks_failed
            }));
        }
        match answer {
            Ok((count, skipped)) => {
                // Tokens verified with the old set must be verified again with the new one.
                if let Some(verified) = &self.verified {
                    verified.borrow_mut().clear();
                }
                let kids: Vec<&str> = remote
                    .keys()
                    .map(|k| k.kids().collect())
                    .unwrap_or_default();
                log(
                    LogLevel::Info,
                    &format!(
                        "otp-filter: JWKS loaded, {count} key(s): {}",
                        kids.join(", ")
                    ),
                );
                if !skipped.is_empty() {
                    log(
                        LogLevel::Info,
                        &format!("otp-filter: JWKS keys skipped: {}", skipped.join("; ")),
                    );
                }
            }
            Err(why) => {
                let kept = remote.keys().map_or(0, |k| k.len());
                log(
                    LogLevel::Warn,
                    &format!("otp-filter: JWKS fetch failed ({why}); still using {kept} key(s)"),
                );
            }
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        log(
            LogLevel::Info,
            &format!("otp-filter {VERSION} ({GIT_HASH}) started"),
        );
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let text = match host::buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!("otp-filter: cannot read its configuration: {status}"),
                );
                return false;
            }
        };
        match config::parse(&text, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                log(
                    LogLevel::Info,
                    &format!("otp-filter configured: {config:?}"),
                );
                if let Some(settings) = config.token.remote_jwks.clone() {
                    self.remote = Some(Rc::new(RefCell::new(RemoteJwks::new(settings))));
                }
                // Every bucket exists before the first request, so requests only ever update
                // existing keys, which is what Envoy's compare-and-swap makes atomic.
                let initialized = single_use::initialize(&EnvoyStore, &config.single_use)
                    .and_then(|_| throttle::initialize(&EnvoyStore, &config.throttle));
                if initialized.is_err() {
                    log(
                        LogLevel::Critical,
                        "otp-filter: cannot create its shared state",
                    );
                    return false;
                }
                if hostcalls::set_tick_period(TICK).is_err() {
                    log(LogLevel::Critical, "otp-filter: cannot set a tick period");
                    return false;
                }
                match Stats::define() {
                    Ok(stats) => self.stats = Some(Rc::new(stats)),
                    Err(status) => {
                        log(
                            LogLevel::Critical,
                            &format!("otp-filter: cannot define its stats: {status:?}"),
                        );
                        return false;
                    }
                }
                let (entries, seconds) = match &config.token.source {
                    TokenSource::Jwt => (config.token.cache_entries, config.token.cache_seconds),
                    TokenSource::Introspection(i) => (i.cache_entries, i.cache_seconds),
                    TokenSource::JwtAuthn { .. } => (0, 0),
                };
                if entries > 0 && seconds > 0 {
                    let cache = ClaimsCache::new(entries, Duration::from_secs(seconds));
                    self.verified = Some(Rc::new(RefCell::new(cache)));
                }
                self.config = Some(Rc::new(config));
                // Fetch the key set now rather than on the first tick: a VM that replaces a
                // crashed one (FAIL_RELOAD) answers `jwks-unavailable` until it has keys.
                self.fetch_jwks_if_due(true);
                true
            }
            Err(message) => {
                // Returning false makes Envoy refuse the plugin, and with it the listener.
                log(LogLevel::Critical, &message);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.fetch_jwks_if_due(false);
        self.sweep_if_due();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            config: self.config.clone(),
            stats: self.stats.clone(),
            clock_fails: false,
            clock_fails_after_headers: false,
            busy_ns: 0,
            call_started_ms: 0,
            call_timeout_ms: 0,
            remote: self.remote.clone(),
            verified: self.verified.clone(),
            ids: Rc::clone(&self.ids),
            exchange: None,
            buffered: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    /// `None` only if Envoy created a stream despite a refused config; then every request fails closed.
    config: Option<Rc<Config>>,
    stats: Option<Rc<Stats>>,
    /// TEST-ONLY (set only by the `crash-test` build's switch): every clock read of this request
    /// fails, or every read after its headers.
    clock_fails: bool,
    clock_fails_after_headers: bool,
    /// Time spent inside this filter's callbacks for this request (for `otp_filter.time.filter_us`).
    busy_ns: u64,
    call_started_ms: u64,
    call_timeout_ms: u64,
    remote: Option<Rc<RefCell<RemoteJwks>>>,
    verified: Option<Rc<RefCell<ClaimsCache>>>,
    ids: Rc<RefCell<XidGenerator>>,
    exchange: Option<Exchange>,
    buffered: usize,
}

/// The `:status` and up to `limit + 1` bytes of a callout's answer: one byte past the limit, so an
/// oversized answer is recognised as such without ever being read whole.
///
/// Envoy reports a call that failed (connection refused or reset, reset mid-answer, timeout) with
/// no headers, and then has no header map to read: that is `(None, [])`, "no answer".
fn call_response(num_headers: usize, body_size: usize, limit: usize) -> (Option<u16>, Vec<u8>) {
    if num_headers == 0 {
        return (None, Vec::new());
    }
    let status = host::header_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
    let body = match body_size {
        0 => Vec::new(),
        size => host::buffer(BufferType::HttpCallResponseBody, 0, size.min(limit + 1))
            .ok()
            .flatten()
            .unwrap_or_default(),
    };
    (status, body)
}

/// The verified payload Envoy's `jwt_authn` left in dynamic metadata (`payload_in_metadata`), with
/// its JSON types intact (see `jwt_authn_metadata` for why the metadata is read whole). `None`
/// when jwt_authn accepted no token, and when the metadata cannot be read or decoded: the request
/// is then refused, never let through.
fn jwt_authn_claims(payload_key: &str) -> Option<Map<String, Value>> {
    let metadata = hostcalls::get_property(vec!["metadata"]).ok().flatten()?;
    jwt_authn_metadata::payload(&metadata, payload_key)
}

/// Warns that corrupt single-use buckets were fenced: codes in them are refused until the fence
/// expires, so users there need a fresh code. Worth an operator's look: only a bug or another
/// module writing into this `vm_id`'s shared data corrupts a bucket.
fn warn_fenced(count: usize, request_id: Option<&str>) {
    let at = request_id.map_or(String::new(), |id| format!(" request-id={id}:"));
    log(
        LogLevel::Warn,
        &format!("otp-filter:{at} {count} corrupt single-use bucket(s) found and fenced; codes minted before now in them are refused until they expire"),
    );
}

/// Whether Envoy would print a debug line, asked before one is formatted: on the hot path at the
/// default `info` level this saves building the line and a host call per request.
fn debug_enabled() -> bool {
    host::log_level().is_some_and(|level| level <= LogLevel::Debug as u32)
}

fn debug(message: impl FnOnce() -> String) {
    if debug_enabled() {
        log(LogLevel::Debug, &message());
    }
}

impl Http {
    fn start(&mut self, end_of_stream: bool, now: Option<u64>) -> Result<Action, ()> {
        let Some(config) = self.config.clone() else {
            let id = self.ids.borrow_mut().next(now.unwrap_or(0) / 1000);
            let failure = Failure::Internal("The filter has no configuration.");
            send(&id, jsonapi::error_reply(failure, &id), failure.code());
            return Ok(Action::Pause);
        };
        // All headers in one host call: reading the six to eight the filter needs one by one
        // cost a host call and an allocation inside the VM each.
        let block = host::header_pairs(MapType::HttpRequestHeaders).map_err(|_| ())?;
        let headers = header_map::parse(&block).ok_or(())?;
        // Values as Envoy holds them; obs-text bytes become U+FFFD and fail the checks that read them.
        let header = |name: &str| header_map::first(&headers, name).map(String::from_utf8_lossy);
        let path = header(":path").unwrap_or_default();
        let method = header(":method").unwrap_or_default();
        let Some(route) = flow::route(&config, &method, &path) else {
            return Ok(Action::Continue);
        };
        let otp_header = match route {
            Route::Gate(i) => match config.gates.get(i).map(|g| &g.otp_from) {
                Some(OtpSource::Header(name)) => header(name),
                _ => None,
            },
            _ => None,
        };
        let authorization = header("authorization");
        let accept = header("accept");
        let content_type = header("content-type");
        let content_length = header("content-length");
        let id = match header("request-id") {
            Some(id) if request_id::is_valid(&id) => id.into_owned(),
            _ => self.ids.borrow_mut().next(now.unwrap_or(0) / 1000),
        };
        let Some(now) = now else {
            // Without the time no token, code or lock can be judged: fail closed, at once.
            let failure = Failure::ClockUnavailable;
            if let Some(stats) = &self.stats {
                stats.outcome(failure.code());
            }
            send(&id, jsonapi::error_reply(failure, &id), failure.code());
            return Ok(Action::Pause);
        };
        let verified_claims = match &config.token.source {
            TokenSource::JwtAuthn { payload_key } => jwt_authn_claims(payload_key),
            _ => None,
        };
        let head = RequestHead {
            method: &method,
            verified_claims,
            authorization: authorization.as_deref(),
            accept: accept.as_deref(),
            content_type: content_type.as_deref(),
            content_length: content_length.as_deref(),
            otp_header: otp_header.as_deref(),
            end_of_stream,
        };
        let mut remote = self.remote.as_ref().map(|r| r.borrow_mut());
        let mut cache = self.verified.as_ref().map(|c| c.borrow_mut());
        let state = TokenState {
            remote_jwks: remote.as_deref_mut(),
            verified: cache.as_deref_mut(),
        };
        let ctx = Ctx {
            config: &config,
            store: &EnvoyStore,
            now_ms: now,
        };
        let (exchange, step) = Exchange::start(&ctx, route, state, &head, id);
        drop((remote, cache));
        self.exchange = Some(exchange);
        Ok(self.perform(&config, step, now))
    }

    fn body_progress(&mut self, end_of_stream: bool, now: Option<u64>) -> Action {
        let (Some(config), Some(exchange)) = (self.config.clone(), self.exchange.as_mut()) else {
            return Action::Continue;
        };
        let Some(now) = now else {
            let step = exchange.on_clock_failure();
            return self.perform(&config, step, 0); // never a callout: the time is not needed
        };
        let size = self.buffered;
        let ctx = Ctx {
            config: &config,
            store: &EnvoyStore,
            now_ms: now,
        };
        let step = exchange.on_body(&ctx, size, end_of_stream, || {
            match host::buffer(BufferType::HttpRequestBody, 0, size) {
                Ok(body) => Ok(body.unwrap_or_default()),
                Err(_) => Err(()),
            }
        });
        self.perform(&config, step, now)
    }

    /// Carries out a step. Requests on our route never continue upstream: every path ends in a reply.
    /// `now` is the clock read at the start of the callback.
    fn perform(&mut self, config: &Config, step: Step, now: u64) -> Action {
        let Some(exchange) = self.exchange.as_mut() else {
            return Action::Pause;
        };
        if exchange.take_ledger_reset() {
            if let Some(stats) = &self.stats {
                stats.count(Some(&stats.corrupt_fenced));
            }
            warn_fenced(1, Some(exchange.request_id()));
        }
        match step {
            Step::Wait => Action::Pause,
            Step::Forward => Action::Continue,
            Step::Continue => {
                if let Some(stats) = &self.stats {
                    stats.outcome("gate_passed");
                }
                debug(|| {
                    format!(
                        "otp-filter request-id={}: gate passed",
                        exchange.request_id()
                    )
                });
                Action::Continue
            }
            Step::Call(call) => {
                let headers: Vec<(&str, &str)> = call
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let (cluster, timeout) = flow::call_target(config, call.upstream);
                let sent = hostcalls::dispatch_http_call(
                    cluster,
                    headers,
                    Some(call.body.expose()),
                    Vec::new(),
                    timeout,
                );
                match sent {
                    Ok(_) => {
                        self.call_started_ms = now;
                        self.call_timeout_ms = timeout.as_millis() as u64;
                        Action::Pause
                    }
                    Err(status) => {
                        log(
                            LogLevel::Warn,
                            &format!(
                                "otp-filter request-id={}: {} callout to cluster \"{cluster}\" not sent: {status:?}",
                                exchange.request_id(),
                                call.upstream.name(),
                            ),
                        );
                        let step = exchange.on_call_not_sent(call.upstream);
                        self.perform(config, step, now)
                    }
                }
            }
            Step::Reply { reply, outcome } => {
                if let Some(stats) = &self.stats {
                    stats.outcome(outcome);
                }
                send(exchange.request_id(), reply, outcome);
                Action::Pause
            }
        }
    }
}

/// Sends a local reply and logs the outcome (server-side failures at warn, the rest at debug).
fn send(request_id: &str, reply: Reply, outcome: &str) {
    let line = || {
        format!(
            "otp-filter request-id={request_id}: {} {outcome}",
            reply.status
        )
    };
    if reply.status >= 500 {
        log(LogLevel::Warn, &line());
    } else {
        debug(line);
    }
    let headers = header_map::serialize(&reply.headers);
    if host::send_local_response(u32::from(reply.status), &headers, &reply.body).is_err() {
        // Nothing can be said to the client; end the stream rather than let it through.
        let _ = host::reset_http_request();
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, _: u32, num_headers: usize, body_size: usize, _: usize) {
        self.timed(|http, now| http.call_answered(num_headers, body_size, now));
    }
}

impl Http {
    fn call_answered(&mut self, num_headers: usize, body_size: usize, now: Option<u64>) {
        let (Some(config), Some(exchange)) = (self.config.clone(), self.exchange.as_mut()) else {
            return;
        };
        let Some(now) = now else {
            let step = exchange.on_clock_failure();
            let _ = self.perform(&config, step, 0); // a reply: the callout's answer is not read
            return;
        };
        let (mut status, body) = call_response(
            num_headers,
            body_size,
            MAX_ANSWER_BYTES.max(MAX_INTROSPECTION_BYTES),
        );
        // A call that times out before its answer's headers gets Envoy's own 504. One that had
        // started answering and then stalled past the timeout ends with no answer at all: call
        // that a timeout too, so operators see a slow peer as slow rather than as down.
        // (With 10% of slack: both clock reads are truncated to ms and taken at callback starts.)
        let elapsed = now.saturating_sub(self.call_started_ms);
        if status.is_none() && elapsed.saturating_mul(10) >= self.call_timeout_ms.saturating_mul(9)
        {
            status = Some(504);
        }
        let ctx = Ctx {
            config: &config,
            store: &EnvoyStore,
            now_ms: now,
        };
        let mut cache = self.verified.as_ref().map(|c| c.borrow_mut());
        let step = exchange.on_answer(&ctx, cache.as_deref_mut(), status, &body);
        drop(cache);
        if let (Some(stats), Some(result)) = (&self.stats, exchange.take_credential_result()) {
            stats.credential(result);
            stats.record(
                stats.credential_latency_ms,
                ctx.now_ms.saturating_sub(self.call_started_ms),
            );
        }
        // Outside the request's own callbacks, letting it go on takes an explicit resume.
        if self.perform(&config, step, now) == Action::Continue
            && host::resume_http_request().is_err()
        {
            log(
                LogLevel::Error,
                "otp-filter: could not resume a request after its gate passed",
            );
            let _ = host::reset_http_request();
        }
    }
}

impl Http {
    /// The clock for this request's decisions, in ms; `None` when it cannot be read.
    fn clock_ns(&self) -> Option<u64> {
        if self.clock_fails {
            return None;
        }
        host::now_ns().ok()
    }

    /// Runs one callback and adds its duration to the request's time in the filter. The callback
    /// gets the start time in ms (`None`: no clock): one clock read serves the whole callback.
    fn timed<T>(&mut self, callback: impl FnOnce(&mut Self, Option<u64>) -> T) -> T {
        let started = self.clock_ns();
        let result = callback(self, started.map(|ns| ns / 1_000_000));
        if let (Some(started), Some(ended)) = (started, self.clock_ns()) {
            self.busy_ns += ended.saturating_sub(started);
        }
        result
    }
}

#[cfg(feature = "crash-test")]
impl Http {
    /// TEST-ONLY switches, compiled in only with the `crash-test` feature (never in a production
    /// build), for what a real Envoy cannot be made to do on demand. `x-otp-filter-crash`:
    /// - `now`: panic, which kills the VM (tests/failure_policy.rs shows the `failure_policy`);
    /// - `clock`, `clock-after-headers`: this request's clock reads fail (from the start, or after
    ///   its headers);
    /// - `corrupt-ledger`: overwrite every single-use bucket with a byte that is no record.
    fn crash_test_switch(&mut self) {
        let Ok(Some(value)) =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-otp-filter-crash")
        else {
            return;
        };
        match value.as_slice() {
            b"now" => {
                #[allow(clippy::panic)] // the test-only crash switch: panicking is its whole job
                {
                    panic!("crash requested with x-otp-filter-crash (crash-test build)");
                }
            }
            b"clock" => self.clock_fails = true,
            b"clock-after-headers" => self.clock_fails_after_headers = true,
            b"corrupt-ledger" => {
                if let Some(config) = &self.config {
                    for index in 0..config.single_use.buckets.max(1) {
                        let _ = host::set_shared_data(&single_use::bucket_key(index), b"x", None);
                    }
                }
            }
            _ => {}
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        // TEST-ONLY crash switch, compiled in only with the `crash-test` feature (never in a
        // production build): tests/failure_policy.rs kills the VM with it to show what Envoy's
        // `failure_policy` does.
        #[cfg(feature = "crash-test")]
        self.crash_test_switch();
        let action = self.timed(|http, now| match http.start(end_of_stream, now) {
            Ok(action) => action,
            Err(()) => {
                let id = http.ids.borrow_mut().next(now.unwrap_or(0) / 1000);
                let failure = Failure::Internal("The request headers could not be read.");
                send(&id, jsonapi::error_reply(failure, &id), failure.code());
                Action::Pause
            }
        });
        self.clock_fails |= self.clock_fails_after_headers;
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.buffered = body_size;
        self.timed(|http, now| http.body_progress(end_of_stream, now))
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        // Trailers end the request: the body held so far is the whole body.
        self.timed(|http, now| http.body_progress(true, now))
    }

    fn on_log(&mut self) {
        if let (Some(stats), Some(_)) = (&self.stats, &self.exchange) {
            stats.record(stats.filter_time_us, self.busy_ns / 1000);
        }
    }
}
