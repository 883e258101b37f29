//! `otp`: the code's digits, algorithm, step and lifetime, the master keys, the verify scope and
//! the single-use ledger.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use std::time::Duration;

use super::credential::auth_header;
use super::section::{env_secret, Section};
use crate::callout::authority::AuthoritySettings;
use crate::callout::credential::CredentialServiceSettings;
use crate::callout::UpstreamSettings;
use crate::otp::{HmacAlgorithm, MasterKey, OtpSettings};
use crate::secret::Secret;
use crate::state::single_use::LedgerSettings;

/// What `otp` configures: the codes, the local single-use ledger, and the authority that decides
/// single use and the guess budget fleet-wide (`None`: this Envoy's shared data decides).
pub(super) struct OtpSection {
    pub otp: OtpSettings,
    pub ledger: LedgerSettings,
    pub authority: Option<AuthoritySettings>,
}

pub(super) fn otp_section(
    value: Option<Value>,
    credential_service: &CredentialServiceSettings,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> OtpSection {
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
    let decided_by = s.string("decided_by", Some("envoy"));
    let authority = s.take("authority");
    s.finish();
    let authority = match decided_by.as_str() {
        "envoy" => {
            if authority.is_some() {
                problems.push("otp.authority: only used with \"decided_by\": \"authority\"".into());
            }
            None
        }
        "authority" => Some(authority_section(
            authority,
            credential_service,
            env,
            problems,
        )),
        _ => {
            problems.push("otp.decided_by: must be \"envoy\" or \"authority\"".into());
            None
        }
    };

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
    OtpSection {
        otp: settings,
        ledger,
        authority,
    }
}

/// `otp.authority`: where the one-time-use authority is. Every field defaults to the credential
/// service's (its cluster, authority, timeout and auth header), with the path `/v1/otp`: the
/// reference credential service is an authority.
fn authority_section(
    value: Option<Value>,
    credential_service: &CredentialServiceSettings,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> AuthoritySettings {
    let defaults = &credential_service.upstream;
    let mut a = Section::new("otp.authority", value, problems);
    let cluster = a.string("cluster", Some(&defaults.cluster));
    let authority = a.string("authority", Some(&defaults.authority));
    let path = a.string("path", Some("/v1/otp"));
    if !path.is_empty() && !path.starts_with('/') {
        a.problem("path", "must start with /");
    }
    let timeout_ms = a.integer(
        "timeout_ms",
        u64::try_from(defaults.timeout.as_millis()).unwrap_or(2000),
        1,
        60_000,
    );
    let auth = a.take("auth_header");
    a.finish();
    let auth_header = match auth {
        Some(auth) => auth_header("otp.authority.auth_header", auth, env, problems),
        // The same secret, copied once at configure time.
        None => credential_service
            .auth_header
            .as_ref()
            .map(|(name, value)| (name.clone(), Secret::from_bytes(value.expose().to_vec()))),
    };
    AuthoritySettings {
        upstream: UpstreamSettings {
            cluster,
            authority,
            path,
            timeout: Duration::from_millis(timeout_ms),
        },
        auth_header,
    }
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
