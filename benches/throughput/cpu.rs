//! Other load on the machine: CPU used during a run by processes that are not this bench or its
//! Envoys (from /proc), so that a run measured beside a busy neighbour can be recognised.

use std::thread;
use std::time::Duration;

use harness::bench::process_jiffies;

/// Jiffies: (busy, total, steal) of the whole machine, from the `cpu` line of /proc/stat.
fn machine_jiffies() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total: u64 = (0..8).map(get).sum();
    let idle = get(3) + get(4);
    (total - idle - get(7), total, get(7))
}

pub struct CpuMeter {
    /// This process and every Envoy.
    pub ours: Vec<String>,
}

#[derive(Clone, Copy)]
pub struct CpuSample {
    busy: u64,
    total: u64,
    steal: u64,
    ours: u64,
}

impl CpuMeter {
    pub fn sample(&self) -> CpuSample {
        let (busy, total, steal) = machine_jiffies();
        CpuSample {
            busy,
            total,
            steal,
            ours: self.ours.iter().map(|p| process_jiffies(p)).sum(),
        }
    }

    /// (other processes' busy share, steal share) of the machine between two samples, in %.
    pub fn other(a: CpuSample, b: CpuSample) -> (f64, f64) {
        let total = (b.total - a.total).max(1) as f64;
        let other = (b.busy - a.busy).saturating_sub(b.ours - a.ours) as f64;
        (
            100.0 * other / total,
            100.0 * (b.steal - a.steal) as f64 / total,
        )
    }

    /// Waits (up to 2 s) until other processes use less than a quarter of the machine.
    pub fn wait_for_quiet(&self) -> f64 {
        let mut other = 0.0;
        for _ in 0..8 {
            let a = self.sample();
            thread::sleep(Duration::from_millis(250));
            other = Self::other(a, self.sample()).0;
            if other < 25.0 {
                break;
            }
        }
        other
    }
}
