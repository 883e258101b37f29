//! `otp`: the code's digits, algorithm, step and lifetime, the master keys, the verify scope and
//! the single-use ledger.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use super::section::{env_secret, Section};
use crate::otp::{HmacAlgorithm, MasterKey, OtpSettings};
use crate::secret::Secret;
use crate::state::single_use::LedgerSettings;

pub(super) fn otp_section(
    value: Option<Value>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> (OtpSettings, LedgerSettings) {
    let mut s = Section::new("otp", value, problems);
    let digits = s.integer("digits", 6, 6, 10) as u32;
    let algorithm_name = s.string("algorithm", Some("SHA256"));
    let algorithm = HmacAlgorithm::parse(&algorithm_name).unwrap_or_else(|| {
        s.problem("algorithm", "must be \"SHA1\", \"SHA256\" or \"SHA512\"");
        HmacAlgorithm::Sha256
    });
    let step_seconds = s.integer("step_seconds", 60, 1, 3600);
    let lifetime_seconds = s.integer("lifetime_seconds", 300, 1, 86_400);
    if lifetime_seconds % step_seconds != 0 || lifetime_seconds < step_seconds {
        s.problem(
            "lifetime_seconds",
            format!("must be a whole multiple of step_seconds ({step_seconds})"),
        );
    }
    let single_key = s.take("master_key_env");
    let key_list = s.take("master_keys");
    let active_id = s.take("active_key");
    let verify_scope = s.string("verify_scope", Some("user:otp:verify"));
    s.check_scope("verify_scope", &verify_scope);
    let single_use = s.take("single_use");
    s.finish();

    let mut u = Section::new("otp.single_use", single_use, problems);
    let ledger = LedgerSettings {
        max_entries: u.integer("max_entries", 100_000, 1, 10_000_000) as usize,
        buckets: u.integer("buckets", 256, 1, 4096) as usize,
        longest_code_ms: lifetime_seconds.saturating_mul(1000),
    };
    u.finish();

    // One key (`master_key_env`, id "default") or several with ids (`master_keys` + `active_key`).
    let mut keys = Vec::new();
    let mut active = 0;
    match (single_key, key_list) {
        (Some(_), Some(_)) => {
            problems.push("otp: set either master_key_env or master_keys, not both".into())
        }
        (single, None) => {
            let variable = match single {
                None => "OTP_MASTER_KEY".to_string(),
                Some(Value::String(v)) if !v.is_empty() => v,
                Some(_) => {
                    problems.push("otp.master_key_env: must be a non-empty string".into());
                    String::new()
                }
            };
            if active_id.is_some() {
                problems.push("otp.active_key: only used with master_keys".into());
            }
            if let Some(key) = master_key(env, "otp.master_key_env", &variable, problems) {
                keys.push(MasterKey {
                    id: "default".into(),
                    key,
                });
            }
        }
        (None, Some(Value::Array(entries))) if !entries.is_empty() => {
            for (i, entry) in entries.iter().enumerate() {
                let at = format!("otp.master_keys[{i}]");
                let id = entry
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                let variable = entry
                    .get("key_env")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                let extra = entry.as_object().map_or(0, |o| {
                    o.keys().filter(|k| *k != "id" && *k != "key_env").count()
                });
                match (id, variable) {
                    (Some(id), Some(variable)) if extra == 0 => {
                        if keys.iter().any(|k: &MasterKey| k.id == id) {
                            problems.push(format!("{at}.id: duplicate id \"{id}\""));
                        } else if let Some(key) =
                            master_key(env, &format!("{at}.key_env"), variable, problems)
                        {
                            keys.push(MasterKey {
                                id: id.to_string(),
                                key,
                            });
                        }
                    }
                    _ => problems.push(format!(
                        "{at}: must be {{\"id\": string, \"key_env\": string}}"
                    )),
                }
            }
            match active_id.as_ref().and_then(Value::as_str) {
                Some(id) => match keys.iter().position(|k| k.id == id) {
                    Some(i) => active = i,
                    None => problems.push(format!("otp.active_key: no master key has id \"{id}\"")),
                },
                None => problems.push("otp.active_key: is required with master_keys".into()),
            }
        }
        (None, Some(_)) => problems.push("otp.master_keys: must be a non-empty array".into()),
    }

    let settings = OtpSettings {
        digits,
        algorithm,
        step_seconds,
        lifetime_seconds,
        keys,
        active,
        verify_scope,
    };
    (settings, ledger)
}

/// A master key from the environment: standard base64 of at least 32 bytes.
pub(super) fn master_key(
    env: &dyn Fn(&str) -> Option<String>,
    at: &str,
    variable: &str,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    let encoded = env_secret(env, at, variable, problems)?;
    match STANDARD.decode(encoded.trim()) {
        Ok(key) if key.len() >= 32 => Some(Secret::from_bytes(key)),
        Ok(key) => {
            problems.push(format!(
                "{at}: the key in {variable} decodes to {} bytes, at least 32 required",
                key.len()
            ));
            None
        }
        Err(_) => {
            problems.push(format!(
                "{at}: the key in {variable} is not standard base64 (make one with `openssl rand -base64 32`)"
            ));
            None
        }
    }
}
