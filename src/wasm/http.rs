//! One stream context per request on the filter's routes: reads what Envoy says (headers, body
//! progress, callout answers), hands it to `flow::Exchange` and performs the `Step` it returns.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use serde_json::{Map, Value};

use super::stats::Stats;
use super::{debug, host, log, warn_fenced, EnvoyStore};
use crate::callout;
use crate::callout::credential::MAX_ANSWER_BYTES;
use crate::config::Config;
use crate::flow::{self, Ctx, Exchange, RequestHead, Step, TokenState};
use crate::reply::failure::Failure;
use crate::reply::jsonapi::{self, Reply};
use crate::request::header_map;
use crate::request::request_id::{self, XidGenerator};
use crate::token::cache::ClaimsCache;
use crate::token::introspection::MAX_ANSWER_BYTES as MAX_INTROSPECTION_BYTES;
use crate::token::jwks::RemoteJwks;
use crate::token::jwt_authn;
use crate::token::TokenSource;

pub struct Http {
    /// `None` only if Envoy created a stream despite a refused config; then every request fails closed.
    pub(super) config: Option<Rc<Config>>,
    pub(super) stats: Option<Rc<Stats>>,
    /// TEST-ONLY (set only by the `crash-test` build's switch): every clock read of this request
    /// fails, or every read after its headers.
    pub(super) clock_fails: bool,
    pub(super) clock_fails_after_headers: bool,
    /// Time spent inside this filter's callbacks for this request (for `otp_filter.time.filter_us`).
    pub(super) busy_ns: u64,
    pub(super) call_started_ms: u64,
    pub(super) call_timeout_ms: u64,
    pub(super) remote: Option<Rc<RefCell<RemoteJwks>>>,
    pub(super) verified: Option<Rc<RefCell<ClaimsCache>>>,
    pub(super) ids: Rc<RefCell<XidGenerator>>,
    pub(super) exchange: Option<Exchange>,
    pub(super) buffered: usize,
}

/// The `:status` and up to `limit + 1` bytes of a callout's answer: one byte past the limit, so an
/// oversized answer is recognised as such without ever being read whole.
///
/// Envoy reports a call that failed (connection refused or reset, reset mid-answer, timeout) with
/// no headers, and then has no header map to read: that is `(None, [])`, "no answer".
pub fn call_response(num_headers: usize, body_size: usize, limit: usize) -> (Option<u16>, Vec<u8>) {
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
    jwt_authn::payload(&metadata, payload_key)
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
        let otp_header = flow::otp_header_name(&config, route).and_then(&header);
        let authorization = header("authorization");
        let accept = header("accept");
        let content_type = header("content-type");
        let content_length = header("content-length");
        let id = match header("request-id") {
            Some(id) if request_id::is_valid(&id) => id.into_owned(),
            _ => self.ids.borrow_mut().next(now.unwrap_or(0) / 1000),
        };
        let Some(now) = now else {
            let (exchange, step) = Exchange::without_clock(id);
            self.exchange = Some(exchange);
            return Ok(self.perform(&config, step, 0)); // a reply: the time is not needed
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
                let target = config.upstream(call.upstream);
                let (cluster, timeout) = (target.cluster.as_str(), target.timeout);
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
        let (status, body) = call_response(
            num_headers,
            body_size,
            MAX_ANSWER_BYTES.max(MAX_INTROSPECTION_BYTES),
        );
        let elapsed = now.saturating_sub(self.call_started_ms);
        let status = callout::answer_status(status, elapsed, self.call_timeout_ms);
        let ctx = Ctx {
            config: &config,
            store: &EnvoyStore,
            now_ms: now,
        };
        let mut cache = self.verified.as_ref().map(|c| c.borrow_mut());
        let step = exchange.on_answer(&ctx, cache.as_deref_mut(), status, &body);
        drop(cache);
        if let (Some(stats), Some((upstream, result))) = (&self.stats, exchange.take_call_result())
        {
            stats.call(
                upstream,
                result,
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
                        let _ = host::set_shared_data(
                            &crate::state::single_use::bucket_key(index),
                            b"x",
                            None,
                        );
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
            // Misses are counted by the cache and published here, so a hit costs no host call.
            let misses = self
                .verified
                .as_ref()
                .map_or(0, |c| c.borrow_mut().take_misses());
            if misses > 0 {
                let _ = host::increment_metric(stats.token_cache_misses, misses as i64);
            }
        }
    }
}
