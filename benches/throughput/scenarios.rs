//! The scenarios: what each one sends to which Envoy and which statuses it accepts, and their
//! table, (a) to (h) and the diagnostics, with the tokens they need. (g) is built after the first
//! round, sized from the rates seen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use harness::bench::{mint_all, mint_with_claims};
use harness::*;

use crate::client::Client;
use crate::envoys::Proxy;
use crate::runs::Run;
use crate::Settings;

/// Which request each connection sends next.
pub enum Pick {
    /// Every request is the same.
    Same(Vec<u8>),
    /// Connection i always sends request i (mod len): one user per connection.
    PerConn(Vec<Vec<u8>>),
    /// Request k (counted over every run of the scenario) is `requests[(k / per) % len]`: each
    /// user is used `per` times, then the next one.
    Rotate {
        requests: Vec<Vec<u8>>,
        per: u64,
        next: AtomicU64,
    },
}

impl Pick {
    pub fn request(&self, conn: usize) -> &[u8] {
        match self {
            Pick::Same(r) => r,
            Pick::PerConn(rs) => &rs[conn % rs.len()],
            Pick::Rotate {
                requests,
                per,
                next,
            } => {
                let k = next.fetch_add(1, Ordering::Relaxed);
                &requests[((k / per) % requests.len() as u64) as usize]
            }
        }
    }
}

pub struct Scenario {
    pub key: &'static str,
    pub what: &'static str,
    /// Index of its Envoy in the proxies (A to E).
    pub envoy: usize,
    pub pick: Pick,
    pub expect: &'static [u16],
    /// The stub whose connections and requests this scenario drives, if any.
    pub stub: Option<usize>,
    pub runs: Vec<Run>,
    pub error: Option<String>,
    /// Cold-token scenarios on G: the filter's `token.cache_misses` and the responses, summed
    /// over the runs (warm-up included), which show that no request hit the cache.
    pub cache_misses: Option<(u64, u64)>,
}

impl Scenario {
    fn new(
        key: &'static str,
        what: &'static str,
        envoy: usize,
        pick: Pick,
        expect: &'static [u16],
        stub: Option<usize>,
    ) -> Scenario {
        Scenario {
            key,
            what,
            envoy,
            pick,
            expect,
            stub,
            runs: Vec::new(),
            error: None,
            cache_misses: None,
        }
    }

