//! The filter's configuration: JSON in the Envoy YAML (`configuration` as a StringValue), read once
//! per plugin in `on_configure`. Unknown fields are refused and every problem is reported in one
//! message, so an operator fixes a config in one round. Secrets are named by environment variable
//! (set through `vm_config.environment_variables`) and never appear in the config or in messages.

mod credential;
mod gates;
mod otp;
mod section;
mod throttle;
mod token;

use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use crate::callout::authority::AuthoritySettings;
use crate::callout::credential::CredentialServiceSettings;
use crate::callout::{Upstream, UpstreamSettings};
use crate::otp::OtpSettings;
use crate::state::single_use::LedgerSettings;
use crate::state::throttle::ThrottleSettings;
use crate::token::{TokenSettings, TokenSource};

use credential::credential_section;
use gates::gates_section;
use otp::otp_section;
use section::Section;
use throttle::throttle_section;
use token::token_section;

pub const DEFAULT_API_VERSIONS: [&str; 5] = ["2021-2", "2022-1", "2024-1", "2024-2", "2025-1"];

pub struct Config {
    /// Exact paths served, `/user/<version>/user/otp`, one per configured API version.
    pub routes: Vec<String>,
    /// `/user/<version>/user/otp/verify`, one per configured API version.
    pub verify_routes: Vec<String>,
    /// Routes that need a valid OTP before they go upstream.
    pub gates: Vec<Arc<Gate>>,
    pub max_body_bytes: usize,
    pub credential_service: CredentialServiceSettings,
    pub token: TokenSettings,
    pub otp: OtpSettings,
    pub single_use: LedgerSettings,
    /// Who decides single use and the guess budget fleet-wide; `None`: this Envoy (shared data).
    pub authority: Option<AuthoritySettings>,
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

impl Config {
    /// Where a request's callout goes: the introspection endpoint's settings when tokens are
    /// introspected, else the credential service's.
    pub fn upstream(&self, upstream: Upstream) -> &UpstreamSettings {
        match (upstream, &self.token.source) {
            (Upstream::Introspection, TokenSource::Introspection(i)) => &i.upstream,
            (Upstream::Authority, _) if self.authority.is_some() => self
                .authority
                .as_ref()
                .map_or(&self.credential_service.upstream, |a| &a.upstream),
            _ => &self.credential_service.upstream,
        }
    }

    /// How many verified tokens each VM remembers, and for how long at most; `None`: no cache
    /// (in `jwt_authn` mode Envoy verifies, so there is nothing to remember).
    pub fn claims_cache_size(&self) -> Option<(usize, Duration)> {
        let (entries, seconds) = match &self.token.source {
            TokenSource::Jwt => (self.token.cache_entries, self.token.cache_seconds),
            TokenSource::Introspection(i) => (i.cache_entries, i.cache_seconds),
            TokenSource::JwtAuthn { .. } => (0, 0),
        };
        (entries > 0 && seconds > 0).then(|| (entries, Duration::from_secs(seconds)))
    }
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
            self.credential_service.upstream.cluster,
            self.credential_service.upstream.authority,
            self.credential_service.upstream.path,
            self.credential_service.upstream.timeout.as_millis(),
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
    let otp = otp_section(otp, &credential_service, env, &mut problems);
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
            otp: otp.otp,
            single_use: otp.ledger,
            authority: otp.authority,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otp::HmacAlgorithm;
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
        assert_eq!(c.credential_service.upstream.path, "/v1/credentials/verify");
        assert_eq!(
            c.credential_service.upstream.timeout,
            Duration::from_millis(2000)
        );
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
    fn the_authority_defaults_to_the_credential_service() {
        let with = |otp: Value| merged(&config_json(), &json!({ "otp": otp }));
        let c = testkit::config_from(&with(json!({"decided_by": "authority"}))).unwrap();
        let a = c.authority.as_ref().unwrap();
        assert_eq!(a.upstream.cluster, c.credential_service.upstream.cluster);
        assert_eq!(
            a.upstream.authority,
            c.credential_service.upstream.authority
        );
        assert_eq!(a.upstream.timeout, c.credential_service.upstream.timeout);
        assert_eq!(a.upstream.path, "/v1/otp");
        assert_eq!(
            a.auth_header
                .as_ref()
                .map(|(n, v)| (n.as_str(), v.expose_str())),
            c.credential_service
                .auth_header
                .as_ref()
                .map(|(n, v)| (n.as_str(), v.expose_str()))
        );
        let c = testkit::config_from(&with(json!({"decided_by": "authority",
            "authority": {"cluster": "otp_authority", "path": "/otp", "timeout_ms": 300}})))
        .unwrap();
        let a = c.authority.as_ref().unwrap();
        assert_eq!(
            (a.upstream.cluster.as_str(), a.upstream.path.as_str()),
            ("otp_authority", "/otp")
        );
        assert!(
            testkit::config().authority.is_none(),
            "envoy decides by default"
        );
        let message = problems_of(with(
            json!({"decided_by": "nobody", "authority": {"path": "x"}}),
        ));
        assert!(
            message.contains("otp.decided_by: must be \"envoy\" or \"authority\""),
            "{message}"
        );
        let message = problems_of(with(json!({"authority": {}})));
        assert!(
            message.contains("otp.authority: only used with \"decided_by\": \"authority\""),
            "{message}"
        );
        let message = problems_of(with(
            json!({"decided_by": "authority", "authority": {"path": "otp", "port": 1}}),
        ));
        assert!(
            message.contains("otp.authority.path: must start with /"),
            "{message}"
        );
        assert!(
            message.contains("otp.authority.port: unknown field"),
            "{message}"
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
