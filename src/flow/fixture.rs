//! The one test fixture of the flow's unit tests: contexts, the clock they run at, and readers
//! for the steps the flow returns. Each route's tests build their own requests on top.

pub(crate) use super::*;
pub(crate) use crate::callout::Upstream;
pub(crate) use crate::config::Config;
pub(crate) use crate::otp;
pub(crate) use crate::state::store::MemoryStore;
pub(crate) use crate::testkit::{self, claims, merged, NOW};

use serde_json::Value;

pub(crate) const NOW_MS: u64 = NOW * 1000;

/// A context with a fresh in-memory shared store (leaked: tests are short-lived).
pub(crate) fn cx(config: &Config) -> Ctx<'_> {
    Ctx {
        config,
        store: Box::leak(Box::new(MemoryStore::new())),
        now_ms: NOW_MS,
    }
}

/// A context on `store`, for tests that look at the shared state between requests.
pub(crate) fn ctx<'a>(config: &'a Config, store: &'a MemoryStore) -> Ctx<'a> {
    Ctx {
        config,
        store,
        now_ms: NOW_MS,
    }
}

/// The status and error code of a reply step (`issued` for the 201).
pub(crate) fn answer(step: &Step) -> (u16, String) {
    match step {
        Step::Reply { reply, outcome } => {
            let body: Value = serde_json::from_slice(&reply.body).expect("json body");
            let code = body["errors"][0]["code"]
                .as_str()
                .unwrap_or("issued")
                .to_string();
            assert_eq!(code, *outcome);
            (reply.status, code)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// A reply's outcome, or what the step is.
pub(crate) fn outcome(step: &Step) -> &'static str {
    match step {
        Step::Reply { outcome, .. } => outcome,
        Step::Continue => "continue",
        Step::Forward => "forward",
        Step::Call(_) => "call",
        Step::Wait => "wait",
    }
}

/// A reply's outcome; `(no reply)` for any other step.
pub(crate) fn code(step: &Step) -> &'static str {
    match step {
        Step::Reply { outcome, .. } => outcome,
        _ => "(no reply)",
    }
}
