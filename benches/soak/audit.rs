//! Envoy's log after the load: lines by level, and every line that shows a failed VM, an error or
//! a secret.

use std::collections::BTreeMap;

/// Lines that mean a VM (or the filter in it) failed. Matched case-insensitively.
const VM_FAILURE_SIGNS: [&str; 9] = [
    "panicked",
    "wasm vm failed",
    "vm failed",
    "wasm trap",
    "function: proxy_on_",
    "runtimeerror",
    "uncaught",
    "plugin configured to fail",
    "failed to load wasm",
];

/// Secrets that must never be logged: any JWT (`eyJ`), the demo password, the dev master key and
/// the callout secret (the harness audits the same list when Envoy drops).
const SECRETS: [&str; 4] = [
    "eyJ",
    "correct-horse-battery-staple",
    "yNndX/Qxq7uAJihwEVB9yzuMdouxMLJlp4HF25eDOQI=",
    "dev-only-credential-secret",
];

pub struct LogAudit {
    pub lines: usize,
    pub bytes: usize,
    pub by_level: BTreeMap<String, usize>,
    /// (why, line) of every suspicious line, the first few.
    pub bad: Vec<(String, String)>,
    pub bad_count: usize,
    /// Filter warnings before the load began (500 `jwks-unavailable` while the keys load).
    pub startup_warnings: usize,
}

/// Audits the whole log; filter warnings count only from `load_from` (a byte offset) on.
pub fn audit_log(text: &str, load_from: usize) -> LogAudit {
    let mut audit = LogAudit {
        lines: 0,
        bytes: text.len(),
        by_level: BTreeMap::new(),
        bad: Vec::new(),
        bad_count: 0,
        startup_warnings: 0,
    };
    let mut at = 0;
    for line in text.lines() {
        let during_load = at >= load_from;
        at += line.len() + 1;
        audit.lines += 1;
        // [time][thread][level][component] ...
        let level = line
            .split('[')
            .nth(3)
            .and_then(|s| s.split(']').next())
            .unwrap_or("?");
        *audit.by_level.entry(level.to_string()).or_default() += 1;
        let lower = line.to_ascii_lowercase();
        let why = if matches!(level, "critical" | "error") {
            Some(format!("{level} line"))
        } else if let Some(sign) = VM_FAILURE_SIGNS.iter().find(|s| lower.contains(*s)) {
            Some(format!("VM failure sign {sign:?}"))
        } else if level == "warning" && lower.contains("wasm") && during_load {
            Some("wasm warning".to_string())
        } else {
            if level == "warning" && lower.contains("wasm") {
                audit.startup_warnings += 1;
            }
            SECRETS
                .iter()
                .find(|s| line.contains(*s))
                .map(|s| format!("secret ({}...) in the log", &s[..3]))
        };
        if let Some(why) = why {
            audit.bad_count += 1;
            if audit.bad.len() < 5 {
                let shown: String = line.chars().take(400).collect();
                audit.bad.push((why, shown));
            }
        }
    }
    audit
}
