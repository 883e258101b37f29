//! The eight Envoys (A to H): the shipped envoy/envoy.yaml (H: envoy-jwt-authn.yaml), edited by
//! exact-text replacement, each started with two workers and logging at `info`; their memory, and
//! the filter's own histograms.

use harness::bench::{admin_memory, envoy_pid, replace_once};
use harness::*;

const ROUTE_DISABLED: &str = r#"                typed_per_filter_config:
                  envoy.filters.http.wasm:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
"#;
const CATCH_ALL_ROUTE: &str = "              - match: { prefix: \"/\" }\n";
const WASM_FILTER_START: &str = "          - name: envoy.filters.http.wasm\n";
const ROUTER_FILTER: &str = "          - name: envoy.filters.http.router\n";
const CLUSTERS: &str = "  clusters:\n";
const MAX_FAILURES: &str = r#""max_failures": 5,"#;
const DECIDED_BY: &str = r#""decided_by": "#;

/// (a): no wasm at all. The filter goes from `http_filters`, and its per-route config with it.
fn without_wasm(c: String) -> String {
    let start = c
        .find(WASM_FILTER_START)
        .expect("wasm filter in http_filters");
    let end = start + c[start..].find(ROUTER_FILTER).expect("router after wasm");
    let c = format!("{}{}", &c[..start], &c[end..]);
    assert!(!c.contains("envoy.wasm.runtime"), "wasm left in config (a)");
    replace_once(&c, ROUTE_DISABLED, "")
}

/// (c): the catch-all route no longer disables the filter.
fn filter_on_catch_all(c: String) -> String {
    replace_once(&c, ROUTE_DISABLED, "")
}

/// (d) to (k): a `/hop` route (filter disabled) to a `hop` cluster at the fast upstream stub, a
/// `/peer/` route (filter disabled, prefix stripped) to the native peer service, and room for 100
/// failures per user so the code scenarios see their 404s and 403s.
fn hop_and_throttle(c: String, hop_port: u16, peer_port: u16) -> String {
    let cluster = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
        )
    };
    let routes = format!(
        "              - match: {{ prefix: \"/hop\" }}\n                route: {{ cluster: hop, timeout: 5s }}\n{ROUTE_DISABLED}\
         {PEER_ROUTE}{ROUTE_DISABLED}{CATCH_ALL_ROUTE}"
    );
    let clusters = format!(
        "{CLUSTERS}{}{}",
        cluster("hop", hop_port),
        cluster("peer", peer_port)
    );
    let c = replace_once(&c, CATCH_ALL_ROUTE, &routes);
    let c = replace_once(&c, CLUSTERS, &clusters);
    replace_once(&c, MAX_FAILURES, r#""max_failures": 100,"#)
}

