//! `throttle`: the per-user guess budget and its escalating locks.

use serde_json::Value;
use std::time::Duration;

use super::section::Section;
use crate::state::throttle::ThrottleSettings;

pub(super) fn throttle_section(
    value: Option<Value>,
    problems: &mut Vec<String>,
) -> ThrottleSettings {
    let mut t = Section::new("throttle", value, problems);
    let settings = ThrottleSettings {
        max_failures: t.integer("max_failures", 5, 1, 100) as u32,
        base_lock: Duration::from_secs(t.integer("base_lock_seconds", 60, 1, 86_400)),
        max_lock: Duration::from_secs(t.integer("max_lock_seconds", 86_400, 1, 7 * 86_400)),
        forget_after: Duration::from_secs(t.integer(
            "forget_after_seconds",
            86_400,
            60,
            30 * 86_400,
        )),
        max_users: t.integer("max_users", 100_000, 1, 10_000_000) as usize,
        buckets: t.integer("buckets", 256, 1, 4096) as usize,
    };
    if settings.max_lock < settings.base_lock {
        t.problem(
            "max_lock_seconds",
            "must not be less than base_lock_seconds",
        );
    }
    t.finish();
    settings
}
