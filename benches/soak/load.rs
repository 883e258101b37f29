//! The load: every thread of the plan until SOAK_SECONDS are over (or too much failed), while
//! Envoy's memory is sampled every second and the progress printed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use harness::bench::{admin_memory, rss_kb};
use harness::*;

use crate::mix::Cheap;
use crate::plan::Plan;
use crate::tally::{Shared, Tally};
use crate::tokens::Tokens;
use crate::{mib, Settings};

/// Envoy's memory over the run.
pub struct Trace {
    /// (VmRSS, RssAnon) in kB and admin `/memory` (`allocated`, `heap_size`) at the end of the
    /// warm-up: the reference for growth.
    pub warm: Option<((u64, u64), (u64, u64))>,
    /// The highest and lowest (VmRSS, RssAnon) after the warm-up.
    pub peak: (u64, u64),
    pub low: (u64, u64),
    /// (seconds into the run, (VmRSS, RssAnon)), one a second.
    pub timeline: Vec<(f64, (u64, u64))>,
}

/// What the load saw.
pub struct Load {
    pub tally: Tally,
    /// Seconds from the start of the load until every thread had stopped.
    pub elapsed: f64,
    /// Unexpected answers and transport errors, and the first few of them.
    pub unexpected: u64,
    pub details: Vec<String>,
    pub trace: Trace,
}

pub fn run(settings: &Settings, envoy: &Envoy, pid: u32, mix: &[Cheap], tokens: &Tokens) -> Load {
    let shared = Shared {
        stop: AtomicBool::new(false),
        failures: AtomicU64::new(0),
        details: Mutex::new(Vec::new()),
        responses: AtomicU64::new(0),
    };
    let unlinked_sent = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(settings.seconds);
    let plan = Plan {
        port: envoy.port,
        end,
        shared: &shared,
        mix,
        tokens,
        settings,
        unlinked_sent: &unlinked_sent,
    };
    println!("load for {:.0} s ...", settings.seconds);

    let mut trace = Trace {
        warm: None,
        peak: (0, 0),
        low: (u64::MAX, u64::MAX),
        timeline: Vec::new(),
    };
    let mut tally = Tally::default();
    thread::scope(|scope| {
        let plan = &plan;
        let mut handles = Vec::new();
        for i in 0..settings.conns {
            handles.push(scope.spawn(move || plan.cheap(i)));
        }
        for i in 0..2 {
            handles.push(scope.spawn(move || plan.credential(i)));
        }
        handles.push(scope.spawn(move || plan.churn()));
        handles.push(scope.spawn(move || plan.heartbeat()));
        sample(settings, envoy, pid, &shared, (start, end), &mut trace);
        for h in handles {
            tally.merge(h.join().expect("load thread"));
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    Load {
        tally,
        elapsed,
        unexpected: shared.failures.load(Ordering::Relaxed),
        details: shared.details.into_inner().unwrap(),
        trace,
    }
}

/// Samples VmRSS every second until `end` (or a stop), printing the progress now and then; the
/// reference is the sample at the end of the warm-up.
fn sample(
    settings: &Settings,
    envoy: &Envoy,
    pid: u32,
    shared: &Shared,
    (start, end): (Instant, Instant),
    trace: &mut Trace,
) {
    let warmup = settings.warmup();
    let progress_every = (settings.seconds / 10.0).max(5.0);
    let mut next_progress = progress_every;
    loop {
        thread::sleep(Duration::from_secs(1).min(end.saturating_duration_since(Instant::now())));
        let t = start.elapsed().as_secs_f64();
        let Some(rss) = rss_kb(pid) else {
            shared.fail("Envoy's /proc status is gone (did it exit?)".into());
            shared.stop.store(true, Ordering::Relaxed);
            break;
        };
        trace.timeline.push((t, rss));
        if trace.warm.is_none() && start.elapsed() >= warmup {
            trace.warm = Some((rss, admin_memory(envoy)));
        }
        if trace.warm.is_some() {
            trace.peak = (trace.peak.0.max(rss.0), trace.peak.1.max(rss.1));
            trace.low = (trace.low.0.min(rss.0), trace.low.1.min(rss.1));
        }
        if t >= next_progress {
            next_progress += progress_every;
            println!(
                "  {:>5.0} s  {:>9} responses  {:>6.0} req/s  VmRSS {} (anon {})  failures {}",
                t,
                shared.responses.load(Ordering::Relaxed),
                shared.responses.load(Ordering::Relaxed) as f64 / t,
                mib(rss.0),
                mib(rss.1),
                shared.failures.load(Ordering::Relaxed)
            );
        }
        if Instant::now() >= end || shared.stop.load(Ordering::Relaxed) {
            break;
        }
    }
}
