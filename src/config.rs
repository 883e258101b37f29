//! The filter's configuration: JSON in the Envoy YAML (`configuration` as a StringValue), read once
//! per plugin in `on_configure`. Unknown fields are refused and every problem is reported in one
//! message, so an operator fixes a config in one round. Secrets are named by environment variable
//! (set through `vm_config.environment_variables`) and never appear in the config or in messages.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};
use std::time::Duration;

use crate::introspection::IntrospectionSettings;
use crate::jwk::{Algorithm, Key, KeySet};
use crate::jwks::RemoteJwksSettings;
use crate::otp::{HmacAlgorithm, MasterKey, OtpSettings};
use crate::secret::Secret;
use crate::single_use::LedgerSettings;
use crate::throttle::ThrottleSettings;
use crate::token::{LinkedIdentityRule, TokenSettings, TokenSource};

pub const DEFAULT_API_VERSIONS: [&str; 5] = ["2021-2", "2022-1", "2024-1", "2024-2", "2025-1"];

pub struct Config {
    /// Exact paths served, `/user/<version>/user/otp`, one per configured API version.
    pub routes: Vec<String>,
    /// `/user/<version>/user/otp/verify`, one per configured API version.
    pub verify_routes: Vec<String>,
    /// Routes that need a valid OTP before they go upstream.
    pub gates: Vec<Gate>,
    pub max_body_bytes: usize,
    pub credential_service: CredentialServiceSettings,
    pub token: TokenSettings,
    pub otp: OtpSettings,
    pub single_use: LedgerSettings,
    pub throttle: ThrottleSettings,
}

/// A route that requires a valid one-time password (PIN change, payment authorization).
pub struct Gate {
    pub method: String,
    pub path: String,
    /// Match `path` as a prefix rather than exactly.
    pub prefix: bool,
    pub otp_from: OtpSource,
    pub max_body_bytes: usize,
}

pub enum OtpSource {
    /// A request header (lower-case name).
    Header(String),
    /// A JSON pointer into the JSON request body, e.g. `/data/attributes/otp`.
    BodyPointer(String),
}

pub struct CredentialServiceSettings {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    /// Header name and value sent with every callout, the value read from the environment.
    pub auth_header: Option<(String, Secret)>,
}

impl std::fmt::Debug for Config {
    /// Lengths and counts only: printing a config must never print a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "routes={} max_body_bytes={} credential_service: cluster={} authority={} path={} timeout={}ms auth_header={} \
             token: issuer={} audiences={} scope={} leeway={}s user_id_claim={} keys={} \
             otp: {} digits, {:?}, step {}s, lifetime {}s, master keys {} (active \"{}\")",
            self.routes.len(),
            self.max_body_bytes,
            self.credential_service.cluster,
            self.credential_service.authority,
            self.credential_service.path,
            self.credential_service.timeout.as_millis(),
            self.credential_service.auth_header.is_some(),
            self.token.issuer,
            self.token.audiences.len(),
            self.token.required_scope,
            self.token.leeway_seconds,
            self.token.user_id_claim,
            self.token.keys.len(),
            self.otp.digits,
            self.otp.algorithm,
            self.otp.step_seconds,
            self.otp.lifetime_seconds,
            self.otp.keys.len(),
            self.otp.keys.get(self.otp.active).map_or("", |k| k.id.as_str()),
        )
    }
}

/// Reads one JSON object, remembering which fields were consumed so the rest can be refused.
struct Section<'a> {
    at: &'static str,
    fields: Map<String, Value>,
    problems: &'a mut Vec<String>,
}