    pub fn median_rps(&self) -> f64 {
        median(self.runs.iter().map(|r| r.rps).collect())
    }
    pub fn median_p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_ms).collect())
    }
    pub fn median_p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_ms).collect())
    }
    pub fn median_envoy_us(&self) -> f64 {
        median(self.runs.iter().map(|r| r.envoy_us).collect())
    }
    pub fn median_bench_us(&self) -> f64 {
        median(self.runs.iter().map(|r| r.bench_us).collect())
    }
    pub fn statuses(&self) -> BTreeMap<u16, u64> {
        let mut all = BTreeMap::new();
        for run in &self.runs {
            for (s, n) in &run.statuses {
                *all.entry(*s).or_default() += n;
            }
        }
        all
    }
    pub fn ok(&self) -> bool {
        self.error.is_none() && !self.runs.is_empty()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn json_post(path: &str, token: &str, body: &str) -> Vec<u8> {
    let auth = format!("Bearer {token}");
    request(
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(body),
    )
}

/// The scenarios BENCH_ONLY enables (by default all but the diagnostics), in the order they run
/// in each round; (g) comes later (`verify_scenario`). Mints (e)'s users first.
pub fn table(settings: &Settings) -> Vec<Scenario> {
    println!("minting tokens ...");
    let create_claims: Vec<String> = (0..settings.create_users)
        .map(|i| format!(r#"{{"sub":"bench-create-{i}"}}"#))
        .collect();
    let create_tokens = mint_with_claims(&create_claims);
    let mut scenarios = healthz_scenarios();
    scenarios.extend(create_scenarios(&create_tokens));
    if COLD.iter().any(|(key, ..)| settings.enabled(key)) {
        scenarios.extend(cold_scenarios(settings));
    }
    scenarios.extend(diagnostics(&create_tokens));
    scenarios.retain(|s| settings.enabled(s.key));
    scenarios
}

const CREATE_BODY: &str = r#"{"pin":"8299"}"#;

/// (a), (b), (c): `GET /healthz` without the filter, with it installed but off for the route, and
/// with it in the chain.
fn healthz_scenarios() -> Vec<Scenario> {
    let healthz = request("GET", "/healthz", &[], None);
    vec![
        Scenario::new(
            "(a)",
            "GET /healthz, direct_response, no wasm filter in the chain",
            0,
            Pick::Same(healthz.clone()),
            &[200],
            None,
        ),
        Scenario::new(
            "(b)",
            "GET /healthz, filter installed, route-scoped off (shipped config)",
            1,
            Pick::Same(healthz.clone()),
            &[200],
            None,
        ),
        Scenario::new(
            "(c)",
            "GET /healthz, filter in the chain (pass-through)",
            2,
            Pick::Same(healthz),
            &[200],
            None,
        ),
    ]
}

/// (d), (e), (f), (h): the create request through a plain hop, the filter, the native peer and
/// the floor filter.
fn create_scenarios(create_tokens: &[String]) -> Vec<Scenario> {
    // (e)'s requests, one per connection, to `path`: (f) and (h) send the same bytes elsewhere.
    let creates = |path: &str| -> Vec<Vec<u8>> {
        create_tokens
            .iter()
            .map(|t| json_post(path, t, CREATE_BODY))
            .collect()
    };
    vec![
        // The same bytes as (e) sends, token included, so only Envoy's work differs.
        Scenario::new(
            "(d)",
            "POST /hop, plain proxy hop to the fast stub, filter off",
            3,
            Pick::Same(json_post("/hop", &create_tokens[0], CREATE_BODY)),
            &[200],
            Some(1),
        ),
        Scenario::new(
            "(e)",
            "POST /user/2021-2/user/otp: token + 1 callout to the fast stub + mint",
            3,
            Pick::PerConn(creates(OTP_PATH)),
            &[201],
            Some(0),
        ),
        // The same bytes as (e) with `/peer` in front: Envoy strips it and proxies to the peer.
        Scenario::new(
            "(f)",
            "POST /peer/user/2021-2/user/otp: Envoy hop to a native Rust OTP service (same logic, same callout)",
            3,
            Pick::PerConn(creates(&format!("/peer{OTP_PATH}"))),
            &[201],
            Some(0),
        ),
        Scenario::new(
            "(h)",
            "floor: (e)'s bytes to a minimal wasm filter (read body, 1 callout, fixed 201), no logic",
            4,
            Pick::PerConn(creates(OTP_PATH)),
            &[201],
            Some(0),
        ),
    ]
}

/// Distinct tokens per algorithm in the cold-token scenarios, sent round-robin: each VM of G sees
/// about half of them between two uses of one, far more than its cache holds
/// (`envoys::COLD_CACHE_ENTRIES`), so every request is a token it has not got cached. Minted with
/// the rest, before any measured second.
pub const COLD_POOL: usize = 4000;

/// The cold-token scenarios: (key, algorithm, Envoy, path prefix, what).
const COLD: [(&str, &str, usize, &str, &str); 6] = [
    (
        "(l)",
        "RS256",
        COLD_JWT_ENVOY,
        "",
        "(e) with a new RS256 token per request, jwt mode (the filter verifies)",
    ),
    (
        "(m)",
        "ES256",
        COLD_JWT_ENVOY,
        "",
        "(e) with a new ES256 token per request, jwt mode (the filter verifies)",
    ),
    (
        "(n)",
        "RS256",
        COLD_JWT_AUTHN_ENVOY,
        "",
        "(l) in jwt_authn mode: Envoy's jwt_authn verifies, the filter reads its payload",
    ),
    (
        "(o)",
        "ES256",
        COLD_JWT_AUTHN_ENVOY,
        "",
        "(m) in jwt_authn mode",
    ),
    (
        "(p)",
        "RS256",
        COLD_JWT_ENVOY,
        "/peer",
        "(f) with a new RS256 token per request (the native peer verifies)",
    ),
    (
        "(q)",
        "ES256",
        COLD_JWT_ENVOY,
        "/peer",
        "(f) with a new ES256 token per request",
    ),
];

/// Cold-token twins of (e) and (f), enabled ones only: a pool of COLD_POOL tokens per algorithm.
fn cold_scenarios(settings: &Settings) -> Vec<Scenario> {
    let mut pools = BTreeMap::new();
    for (key, alg, ..) in COLD {
        if settings.enabled(key) && !pools.contains_key(alg) {
            println!("minting {COLD_POOL} {alg} tokens for the cold-token scenarios ...");
            let args: Vec<Vec<String>> = (0..COLD_POOL)
                .map(|i| {
                    let claims = format!(r#"{{"sub":"bench-cold-{i}"}}"#);
                    vec!["--alg".into(), alg.into(), "--claims".into(), claims]
                })
                .collect();
            pools.insert(alg, mint_all(&args));
        }
    }
    COLD.iter()
        .filter(|(key, ..)| settings.enabled(key))
        .map(|&(key, alg, envoy, prefix, what)| {
            let path = format!("{prefix}{OTP_PATH}");
            let requests = pools[alg]
                .iter()
                .map(|t| json_post(&path, t, CREATE_BODY))
                .collect();
            let pick = Pick::Rotate {
                requests,
                per: 1,
                next: AtomicU64::new(0),
            };
            Scenario::new(key, what, envoy, pick, &[201], Some(0))
        })
        .collect()
}

/// Whether `key` is a cold-token scenario answered by the filter on G in jwt mode, not by the
/// native peer behind it (its misses are counted).
pub fn counts_cache_misses(key: &str) -> bool {
    COLD.iter()
        .any(|&(k, _, envoy, prefix, _)| k == key && envoy == COLD_JWT_ENVOY && prefix.is_empty())
}

/// G and H in the Envoys (`envoys::start_all`).
const COLD_JWT_ENVOY: usize = 6;
const COLD_JWT_AUTHN_ENVOY: usize = 7;

/// Diagnostics, only when BENCH_ONLY names them: the create route answered by the filter before
/// the throttle and the callout, without a token (401) and after the token check (406, Accept).
fn diagnostics(create_tokens: &[String]) -> Vec<Scenario> {
    vec![
        Scenario::new(
            "(e401)",
            "diagnostic: the create route without a token (401, no crypto, no callout)",
            3,
            Pick::Same(request(
                "POST",
                OTP_PATH,
                &[("content-type", "application/json")],
                Some(CREATE_BODY),
            )),
            &[401],
            Some(0),
        ),
        Scenario::new(
            "(e406)",
            "diagnostic: the create route after the token check (406 for Accept, no callout)",
            3,
            Pick::PerConn(
                create_tokens
                    .iter()
                    .map(|t| {
                        let auth = format!("Bearer {t}");
                        request(
                            "POST",
                            OTP_PATH,
                            &[
                                ("authorization", &auth),
                                ("content-type", "application/json"),
                                ("accept", "text/html"),
                            ],
                            Some(CREATE_BODY),
                        )
                    })
                    .collect(),
            ),
            &[406],
            Some(0),
        ),
    ]
}

const VERIFY_PATH: &str = "/user/2022-1/user/otp/verify";
/// Users per code scenario at most: two sets fit D's and F's verified-token caches (20,000), and
/// 9,500 × VERIFY_PER_USER covers (g) at 40,000 req/s for three runs of 6 s.
const MAX_CODE_USERS: usize = 9_500;
/// Requests per verify user: below `max_failures` (100 in config D), so every answer is a 404.
const VERIFY_PER_USER: u64 = 95;
/// Each verify token is probed on this many connections before (g), so that both workers' VMs
/// have it in their verified-token cache (a connection lives on one worker; a token misses a
/// worker with probability 2^-(n-1)).
pub const PREWARM_CONNS: usize = 8;

/// (g): warms `tokens` (also (i)'s) into both of D's VMs' caches, and builds the scenario.
pub fn verify_scenario_with(settings: &Settings, tokens: &[String], proxy: &Proxy) -> Scenario {
    prewarm(settings, tokens, proxy);
    code_scenario(tokens, CodeRoute::Verify, Decider::Envoy)
}

/// Where a wrong code is tried.
#[derive(Clone, Copy)]
pub enum CodeRoute {
    Verify,
    /// The demo's payment gate (`POST /pay/…`, code in the JSON body).
    Gate,
}

/// Who decides: this Envoy's shared data (D) or the one-time-use authority (F).
#[derive(Clone, Copy)]
pub enum Decider {
    Envoy,
    Authority,
}

/// (i), (j), (k): wrong codes on the verify route and the payment gate, with the authority
/// deciding (F) and without (D). A user's throttle lives in one Envoy, so (i) takes (g)'s users
/// on F, and (j) and (k) a second set, on D and on F: every user meets at most 95 wrong codes per
/// Envoy, below `max_failures`. The tokens are warmed into the caches of the Envoy that uses them.
pub fn more_code_scenarios(
    settings: &Settings,
    done: &[Scenario],
    proxies: &[Proxy],
    verify_tokens: &[String],
) -> Vec<Scenario> {
    let mut out = Vec::new();
    if settings.enabled("(i)") {
        prewarm(settings, verify_tokens, &proxies[5]);
        out.push(code_scenario(
            verify_tokens,
            CodeRoute::Verify,
            Decider::Authority,
        ));
    }
    if settings.enabled("(j)") || settings.enabled("(k)") {
        let gate_tokens = code_tokens(settings, done, "bench-gate");
        for (key, proxy, decider) in [("(j)", 3, Decider::Envoy), ("(k)", 5, Decider::Authority)] {
            if settings.enabled(key) {
                prewarm(settings, &gate_tokens, &proxies[proxy]);
                out.push(code_scenario(&gate_tokens, CodeRoute::Gate, decider));
            }
        }
    }
    out
}

/// Tokens for users `<prefix>-<i>`, one user per VERIFY_PER_USER requests of a run at the rates
/// seen so far.
pub fn code_tokens(settings: &Settings, done: &[Scenario], prefix: &str) -> Vec<String> {
    let users = if settings.verify_users > 0 {
        settings.verify_users
    } else {
        // Enough for every run at 1.5x the fastest rate of a request with a body seen so far.
        let rate = done
            .iter()
            .filter(|s| matches!(s.key, "(d)" | "(e)"))
            .filter_map(|s| s.runs.last().map(|r| r.rps))
            .fold(5000.0, f64::max);
        let secs = (settings.warmup + settings.measure).as_secs_f64() + 0.3;
        ((rate * 1.5 * secs * settings.runs as f64) / VERIFY_PER_USER as f64).ceil() as usize
    }
    .clamp(settings.conns, MAX_CODE_USERS);
    println!("minting {users} verify tokens (one user per {VERIFY_PER_USER} requests) ...");
    let claims: Vec<String> = (0..users)
        .map(|i| format!(r#"{{"sub":"{prefix}-{i}","scope":"user:otp:verify"}}"#))
        .collect();
    mint_with_claims(&claims)
}

/// Probes every token on PREWARM_CONNS connections of `proxy`, so both its VMs cache it.
fn prewarm(settings: &Settings, tokens: &[String], proxy: &Proxy) {
    // A 406 (Accept) is answered after the token check and before the throttle: it caches the
    // token without counting an attempt.
    let probes: Vec<Vec<u8>> = tokens
        .iter()
        .map(|t| {
            let auth = format!("Bearer {t}");
            request(
                "POST",
                VERIFY_PATH,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("accept", "text/html"),
                ],
                Some(r#"{"otp":"000000"}"#),
            )
        })
        .collect();
    let conns = settings.conns;
    let per_token = PREWARM_CONNS.min(conns);
    thread::scope(|scope| {
        for c in 0..conns {
            let probes = &probes;
            let port = proxy.envoy.port;
            scope.spawn(move || {
                let mut client = Client::open(port);
                for (t, probe) in probes.iter().enumerate() {
                    if (t + c) % conns < per_token {
                        let a = client.exchange(probe).expect("prewarm probe");
                        assert_eq!(a.status, 406, "prewarm probe");
                    }
                }
            });
        }
    });
}

fn code_scenario(tokens: &[String], route: CodeRoute, decider: Decider) -> Scenario {
    let (path, body, refused) = match route {
        CodeRoute::Verify => (VERIFY_PATH, r#"{"otp":"000000"}"#, 404),
        CodeRoute::Gate => (
            "/pay/2021-2/transactions/42/authorize",
            r#"{"data":{"attributes":{"twoFactor":{"method":"pin","otp":"000000"}}}}"#,
            403,
        ),
    };
    let requests = tokens.iter().map(|t| json_post(path, t, body)).collect();
    let (key, what, envoy, expect): (&str, &str, usize, &'static [u16]) = match (route, decider) {
        (CodeRoute::Verify, Decider::Envoy) => (
            "(g)",
            "POST /user/2022-1/user/otp/verify, wrong code (throttle counted)",
            3,
            &[404, 429],
        ),
        (CodeRoute::Verify, Decider::Authority) => (
            "(i)",
            "(g) with the authority deciding: each wrong code reported (one callout)",
            5,
            &[404, 429],
        ),
        (CodeRoute::Gate, Decider::Envoy) => (
            "(j)",
            "POST /pay/… gate, wrong code in the body (throttle counted)",
            3,
            &[403, 429],
        ),
        (CodeRoute::Gate, Decider::Authority) => (
            "(k)",
            "(j) with the authority deciding: each wrong code reported (one callout)",
            5,
            &[403, 429],
        ),
    };
    debug_assert!(expect.contains(&refused));
    Scenario {
        key,
        what,
        envoy,
        pick: Pick::Rotate {
            requests,
            per: VERIFY_PER_USER,
            next: AtomicU64::new(0),
        },
        expect,
        stub: Some(0),
        runs: Vec::new(),
        error: None,
        cache_misses: None,
    }
}
