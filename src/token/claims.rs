//! The claims every mode checks: time (`exp`, `nbf`, `iat` with leeway), issuer, audience or
//! authorized party, the user id, the linked-identity rule and the scopes.

use serde_json::{Map, Value};

use crate::reply::failure::Failure;
use crate::token::{TokenSettings, Verified};

/// A claim that says the user has a linked identity. Without `equals`, the claim must be present
/// and not `null`, `false`, `0`, `""`, `[]` or `{}`. With `equals`, it must equal that JSON value;
/// numbers compare by value (`1` equals `1.0`), since a token verified by Envoy's `jwt_authn`
/// arrives with every number as a double.
pub struct LinkedIdentityRule {
    pub claim: String,
    pub equals: Option<Value>,
}

impl LinkedIdentityRule {
    fn holds(&self, claims: &Map<String, Value>) -> bool {
        match (claims.get(&self.claim), &self.equals) {
            (None, _) => false,
            (Some(value), Some(expected)) => json_equal(value, expected),
            (Some(value), None) => match value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                Value::Bool(true) => true,
            },
        }
    }
}

/// JSON equality with numbers compared by value.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, x)| y.get(k).is_some_and(|y| json_equal(x, y)))
        }
        _ => a == b,
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or(Failure::TokenClaimsInvalid("A time claim is not a number.")),
    }
}

/// Checks verified claims, from whichever source verified them (JWS, jwt_authn, introspection).
pub fn check_claims(
    settings: &TokenSettings,
    claims: &Map<String, Value>,
    now_secs: u64,
) -> Result<Verified, Failure> {
    let now = now_secs as f64;
    let leeway = settings.leeway_seconds as f64;
    let exp = numeric_date(claims, "exp")?.ok_or(Failure::TokenClaimsInvalid(
        "The token has no expiry (exp).",
    ))?;
    if now >= exp + leeway {
        return Err(Failure::TokenExpired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now + leeway < nbf {
            return Err(Failure::TokenNotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if now + leeway < iat {
            return Err(Failure::TokenNotYetValid);
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(settings.issuer.as_str()) {
        return Err(Failure::TokenClaimsInvalid(
            "The token was issued by another issuer.",
        ));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => settings.audiences.iter().any(|a| a == aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| settings.audiences.iter().any(|a| a == aud)),
        _ => false,
    } || claims
        .get("azp")
        .and_then(Value::as_str)
        .is_some_and(|azp| settings.authorized_parties.iter().any(|p| p == azp));
    if !audience_ok {
        return Err(Failure::TokenClaimsInvalid(
            "The token is meant for another audience.",
        ));
    }
    check_verified_claims(settings, claims)
}

/// Claims already verified by Envoy's `jwt_authn` (signature, time, issuer, audience): only what the
/// filter adds is checked here — user and linked identity. The scope depends on the route and is
/// checked by the caller (`Verified::require_scope`), after every 401 check.
pub fn check_verified_claims(
    settings: &TokenSettings,
    claims: &Map<String, Value>,
) -> Result<Verified, Failure> {
    let user_id = user_id(settings, claims)?;
    if let Some(rule) = &settings.linked_identity {
        if !rule.holds(claims) {
            return Err(Failure::MissingLinkedIdentity);
        }
    }
    Ok(Verified {
        user_id,
        scopes: scopes(claims),
    })
}

fn user_id(settings: &TokenSettings, claims: &Map<String, Value>) -> Result<String, Failure> {
    claims
        .get(&settings.user_id_claim)
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control))
        .map(str::to_string)
        .ok_or(Failure::TokenClaimsInvalid(
            "The token does not name a user.",
        ))
}

/// OAuth `scope` is a space-separated string (RFC 8693 §4.2); some issuers send `scp` as an array.
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => {
                out.extend(s.split(' ').filter(|x| !x.is_empty()).map(str::to_string))
            }
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_string))
            }
            _ => {}
        }
    }
    out
}
