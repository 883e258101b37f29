//! The field reader every section uses: it takes fields by name and type, collects every problem
//! with its path (`token.jwks.keys[0]: …`) instead of stopping at the first, and refuses fields it
//! was not asked for. Problems name fields, never values: a value may be a secret pasted by mistake.

use serde_json::{Map, Value};
use std::time::Duration;

use crate::callout::UpstreamSettings;

/// Reads one JSON object, remembering which fields were consumed so the rest can be refused.
pub(super) struct Section<'a> {
    at: &'static str,
    fields: Map<String, Value>,
    problems: &'a mut Vec<String>,
}

impl<'a> Section<'a> {
    pub(super) fn new(
        at: &'static str,
        value: Option<Value>,
        problems: &'a mut Vec<String>,
    ) -> Self {
        let fields = match value {
            Some(Value::Object(map)) => map,
            None => Map::new(),
            Some(_) => {
                problems.push(format!("{at}: must be an object"));
                Map::new()
            }
        };
        Section {
            at,
            fields,
            problems,
        }
    }

    pub(super) fn problem(&mut self, field: &str, message: impl std::fmt::Display) {
        let sep = if self.at.is_empty() { "" } else { "." };
        self.problems
            .push(format!("{}{sep}{field}: {message}", self.at));
    }

    pub(super) fn take(&mut self, field: &str) -> Option<Value> {
        self.fields.remove(field)
    }

    pub(super) fn string(&mut self, field: &str, default: Option<&str>) -> String {
        // (Config problems name fields, never values: a value may be a secret pasted by mistake.)
        match self.take(field) {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(_) => {
                self.problem(field, "must be a non-empty string");
                String::new()
            }
            None => match default {
                Some(d) => d.to_string(),
                None => {
                    self.problem(field, "is required");
                    String::new()
                }
            },
        }
    }

    /// One RFC 6749 §3.3 scope-token (NQCHAR: printable ASCII but space, `"` and `\`): the 403
    /// names it in `WWW-Authenticate`, which must not need quoting.
    pub(super) fn check_scope(&mut self, field: &str, scope: &str) {
        let nqchar = |b: u8| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e);
        if !scope.is_empty() && !scope.bytes().all(nqchar) {
            self.problem(
                field,
                "must be one OAuth scope (RFC 6749 §3.3: printable ASCII, no spaces, quotes or backslashes)",
            );
        }
    }

    pub(super) fn integer(&mut self, field: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.take(field) {
            None => default,
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.problem(field, format!("must be an integer from {min} to {max}"));
                    default
                }
            },
        }
    }

    pub(super) fn strings(&mut self, field: &str, default: Option<&[&str]>) -> Vec<String> {
        match self.take(field) {
            None => match default {
                Some(d) => d.iter().map(|s| s.to_string()).collect(),
                None => {
                    self.problem(field, "is required");
                    Vec::new()
                }
            },
            Some(Value::Array(items)) if !items.is_empty() => {
                let strings: Vec<String> = items
                    .iter()
                    .filter_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string))
                    .collect();
                if strings.len() != items.len() {
                    self.problem(field, "must hold only non-empty strings");
                }
                strings
            }
            Some(_) => {
                self.problem(field, "must be a non-empty array of strings");
                Vec::new()
            }
        }
    }

    /// The fields every callout target has: `cluster`, `authority`, `path` (starting with `/`)
    /// and `timeout_ms` (default 2000).
    pub(super) fn upstream(&mut self, default_path: Option<&str>) -> UpstreamSettings {
        let cluster = self.string("cluster", None);
        let authority = self.string("authority", None);
        let path = self.string("path", default_path);
        // An empty path was reported by `string` already.
        if !path.is_empty() && !path.starts_with('/') {
            self.problem("path", "must start with /");
        }
        let timeout = Duration::from_millis(self.integer("timeout_ms", 2000, 1, 60_000));
        UpstreamSettings {
            cluster,
            authority,
            path,
            timeout,
        }
    }

    /// Refuses whatever was not consumed: a typo must not silently fall back to a default.
    pub(super) fn finish(self) {
        let mut unknown: Vec<&String> = self.fields.keys().collect();
        unknown.sort();
        for name in unknown {
            let sep = if self.at.is_empty() { "" } else { "." };
            self.problems
                .push(format!("{}{sep}{name}: unknown field", self.at));
        }
    }
}

/// Reads an environment variable named in the config. Returns the value, or records a problem that
/// names the variable but never its value.
pub(super) fn env_secret(
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
    variable: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match env(variable) {
        Some(v) if !v.is_empty() => Some(v),
        _ => {
            problems.push(format!(
                "{at}: environment variable {variable} is not set in the VM (add it to vm_config.environment_variables)"
            ));
            None
        }
    }
}