impl<'a> Section<'a> {
    fn new(at: &'static str, value: Option<Value>, problems: &'a mut Vec<String>) -> Self {
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

    fn problem(&mut self, field: &str, message: impl std::fmt::Display) {
        let sep = if self.at.is_empty() { "" } else { "." };
        self.problems
            .push(format!("{}{sep}{field}: {message}", self.at));
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        self.fields.remove(field)
    }

    fn string(&mut self, field: &str, default: Option<&str>) -> String {
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
    fn check_scope(&mut self, field: &str, scope: &str) {
        let nqchar = |b: u8| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e);
        if !scope.is_empty() && !scope.bytes().all(nqchar) {
            self.problem(
                field,
                "must be one OAuth scope (RFC 6749 §3.3: printable ASCII, no spaces, quotes or backslashes)",
            );
        }
    }

    fn integer(&mut self, field: &str, default: u64, min: u64, max: u64) -> u64 {
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

    fn strings(&mut self, field: &str, default: Option<&[&str]>) -> Vec<String> {
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
    fn upstream(&mut self, default_path: Option<&str>) -> (String, String, String, Duration) {
        let cluster = self.string("cluster", None);
        let authority = self.string("authority", None);
        let path = self.string("path", default_path);
        // An empty path was reported by `string` already.
        if !path.is_empty() && !path.starts_with('/') {
            self.problem("path", "must start with /");
        }
        let timeout = Duration::from_millis(self.integer("timeout_ms", 2000, 1, 60_000));
        (cluster, authority, path, timeout)
    }

    /// Refuses whatever was not consumed: a typo must not silently fall back to a default.
    fn finish(self) {
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
fn env_secret(
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

/// Parses and validates the whole configuration. `env` looks up VM environment variables.
pub fn parse(text: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
    let root: Value = serde_json::from_slice(text)
        .map_err(|e| format!("otp-filter configuration is not valid JSON: {e}"))?;
    let mut problems = Vec::new();
    let mut top = Section::new("", Some(root), &mut problems);

    let versions = top.strings("api_versions", Some(&DEFAULT_API_VERSIONS));
    for v in &versions {
        if !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            top.problem(
                "api_versions",
                format!("\"{v}\" is not a plain version name"),
            );
        }
    }
    let routes = versions
        .iter()
        .map(|v| format!("/user/{v}/user/otp"))
        .collect();
    let verify_routes = versions
        .iter()
        .map(|v| format!("/user/{v}/user/otp/verify"))
        .collect();
    let max_body_bytes = top.integer("max_body_bytes", 4096, 64, 65_536) as usize;
    let credential = top.take("credential_service");
    let token = top.take("token");
    let otp = top.take("otp");
    let throttle = top.take("throttle");
    let gates = top.take("gates");
    top.finish();

    let credential_service = credential_section(credential, env, &mut problems);
    let token = token_section(token, env, &mut problems);
    let (otp, single_use) = otp_section(otp, env, &mut problems);
    let throttle = throttle_section(throttle, &mut problems);
    let gates = gates_section(gates, &mut problems);

    if problems.is_empty() {
        Ok(Config {
            routes,
            verify_routes,
            gates,
            max_body_bytes,
            credential_service,
            token,
            otp,
            single_use,
            throttle,
        })
    } else {
        Err(format!(
            "otp-filter configuration has {} problem(s): {}",
            problems.len(),
            problems.join("; ")
        ))
    }
}

fn credential_section(
    value: Option<Value>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> CredentialServiceSettings {
    if value.is_none() {
        problems.push("credential_service: is required".into());
    }
    let mut s = Section::new("credential_service", value, problems);
    let (cluster, authority, path, timeout) = s.upstream(Some("/v1/credentials/verify"));
    let auth = s.take("auth_header");
    s.finish();

    let auth_header = auth.and_then(|auth| {
        let mut a = Section::new("credential_service.auth_header", Some(auth), problems);
        let name = a.string("name", None).to_ascii_lowercase();
        let variable = a.string("value_env", None);
        if name.starts_with(':') || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            a.problem("name", "must be a plain header name");
        }
        a.finish();
        if variable.is_empty() {
            return None;
        }
        let value = env_secret(
            env,
            "credential_service.auth_header.value_env",
            &variable,
            problems,
        )?;
        Some((name, Secret::new(value)))
    });

    CredentialServiceSettings {
        cluster,
        authority,
        path,
        timeout,
        auth_header,
    }
}

fn token_section(
    value: Option<Value>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> TokenSettings {
    if value.is_none() {
        problems.push("token: is required".into());
    }
    let mut s = Section::new("token", value, problems);
    let mode = s.string("mode", Some("jwt"));
    // jwt_authn checks issuer and audience itself (its provider config); everywhere else they are ours.
    let (issuer, audiences) = if mode == "jwt_authn" {
        for field in ["issuer", "audiences"] {
            if s.take(field).is_some() {
                s.problem(
                    field,
                    "is checked by the jwt_authn provider in jwt_authn mode; set it there",
                );
            }
        }
        (String::new(), Vec::new())
    } else {
        (s.string("issuer", None), s.strings("audiences", None))
    };
    let authorized_parties = s.strings("authorized_parties", Some(&[]));
    let required_scope = s.string("required_scope", Some("user:otp:create"));
    s.check_scope("required_scope", &required_scope);
    let leeway_seconds = s.integer("leeway_seconds", 30, 0, 60);
    let user_id_claim = s.string("user_id_claim", Some("sub"));
    let linked = s.take("linked_identity");
    let jwks = s.take("jwks");
    let remote = s.take("remote_jwks");
    let hmac_keys = s.take("hmac_keys");
    let jwt_authn = s.take("jwt_authn");
    let introspection = s.take("introspection");
    let cache_entries = s.integer("cache_entries", 4096, 0, 100_000) as usize;
    let cache_seconds = s.integer("cache_seconds", 300, 0, 3600);
    s.finish();

    let linked_identity = linked.map(|linked| {
        let mut l = Section::new("token.linked_identity", Some(linked), problems);
        let claim = l.string("claim", None);
        let equals = l.take("equals");
        l.finish();
        LinkedIdentityRule { claim, equals }
    });

    let mut keys = match &jwks {
        Some(jwks) => KeySet::from_jwks(jwks, "token.jwks", problems),
        None => KeySet::default(),
    };
    match hmac_keys {
        None => {}
        Some(Value::Array(entries)) => {
            for (i, entry) in entries.into_iter().enumerate() {
                let at = format!("token.hmac_keys[{i}]");
                if let Some(key) = hmac_key(entry, &at, env, problems) {
                    keys.add(key, &at, problems);
                }
            }
        }
        Some(_) => problems.push("token.hmac_keys: must be an array".into()),
    }
    let remote_jwks = remote.map(|remote| remote_jwks_section(remote, problems));
    let has_keys = !keys.is_empty() || remote_jwks.is_some();
    let source = match mode.as_str() {
        "jwt" => {
            if !has_keys {
                problems.push(
                    "token: configure \"jwks\", \"remote_jwks\" or \"hmac_keys\" so tokens can be verified".into(),
                );
            }
            TokenSource::Jwt
        }
        "jwt_authn" => {
            let mut j = Section::new("token.jwt_authn", jwt_authn.clone(), problems);
            let payload_key = j.string("payload_metadata_key", None);
            j.finish();
            TokenSource::JwtAuthn { payload_key }
        }
        "introspection" => match introspection.clone() {
            Some(value) => TokenSource::Introspection(introspection_section(value, env, problems)),
            None => {
                problems.push("token.introspection: is required in introspection mode".into());
                TokenSource::Jwt
            }
        },
        _ => {
            problems.push("token.mode: must be \"jwt\", \"jwt_authn\" or \"introspection\"".into());
            TokenSource::Jwt
        }
    };
    if mode != "jwt" && has_keys {
        problems.push(format!(
            "token: keys (jwks, remote_jwks, hmac_keys) are not used in {mode} mode"
        ));
    }
    if mode != "jwt_authn" && jwt_authn.is_some() {
        problems.push(format!(
            "token.jwt_authn: only used in jwt_authn mode, not {mode}"
        ));
    }
    if mode != "introspection" && introspection.is_some() {
        problems.push(format!(
            "token.introspection: only used in introspection mode, not {mode}"
        ));
    }

    TokenSettings {
        issuer,
        audiences,
        authorized_parties,
        required_scope,
        leeway_seconds,
        user_id_claim,
        linked_identity,
        keys,
        remote_jwks,
        cache_entries,
        cache_seconds,
        source,
    }
}

fn introspection_section(
    value: Value,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> IntrospectionSettings {
    let mut i = Section::new("token.introspection", Some(value), problems);
    let (cluster, authority, path, timeout) = i.upstream(None);
    let client_id = i.string("client_id", None);
    let variable = i.string("client_secret_env", None);
    let cache_seconds = i.integer("cache_seconds", 30, 0, 300);
    let cache_entries = i.integer("cache_entries", 10_000, 0, 100_000) as usize;
    i.finish();
    let client_secret = if variable.is_empty() {
        None
    } else {
        env_secret(
            env,
            "token.introspection.client_secret_env",
            &variable,
            problems,
        )
    };
    IntrospectionSettings {
        cluster,
        authority,
        path,
        timeout,
        client_id,
        client_secret: Secret::new(client_secret.unwrap_or_default()),
        cache_seconds,
        cache_entries,
    }
}

fn hmac_key(
    entry: Value,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<Key> {
    let fields = match entry {
        Value::Object(fields) => fields,
        _ => {
            problems.push(format!("{at}: must be an object"));
            return None;
        }
    };
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    for name in fields
        .keys()
        .filter(|k| !["kid", "alg", "secret_env"].contains(&k.as_str()))
    {
        problems.push(format!("{at}.{name}: unknown field"));
    }
    let Some(kid) = text("kid") else {
        problems.push(format!("{at}.kid: is required"));
        return None;
    };
    let algorithm = text("alg").and_then(Algorithm::parse);
    let Some((algorithm, min_len)) = algorithm.and_then(|a| Some((a, a.min_hmac_key_bytes()?)))
    else {
        problems.push(format!(
            "{at}.alg: must be \"HS256\", \"HS384\" or \"HS512\""
        ));
        return None;
    };
    let Some(variable) = text("secret_env") else {
        problems.push(format!("{at}.secret_env: is required"));
        return None;
    };
    let secret = env_secret(env, &format!("{at}.secret_env"), variable, problems)?;
    if secret.len() < min_len {
        problems.push(format!(
            "{at}.secret_env: the secret in {variable} is {} bytes, at least {min_len} required for {}",
            secret.len(),
            text("alg").unwrap_or_default()
        ));
        return None;
    }
    Some(Key::hmac(kid.to_string(), algorithm, Secret::new(secret)))
}

fn remote_jwks_section(value: Value, problems: &mut Vec<String>) -> RemoteJwksSettings {
    let mut r = Section::new("token.remote_jwks", Some(value), problems);
    let (cluster, authority, path, timeout) = r.upstream(None);
    let refresh = Duration::from_secs(r.integer("refresh_seconds", 300, 10, 86_400));
    let min_refetch = Duration::from_secs(r.integer("min_refetch_seconds", 30, 1, 3600));
    r.finish();
    RemoteJwksSettings {
        cluster,
        authority,
        path,
        timeout,
        refresh,
        min_refetch,
    }
}

fn otp_section(
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

fn throttle_section(value: Option<Value>, problems: &mut Vec<String>) -> ThrottleSettings {
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

fn gates_section(value: Option<Value>, problems: &mut Vec<String>) -> Vec<Gate> {
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
            gates.push(Gate {
                method,
                path,
                prefix,
                otp_from,
                max_body_bytes,
            });
        }
    }
    gates
}

/// A master key from the environment: standard base64 of at least 32 bytes.
fn master_key(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, config_json, merged};
    use serde_json::json;

    fn problems_of(value: Value) -> String {
        match testkit::config_from(&value) {
            Ok(_) => panic!("config should be refused: {value}"),
            Err(message) => message,
        }
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = testkit::config();
        assert_eq!(
            c.routes,
            [
                "/user/2021-2/user/otp",
                "/user/2022-1/user/otp",
                "/user/2024-1/user/otp",
                "/user/2024-2/user/otp",
                "/user/2025-1/user/otp"
            ]
        );
        assert_eq!(c.max_body_bytes, 4096);
        assert_eq!(c.credential_service.path, "/v1/credentials/verify");
        assert_eq!(c.credential_service.timeout, Duration::from_millis(2000));
        let (name, value) = c
            .credential_service
            .auth_header
            .as_ref()
            .expect("auth header");
        assert_eq!(
            (name.as_str(), value.expose()),
            ("authorization", &b"Bearer callout"[..])
        );
        assert_eq!(c.token.required_scope, "user:otp:create");
        assert_eq!(c.token.leeway_seconds, 30);
        assert_eq!(c.token.user_id_claim, "sub");
        assert_eq!(c.token.keys.len(), 8);
        assert_eq!(c.otp.digits, 6);
        assert_eq!(c.otp.algorithm, HmacAlgorithm::Sha256);
        assert_eq!((c.otp.step_seconds, c.otp.lifetime_seconds), (60, 300));
        assert_eq!(c.otp.keys.len(), 1);
        assert_eq!(
            (c.otp.keys[0].id.as_str(), c.otp.keys[0].key.len()),
            ("default", 32)
        );
    }

    #[test]
    fn every_problem_is_reported_in_one_message() {
        let bad = merged(
            &config_json(),
            &json!({
                "max_body_bytes": 10,
                "colour": "blue",
                "otp": {"digits": 11, "algorithm": "MD5", "step_seconds": 30, "lifetime_seconds": 45, "master_key_env": "NOPE"},
                "token": {"issuer": "", "audiences": [], "leeway_seconds": 61, "jwks": {"keys": [{"kty": "oct", "kid": "k"}]}, "extra": 1, "required_scope": "user otp"}
            }),
        );
        let message = problems_of(bad);
        for expected in [
            "max_body_bytes: must be an integer from 64 to 65536",
            "colour: unknown field",
            "otp.digits: must be an integer from 6 to 10",
            "otp.algorithm: must be \"SHA1\", \"SHA256\" or \"SHA512\"",
            "otp.lifetime_seconds: must be a whole multiple of step_seconds (30)",
            "otp.master_key_env: environment variable NOPE is not set",
            "token.issuer: must be a non-empty string",
            "token.audiences: must be a non-empty array of strings",
            "token.leeway_seconds: must be an integer from 0 to 60",
            "token.required_scope: must be one OAuth scope (RFC 6749 §3.3: printable ASCII, no spaces, quotes or backslashes)",
            "token.extra: unknown field",
            "token.jwks.keys[0]: symmetric keys do not belong in a JWKS",
            "token: configure \"jwks\", \"remote_jwks\" or \"hmac_keys\"",
        ] {
            assert!(
                message.contains(expected),
                "missing {expected:?} in {message}"
            );
        }
        assert!(
            message.starts_with("otp-filter configuration has 13 problem(s): "),
            "{message}"
        );
    }

    #[test]
    fn required_sections_and_keys() {
        let message = problems_of(json!({}));
        assert!(
            message.contains("credential_service: is required"),
            "{message}"
        );
        assert!(message.contains("token: is required"), "{message}");
        assert!(problems_of(json!([])).contains("must be an object"));
        assert!(testkit::config_from(&json!("not json")).is_err());
        let message = match parse(b"{", &testkit::env) {
            Err(m) => m,
            Ok(_) => panic!("accepted"),
        };
        assert!(
            message.starts_with("otp-filter configuration is not valid JSON"),
            "{message}"
        );
    }

    #[test]
    fn key_problems_are_explained_without_the_key() {
        let short_key = |_: &str| Some("c2hvcnQ=".to_string());
        let message = match parse(config_json().to_string().as_bytes(), &short_key) {
            Err(m) => m,
            Ok(_) => panic!("accepted a 5-byte key"),
        };
        assert!(
            message.contains("decodes to 5 bytes, at least 32 required"),
            "{message}"
        );
        assert!(!message.contains("c2hvcnQ"), "{message}");
        let not_b64 =
            |_: &str| Some("this is not base64 but is long enough to be a key".to_string());
        let message = match parse(config_json().to_string().as_bytes(), &not_b64) {
            Err(m) => m,
            Ok(_) => panic!("accepted"),
        };
        assert!(message.contains("is not standard base64"), "{message}");
        assert!(!message.contains("long enough"), "{message}");
    }

    #[test]
    fn jwks_keys_are_checked() {
        let n = testkit::jwks()["keys"][0]["n"].clone();
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "a", "alg": "ES256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "c", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "EC", "kid": "d", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "alg": "RS256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "e", "use": "enc", "n": n, "e": "AQAB"},
            {"kty": "OKP", "kid": "f", "crv": "X25519", "x": "AA"},
        ]});
        let mut with_dupe = jwks.clone();
        let first_dev_key = testkit::jwks()["keys"][0].clone();
        with_dupe["keys"]
            .as_array_mut()
            .unwrap()
            .push(first_dev_key.clone());
        with_dupe["keys"]
            .as_array_mut()
            .unwrap()
            .push(first_dev_key);
        let mut value = config_json();
        value["token"]["jwks"] = with_dupe;
        value["token"]["hmac_keys"] = json!([
            {"kid": "h1", "alg": "HS512", "secret_env": "HS_SECRET"},
            {"kid": "h2", "alg": "RS256", "secret_env": "HS_SECRET"},
            {"kid": "h3", "alg": "HS256", "secret_env": "HS_SECRET", "secret": "inline"},
        ]);
        let message = problems_of(value);
        for expected in [
            "keys[0]: \"alg\" \"ES256\" is not supported for this key type",
            "keys[1]: RSA modulus is 17 bits, at least 2048 required",
            "keys[2]: EC keys must have \"crv\" \"P-256\" or \"P-384\"",
            "keys[3]: \"x\" must be 32 bytes",
            "keys[4]: \"kid\" must be a non-empty string",
            "keys[5]: \"use\" must be \"sig\" when present",
            "keys[6]: OKP keys must have \"crv\" \"Ed25519\"",
            "keys[8]: duplicate kid \"dev-rs256\"",
            "hmac_keys[0].secret_env: the secret in HS_SECRET is 40 bytes, at least 64 required for HS512",
            "hmac_keys[1].alg: must be \"HS256\", \"HS384\" or \"HS512\"",
            "hmac_keys[2].secret: unknown field",
        ] {
            assert!(message.contains(expected), "missing {expected:?} in {message}");
        }
        assert!(!message.contains(testkit::HS_SECRET));
    }

    #[test]
    fn master_keys_rotate_by_id() {
        let env = |name: &str| match name {
            "K1" | "K2" => Some(testkit::MASTER_KEY_B64.to_string()),
            other => testkit::env(other),
        };
        let mut value = config_json();
        value["otp"] = json!({"master_keys": [{"id": "k2", "key_env": "K2"}, {"id": "k1", "key_env": "K1"}], "active_key": "k1"});
        let c = parse(value.to_string().as_bytes(), &env).unwrap();
        assert_eq!(
            c.otp.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["k2", "k1"]
        );
        assert_eq!(c.otp.active, 1);
        value["otp"] = json!({"master_keys": [{"id": "k1", "key_env": "K1"}, {"id": "k1", "key_env": "K2"}, {"id": "k3"}], "active_key": "k9", "master_key_env": "X"});
        let message = match parse(value.to_string().as_bytes(), &env) {
            Err(m) => m,
            Ok(_) => panic!("accepted"),
        };
        assert!(
            message.contains("otp: set either master_key_env or master_keys, not both"),
            "{message}"
        );
        value["otp"]
            .as_object_mut()
            .unwrap()
            .remove("master_key_env");
        let message = match parse(value.to_string().as_bytes(), &env) {
            Err(m) => m,
            Ok(_) => panic!("accepted"),
        };
        for expected in [
            "otp.master_keys[1].id: duplicate id \"k1\"",
            "otp.master_keys[2]: must be {\"id\": string, \"key_env\": string}",
            "otp.active_key: no master key has id \"k9\"",
        ] {
            assert!(
                message.contains(expected),
                "missing {expected:?} in {message}"
            );
        }
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        let c = testkit::config();
        let printed = format!("{c:?}");
        assert!(
            printed.contains("master keys 1 (active \"default\")"),
            "{printed}"
        );
        for secret in [
            testkit::MASTER_KEY_B64,
            "Bearer callout",
            testkit::HS_SECRET,
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
