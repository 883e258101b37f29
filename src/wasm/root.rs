//! The root context: configuration (a bad one is refused: `on_configure` returns false), the
//! tick (JWKS fetches, sweeps of the shared state) and the JWKS answers.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use super::http::{call_response, Http};
use super::stats::Stats;
use super::{debug, host, log, now_ms, warn_fenced, EnvoyStore};
use crate::config::{self, Config};
use crate::request::request_id::XidGenerator;
use crate::state::{single_use, throttle};
use crate::token::cache::ClaimsCache;
use crate::token::jwks::{RemoteJwks, MAX_JWKS_BYTES};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_HASH: &str = env!("OTP_FILTER_GIT_HASH");

pub struct Root {
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

impl Root {
    pub fn new() -> Self {
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
        let cluster = remote.settings().upstream.cluster.clone();
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
                if let Some((entries, lifetime)) = config.claims_cache_size() {
                    // The cache key must be secret: without randomness there is no cache (every
                    // token is verified), never a guessable key.
                    let mut key = [0u8; 16];
                    match getrandom::getrandom(&mut key) {
                        Ok(()) => {
                            let cache = ClaimsCache::new(entries, lifetime, key);
                            self.verified = Some(Rc::new(RefCell::new(cache)));
                        }
                        Err(_) => log(
                            LogLevel::Warn,
                            "otp-filter: no randomness for the verified-token cache key; running without the cache",
                        ),
                    }
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
        super::refresh_log_level();
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
