//! bench/results.json, the figures `tools/chart.py` draws as bench/results.png (matplotlib, from the
//! project venv): per scenario its label, Envoy, median req/s (and each run's), median Envoy CPU µs
//! per request; then the ratios of the report's Ratios table. Generic over the scenarios: a new one
//! appears in the chart as it appears in the report, with no change here.

use std::path::Path;
use std::process::Command;

use harness::*;
use serde_json::{json, Value};

use crate::envoys::Proxy;
use crate::report::command_line;
use crate::scenarios::Scenario;
use crate::Settings;

/// The (numerator, denominator, target) rows of the report's "## Ratios" table. Read from the
/// report's text so that the chart marks exactly the ratios the report lists, from one list.
fn ratio_rows(report: &str) -> Vec<(String, String, String)> {
    let Some(section) = report.split("\n## Ratios").nth(1) else {
        return Vec::new();
    };
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let (num, den) = cells.get(1)?.split_once('/')?;
            let target = cells.get(4)?;
            num.starts_with('(')
                .then(|| (num.to_string(), den.to_string(), target.to_string()))
        })
        .collect()
}

/// A figure to 3 decimals (more is noise, and the file is committed); NaN or infinite (no runs) is
/// no figure: null, not a number JSON can't hold.
fn number(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// The chart's data. A scenario that failed keeps its row, with `error` and no figures.
pub fn data(settings: &Settings, scenarios: &[Scenario], proxies: &[Proxy], report: &str) -> Value {
    let find = |k: &str| scenarios.iter().find(|s| s.key == k && s.ok());
    let rows: Vec<Value> = scenarios
        .iter()
        .map(|s| {
            let ok = s.ok();
            json!({
                "key": s.key,
                "what": s.what,
                "envoy": proxies.get(s.envoy).map_or("?", |p| p.name),
                "rps": if ok { number(s.median_rps()) } else { Value::Null },
                "rps_runs": s.runs.iter().map(|r| number(r.rps)).collect::<Vec<_>>(),
                "envoy_cpu_us_per_req": if ok { number(s.median_envoy_us()) } else { Value::Null },
                "error": s.error,
            })
        })
        .collect();
    let ratios: Vec<Value> = ratio_rows(report)
        .into_iter()
        .map(|(num, den, target)| {
            let (n, d) = (find(&num), find(&den));
            json!({
                "num": num,
                "den": den,
                "rps": n.zip(d).map(|(n, d)| number(n.median_rps() / d.median_rps())),
                // Like req/s, higher is better: the baseline's CPU per request over the scenario's.
                "envoy_cpu_inverted": n
                    .zip(d)
                    .map(|(n, d)| number(d.median_envoy_us() / n.median_envoy_us())),
                "target": target,
            })
        })
        .collect();
    json!({
        "date": command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "commit": command_line("git", &["rev-parse", "--short", "HEAD"]),
        "runs": settings.runs,
        "warmup_secs": settings.warmup.as_secs_f64(),
        "measure_secs": settings.measure.as_secs_f64(),
        "conns": settings.conns,
        "scenarios": rows,
        "ratios": ratios,
    })
}

/// Writes `json` next to `png`, then draws `png` from it with tools/chart.py in the project venv
/// (`make bench` installs matplotlib there). The JSON is written first, so that a missing venv
/// loses no figures: `make bench-chart` draws the PNG again from it.
pub fn write(json: &Path, png: &Path, data: &Value) {
    let text = serde_json::to_string_pretty(data).expect("results.json") + "\n";
    std::fs::write(json, text).expect("write results.json");
    let python = root().join(".venv/bin/python");
    let status = Command::new(&python)
        .arg(root().join("tools/chart.py"))
        .arg(json)
        .arg(png)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "{} tools/chart.py failed ({other:?}): bench/results.png not drawn; \
             bench/results.json and bench/results.md are written, `make bench-chart` draws it",
            python.display()
        ),
    }
}
