//! `gates`: the routes that need a valid one-time password before they go upstream.

use serde_json::Value;
use std::sync::Arc;

use super::section::Section;
use super::{Gate, OtpSource};

pub(super) fn gates_section(value: Option<Value>, problems: &mut Vec<String>) -> Vec<Arc<Gate>> {
    let entries = match value {
        None => return Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            problems.push("gates: must be an array".into());
            return Vec::new();
        }
    };
    let mut gates = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        // Section paths are static; gates are few, so each message names its index itself.
        let mut local = Vec::new();
        let mut g = Section::new("gate", Some(entry), &mut local);
        let method = g.string("method", None).to_ascii_uppercase();
        let path = g.string("path", None);
        let prefix = match g.string("match", Some("exact")).as_str() {
            "exact" => false,
            "prefix" => true,
            _ => {
                g.problem("match", "must be \"exact\" or \"prefix\"");
                false
            }
        };
        let header = g.take("otp_header");
        let pointer = g.take("otp_pointer");
        let max_body_bytes = g.integer("max_body_bytes", 65_536, 64, 1_048_576) as usize;
        g.finish();
        if !path.starts_with('/') {
            local.push("gate.path: must start with /".into());
        }
        let otp_from = match (header, pointer) {
            (Some(Value::String(h)), None) if !h.is_empty() => {
                Some(OtpSource::Header(h.to_ascii_lowercase()))
            }
            (None, Some(Value::String(p))) if p.starts_with('/') => Some(OtpSource::BodyPointer(p)),
            _ => {
                local.push("gate: set exactly one of otp_header (a header name) or otp_pointer (a JSON pointer like /data/attributes/otp)".into());
                None
            }
        };
        problems.extend(
            local
                .into_iter()
                .map(|p| p.replacen("gate", &format!("gates[{i}]"), 1)),
        );
        if let Some(otp_from) = otp_from {
            gates.push(Arc::new(Gate {
                method,
                path,
                prefix,
                otp_from,
                max_body_bytes,
            }));
        }
    }
    gates
}
