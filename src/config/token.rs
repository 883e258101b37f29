//! `token`: the token mode and its settings (issuer, audiences, scope, claims, keys, the remote
//! JWKS, introspection, the caches).

use serde_json::Value;
use std::time::Duration;

use super::section::{env_secret, Section};
use crate::secret::Secret;
use crate::token::introspection::IntrospectionSettings;
use crate::token::jwk::{Algorithm, Key, KeySet};
use crate::token::jwks::RemoteJwksSettings;
use crate::token::{LinkedIdentityRule, TokenSettings, TokenSource};

pub(super) fn token_section(
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

pub(super) fn introspection_section(
    value: Value,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> IntrospectionSettings {
    let mut i = Section::new("token.introspection", Some(value), problems);
    let upstream = i.upstream(None);
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
        upstream,
        client_id,
        client_secret: Secret::new(client_secret.unwrap_or_default()),
        cache_seconds,
        cache_entries,
    }
}

pub(super) fn hmac_key(
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

pub(super) fn remote_jwks_section(value: Value, problems: &mut Vec<String>) -> RemoteJwksSettings {
    let mut r = Section::new("token.remote_jwks", Some(value), problems);
    let upstream = r.upstream(None);
    let refresh = Duration::from_secs(r.integer("refresh_seconds", 300, 10, 86_400));
    let min_refetch = Duration::from_secs(r.integer("min_refetch_seconds", 30, 1, 3600));
    r.finish();
    RemoteJwksSettings {
        upstream,
        refresh,
        min_refetch,
    }
}