/// The shipped config (or the native peer's copy of it) with a verified-token cache of `entries`.
pub fn with_cache_entries(c: &str, entries: usize) -> String {
    replace_once(
        c,
        r#""cache_entries": 4096"#,
        &format!(r#""cache_entries": {entries}"#),
    )
}

/// D to F: room in the verified-token cache for two sets of code-scenario users ((g) and (j), or
/// (i) and (k), up to `scenarios::MAX_CODE_USERS` each), so none of them is verified cold.
const ROOMY_CACHE_ENTRIES: usize = 20_000;

/// G: a verified-token cache of COLD_CACHE_ENTRIES per VM, far fewer than the cold-token pool
/// (`scenarios::COLD_POOL`) each VM sees between two uses of a token, so every lookup misses
/// (the bench checks the filter's `token.cache_misses` counter) and every insert evicts.
pub const COLD_CACHE_ENTRIES: usize = 64;

const PEER_ROUTE: &str = "              - match: { prefix: \"/peer/\" }\n                route: { cluster: peer, timeout: 5s, prefix_rewrite: \"/\" }\n";

/// Who decides single use and guess limits: `"envoy"` (this Envoy's shared data) for D, whose
/// (g) and (j) are the baseline, `"authority"` for F's (i) and (k), where every code tried costs
/// one more callout (to the credential stub). The shipped config says `"authority"`.
fn decided_by(c: String, who: &str) -> String {
    let at = c
        .find(DECIDED_BY)
        .expect("otp.decided_by in the shipped config");
    let end = at + c[at..].find(',').expect("a field after it");
    format!("{}{DECIDED_BY}\"{who}\"{}", &c[..at], &c[end..])
}

/// (h): config D with the bench-only floor filter (benches/floor-filter) in place of otp-filter.
fn with_floor_filter(c: String) -> String {
    with_wasm(c, &floor_wasm())
}

fn with_wasm(c: String, path: &std::path::Path) -> String {
    replace_once(
        &c,
        &format!("filename: {}", wasm().display()),
        &format!("filename: {}", path.display()),
    )
}

/// Whether an A/B .wasm is a build of otp-filter (whose token keys must load before measuring)
/// rather than of the floor filter: by its file name.
fn is_otp_filter(path: &std::ffi::OsStr) -> bool {
    path.to_string_lossy().contains("otp")
}

/// The floor filter's .wasm; `BENCH_H_WASM` puts another build there instead, for an A/B of a
/// change in one run (e.g. `cp` the old `otp_filter.wasm` aside, rebuild, compare (h) with (e)).
fn floor_wasm() -> std::path::PathBuf {
    match std::env::var_os("BENCH_H_WASM") {
        Some(path) => path.into(),
        None => root().join("target/wasm32-wasip1/release/floor_filter.wasm"),
    }
}

pub struct Proxy {
    pub name: &'static str,
    pub envoy: Envoy,
    pub pid: Option<u32>,
}

impl Proxy {
    fn start(name: &'static str, config: &str, wasm: bool) -> Proxy {
        let envoy = Envoy::start_with_workers(config, 2);
        // The harness starts Envoy at info with wasm at debug (for its log audits); measure at
        // Envoy's default level instead, as production runs.
        let r = send(
            envoy.admin_port,
            &request("POST", "/logging?level=info", &[], None),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        if wasm {
            envoy.wait_for_keys();
        }
        let pid = envoy_pid(&envoy);
        Proxy { name, envoy, pid }
    }

    /// (`allocated`, `heap_size`) from the admin `/memory` endpoint, in bytes.
    fn memory(&self) -> (u64, u64) {
        admin_memory(&self.envoy)
    }

    /// VmRSS of the Envoy process, in kB.
    fn rss_kb(&self) -> Option<u64> {
        harness::bench::rss_kb(self.pid?).map(|(rss, _anon)| rss)
    }

    /// (`allocated`, `heap_size`, VmRSS): see `memory` and `rss_kb`.
    pub fn memory_now(&self) -> (u64, u64, Option<u64>) {
        let (a, h) = self.memory();
        (a, h, self.rss_kb())
    }
}

/// Starts A to H in front of the credential stub on `cred_port` (JWKS from `jwks_port`), D to H
/// with routes to the hop stub and a native peer (`cold_peer_port` for G and H, whose cache is as
/// small as G's). E's floor filter must have been built.
pub fn start_all(
    cred_port: u16,
    hop_port: u16,
    jwks_port: u16,
    peer_port: u16,
    cold_peer_port: u16,
) -> [Proxy; 8] {
    assert!(
        floor_wasm().exists(),
        "{} is missing: `make bench` builds it",
        floor_wasm().display()
    );
    println!("starting eight Envoys (--concurrency 2 each) ...");
    [
        Proxy::start(
            "A: no wasm filter",
            &demo_config_split(cred_port, jwks_port, without_wasm),
            false,
        ),
        Proxy::start(
            "B: shipped config",
            &demo_config_split(cred_port, jwks_port, |c| c),
            true,
        ),
        Proxy::start(
            "C: filter on `/`",
            &demo_config_split(cred_port, jwks_port, filter_on_catch_all),
            true,
        ),
        Proxy::start(
            "D: + /hop, /peer/, max_failures 100, this Envoy deciding",
            &demo_config_split(cred_port, jwks_port, |c| {
                let c = decided_by(
                    with_cache_entries(
                        &hop_and_throttle(c, hop_port, peer_port),
                        ROOMY_CACHE_ENTRIES,
                    ),
                    "envoy",
                );
                match std::env::var_os("BENCH_E_WASM") {
                    Some(path) => with_wasm(c, std::path::Path::new(&path)),
                    None => c,
                }
            }),
            std::env::var_os("BENCH_E_WASM").is_none_or(|p| is_otp_filter(&p)),
        ),
        Proxy::start(
            "E: D with the floor filter",
            &demo_config_split(cred_port, jwks_port, |c| {
                with_floor_filter(with_cache_entries(
                    &hop_and_throttle(c, hop_port, peer_port),
                    ROOMY_CACHE_ENTRIES,
                ))
            }),
            std::env::var_os("BENCH_H_WASM").is_some_and(|p| is_otp_filter(&p)),
        ),
        Proxy::start(
            "F: D with the authority deciding",
            &demo_config_split(cred_port, jwks_port, |c| {
                decided_by(
                    with_cache_entries(
                        &hop_and_throttle(c, hop_port, peer_port),
                        ROOMY_CACHE_ENTRIES,
                    ),
                    "authority",
                )
            }),
            true,
        ),
        Proxy::start(
            "G: D with a 64-entry token cache (cold tokens)",
            &demo_config_split(cred_port, jwks_port, |c| {
                with_cache_entries(
                    &hop_and_throttle(c, hop_port, cold_peer_port),
                    COLD_CACHE_ENTRIES,
                )
            }),
            true,
        ),
        Proxy::start(
            "H: D in jwt_authn mode (Envoy verifies the token)",
            &config_file("envoy-jwt-authn.yaml", cred_port, jwks_port, |c| {
                hop_and_throttle(c, hop_port, cold_peer_port)
            }),
            // No JWKS in the filter: jwt_authn fetches its own keys on first use (the warm-up).
            false,
        ),
    ]
}

/// An Envoy's memory (`allocated`, `heap_size`, VmRSS) before the first run and after the last.
pub struct MemoryRow {
    pub name: &'static str,
    pub start: (u64, u64, Option<u64>),
    pub end: (u64, u64, Option<u64>),
}

/// Each proxy's memory now, as `start`, beside its memory at the start.
pub fn memory_rows(proxies: &[Proxy], start: Vec<(u64, u64, Option<u64>)>) -> Vec<MemoryRow> {
    proxies
        .iter()
        .zip(start)
        .map(|(p, start)| MemoryRow {
            name: p.name,
            start,
            end: p.memory_now(),
        })
        .collect()
}

/// The filter's own histograms (cumulative p50 / p99): time spent in the VM per request (µs)
/// and a callout's round trip (ms): the credential service's, or the authority's.
pub struct FilterTime {
    pub filter_us: (f64, f64),
    pub callout_ms: (f64, f64),
}

impl FilterTime {
    pub fn read(envoy: &Envoy) -> Option<FilterTime> {
        Self::read_callout(envoy, "credential_callout_ms")
    }

    /// As `read`, with the round trip of the callout whose histogram ends in `callout`.
    pub fn read_callout(envoy: &Envoy, callout: &str) -> Option<FilterTime> {
        let stats = get(
            envoy.admin_port,
            "/stats?format=json&filter=otp_filter%5C.time",
        )
        .json();
        let histograms = stats["stats"]
            .as_array()?
            .iter()
            .find_map(|s| s.get("histograms"))?;
        let quantiles: Vec<f64> = histograms["supported_quantiles"]
            .as_array()?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let at = |name: &str, q: f64| -> Option<f64> {
            let i = quantiles.iter().position(|x| (*x - q).abs() < 1e-9)?;
            histograms["computed_quantiles"]
                .as_array()?
                .iter()
                .find(|h| h["name"].as_str().is_some_and(|n| n.ends_with(name)))?["values"][i]
                ["cumulative"]
                .as_f64()
        };
        Some(FilterTime {
            filter_us: (at("filter_us", 50.0)?, at("filter_us", 99.0)?),
            callout_ms: (at(callout, 50.0)?, at(callout, 99.0)?),
        })
    }
}
