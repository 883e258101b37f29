//! Helpers shared by the bench targets that drive a real Envoy (`throughput`, `soak`): finding
//! Envoy's process, reading its memory and CPU time from /proc and the admin API, editing the
//! shipped config, and minting tokens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;

use crate::{get, token_with, Envoy};

/// Where an HTTP/1.1 message head ends (after its blank line).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `text` with `anchor`, which must occur exactly once in the shipped config, replaced.
pub fn replace_once(text: &str, anchor: &str, with: &str) -> String {
    let n = text.matches(anchor).count();
    assert_eq!(
        n, 1,
        "envoy/envoy.yaml: expected {anchor:?} once, found {n}"
    );
    text.replacen(anchor, with, 1)
}

/// The process that has `arg` among its arguments (the harness keeps Envoy's pid private; its
/// scratch config path is unique).
pub fn pid_with_arg(arg: &std::path::Path) -> Option<u32> {
    let needle = arg.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|&b| b == 0)
                .any(|a| a == needle.as_bytes())
                .then_some(pid)
        })
}

/// The pid of `envoy`'s process, found by its scratch config path (which is unique).
pub fn envoy_pid(envoy: &Envoy) -> Option<u32> {
    let config_path = envoy.log.parent().expect("scratch dir").join("envoy.yaml");
    pid_with_arg(&config_path)
}

/// (VmRSS, RssAnon) of a process, in kB. VmRSS also counts mapped file pages (most of Envoy's
/// 107 MB binary), which the kernel may reclaim at any time; RssAnon is where a leak would grow.
pub fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

/// utime + stime of a process (all its threads; `pid` may be "self"), in jiffies.
pub fn process_jiffies(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12).
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Jiffies per second.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// (`allocated`, `heap_size`) from Envoy's admin `/memory` endpoint, in bytes.
pub fn admin_memory(envoy: &Envoy) -> (u64, u64) {
    let m = get(envoy.admin_port, "/memory").json();
    let n = |k: &str| {
        m[k].as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| m[k].as_u64())
            .unwrap_or(0)
    };
    (n("allocated"), n("heap_size"))
}

/// One token per argument list, minted with the demo-token binary on two threads.
pub fn mint_all(args: &[Vec<String>]) -> Vec<String> {
    let tokens = Mutex::new(vec![String::new(); args.len()]);
    let next = AtomicU64::new(0);
    thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= args.len() {
                    break;
                }
                let a: Vec<&str> = args[i].iter().map(String::as_str).collect();
                let t = token_with(&a);
                tokens.lock().unwrap()[i] = t;
            });
        }
    });
    tokens.into_inner().unwrap()
}

/// `mint_all` for claim sets (`--claims` over the defaults).
pub fn mint_with_claims(claims: &[String]) -> Vec<String> {
    let args: Vec<Vec<String>> = claims
        .iter()
        .map(|c| vec!["--claims".to_string(), c.clone()])
        .collect();
    mint_all(&args)
}
