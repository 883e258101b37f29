//! `credential_service`: where the PIN and password checks go, and the header that authenticates
//! the callouts.

use serde_json::Value;

use super::section::{env_secret, Section};
use crate::callout::credential::CredentialServiceSettings;
use crate::secret::Secret;

pub(super) fn credential_section(
    value: Option<Value>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> CredentialServiceSettings {
    if value.is_none() {
        problems.push("credential_service: is required".into());
    }
    let mut s = Section::new("credential_service", value, problems);
    let upstream = s.upstream(Some("/v1/credentials/verify"));
    let auth = s.take("auth_header");
    s.finish();

    let auth_header =
        auth.and_then(|auth| auth_header("credential_service.auth_header", auth, env, problems));

    CredentialServiceSettings {
        upstream,
        auth_header,
    }
}

/// An `auth_header` object: a plain header name and the environment variable its value is in.
pub(super) fn auth_header(
    at: &'static str,
    value: Value,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<(String, Secret)> {
    let mut a = Section::new(at, Some(value), problems);
    let name = a.string("name", None).to_ascii_lowercase();
    let variable = a.string("value_env", None);
    if name.starts_with(':') || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        a.problem("name", "must be a plain header name");
    }
    a.finish();
    if variable.is_empty() {
        return None;
    }
    let value = env_secret(env, &format!("{at}.value_env"), &variable, problems)?;
    Some((name, Secret::new(value)))
}
