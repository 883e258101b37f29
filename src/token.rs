//! Bearer token checks: extraction (RFC 6750), JWS signature (RS256, ES256, HS256) and claims.
//! Everything a token can get wrong is a 401 with its own code; a missing scope is a 403.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Mac, SimpleHmac};
use rsa::signature::Verifier;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::failure::Failure;
use crate::jwk::{Algorithm, KeyMaterial, KeySet};

/// Tokens above this size are refused before any decoding (Keycloak tokens are 1–3 KiB).
pub const MAX_TOKEN_BYTES: usize = 8192;

pub struct TokenSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub required_scope: String,
    pub leeway_seconds: u64,
    pub user_id_claim: String,
    pub keys: KeySet,
}

/// What the rest of the flow needs from a verified token.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub user_id: String,
}

/// RFC 6750 §2.1: `Bearer` (scheme case-insensitive, RFC 9110 §11.1) then one or more spaces then a
/// b64token. Anything else, including a second `Bearer`, is malformed.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, Failure> {
    let value = authorization.ok_or(Failure::TokenMissing)?.trim();
    if value.is_empty() {
        return Err(Failure::TokenMissing);
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Failure::TokenMissing);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(Failure::TokenMalformed(
            "The Authorization header holds no token.",
        ));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Failure::TokenMalformed("The token is too large."));
    }
    let body = token.trim_end_matches('=');
    if !body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err(Failure::TokenMalformed(
            "The token has characters a bearer token cannot have.",
        ));
    }
    Ok(token)
}

fn decode_json_object(part: &str, what: &'static str) -> Result<Map<String, Value>, Failure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Failure::TokenMalformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Failure::TokenMalformed(what)),
    }
}

/// Checks signature, time, issuer, audience, user id and scope, in that order.
pub fn verify(settings: &TokenSettings, token: &str, now_secs: u64) -> Result<Verified, Failure> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::TokenMalformed(
            "The token is not a signed JWT (three parts).",
        ));
    };

    let header = decode_json_object(header_b64, "The token header is not base64url JSON.")?;
    if header.contains_key("crit") {
        return Err(Failure::TokenMalformed(
            "The token uses critical header extensions.",
        ));
    }
    let algorithm = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Algorithm::Rs256,
        Some("ES256") => Algorithm::Es256,
        Some("HS256") => Algorithm::Hs256,
        _ => {
            return Err(Failure::TokenSignatureInvalid(
                "The token's algorithm is not accepted.",
            ))
        }
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(Failure::TokenMalformed("The token's kid is not a string.")),
    };
    let key = settings
        .keys
        .find(kid, algorithm)
        .ok_or(Failure::TokenKeyUnknown)?;
    if key.algorithm != algorithm {
        return Err(Failure::TokenSignatureInvalid(
            "The token's algorithm does not match its key.",
        ));
    }

    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| Failure::TokenMalformed("The token signature is not base64url."))?;
    let signed = token
        .get(..header_b64.len() + 1 + claims_b64.len())
        .ok_or(Failure::TokenMalformed(
            "The token is not a signed JWT (three parts).",
        ))?
        .as_bytes();
    let bad_signature = Failure::TokenSignatureInvalid("The token signature does not verify.");
    let valid = match &key.material {
        KeyMaterial::Rsa(public) => rsa::pkcs1v15::Signature::try_from(signature.as_slice())
            .is_ok_and(|sig| public.verify(signed, &sig).is_ok()),
        KeyMaterial::Ec(public) => p256::ecdsa::Signature::from_slice(&signature)
            .is_ok_and(|sig| public.verify(signed, &sig).is_ok()),
        KeyMaterial::Hmac(secret) => <SimpleHmac<Sha256> as Mac>::new_from_slice(secret.expose())
            .is_ok_and(|mut mac| {
                mac.update(signed);
                mac.verify_slice(&signature).is_ok()
            }),
    };
    if !valid {
        return Err(bad_signature);
    }

    // Only now is the payload trusted enough to read.
    let claims = decode_json_object(claims_b64, "The token payload is not base64url JSON.")?;
    check_claims(settings, &claims, now_secs)
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

fn check_claims(
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
    };
    if !audience_ok {
        return Err(Failure::TokenClaimsInvalid(
            "The token is meant for another audience.",
        ));
    }
    let user_id = claims
        .get(&settings.user_id_claim)
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control))
        .ok_or(Failure::TokenClaimsInvalid(
            "The token does not name a user.",
        ))?;
    if !has_scope(claims, &settings.required_scope) {
        return Err(Failure::InsufficientScope);
    }
    Ok(Verified {
        user_id: user_id.to_string(),
    })
}

/// OAuth `scope` is a space-separated string (RFC 8693 §4.2); some issuers send `scp` as an array.
fn has_scope(claims: &Map<String, Value>, required: &str) -> bool {
    let in_string = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.split(' ').any(|x| x == required))
    };
    let in_array = |v: &Value| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(required)))
    };
    claims
        .get("scope")
        .is_some_and(|v| in_string(v) || in_array(v))
        || claims
            .get("scp")
            .is_some_and(|v| in_string(v) || in_array(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, claims, merged, NOW};
    use serde_json::json;

    fn check(token: &str) -> Result<Verified, Failure> {
        verify(&testkit::config().token, token, NOW)
    }

    fn with(changes: Value) -> Value {
        merged(&claims(), &changes)
    }

    #[test]
    fn extracts_bearer_tokens() {
        assert_eq!(bearer_token(Some("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("BEARER  abc")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(Failure::TokenMissing));
        assert_eq!(bearer_token(Some("")), Err(Failure::TokenMissing));
        assert_eq!(
            bearer_token(Some("Basic dXNlcjpwYXNz")),
            Err(Failure::TokenMissing)
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer Bearer abc",
            "Bearer a,b",
            "Bearer a\u{fffd}b",
        ] {
            assert!(
                matches!(bearer_token(Some(bad)), Err(Failure::TokenMalformed(_))),
                "{bad:?}"
            );
        }
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(
            bearer_token(Some(&huge)),
            Err(Failure::TokenMalformed(_))
        ));
    }

    #[test]
    fn accepts_each_configured_algorithm() {
        let ok = Ok(Verified {
            user_id: "demo-user".into(),
        });
        assert_eq!(check(&testkit::rs256(&claims())), ok);
        assert_eq!(check(&testkit::es256(&claims())), ok);
        assert_eq!(check(&testkit::hs256(&claims())), ok);
        // Without a kid, the only key of the token's algorithm is used.
        let no_kid = testkit::sign(&json!({"alg": "ES256"}), &claims());
        assert_eq!(check(&no_kid), ok);
    }

    #[test]
    fn refuses_forged_and_confused_tokens() {
        let good = testkit::rs256(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());

        // alg none, with and without a signature.
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "dev-rs256"})),
            parts[1]
        );
        assert!(matches!(
            check(&none),
            Err(Failure::TokenSignatureInvalid(_))
        ));
        // HS256 "signed" with the RSA key's id: the key is pinned to RS256.
        let confused = testkit::sign(&json!({"alg": "HS256", "kid": "dev-rs256"}), &claims());
        assert!(matches!(
            check(&confused),
            Err(Failure::TokenSignatureInvalid(_))
        ));
        // Payload swapped after signing.
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(&with(json!({"sub": "admin"}))),
            parts[2]
        );
        assert!(matches!(
            check(&tampered),
            Err(Failure::TokenSignatureInvalid(_))
        ));
        // Header swapped after signing (different kid typ field).
        let header = b64(&json!({"alg": "RS256", "kid": "dev-rs256", "typ": "at+jwt"}));
        let tampered = format!("{header}.{}.{}", parts[1], parts[2]);
        assert!(matches!(
            check(&tampered),
            Err(Failure::TokenSignatureInvalid(_))
        ));
        // Signed by the EC key but claiming the RSA key's id.
        let other = testkit::sign(&json!({"alg": "ES256", "kid": "dev-rs256"}), &claims());
        assert!(matches!(
            check(&other),
            Err(Failure::TokenSignatureInvalid(_))
        ));
        // Unknown kid.
        let unknown = testkit::sign(
            &json!({"alg": "RS256", "kid": "../../etc/passwd"}),
            &claims(),
        );
        assert_eq!(check(&unknown), Err(Failure::TokenKeyUnknown));
        // Critical extensions.
        let crit = testkit::sign(
            &json!({"alg": "RS256", "kid": "dev-rs256", "crit": ["b64"]}),
            &claims(),
        );
        assert!(matches!(check(&crit), Err(Failure::TokenMalformed(_))));
    }

    #[test]
    fn refuses_malformed_tokens() {
        let good = testkit::rs256(&claims());
        for bad in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            &format!("{good}x"),
            &format!("{good}="),
            &format!("W10.{}", &good[good.find('.').unwrap() + 1..]),
        ] {
            let result = check(bad);
            assert!(
                matches!(
                    result,
                    Err(Failure::TokenMalformed(_)) | Err(Failure::TokenSignatureInvalid(_))
                ),
                "{bad}: {result:?}"
            );
        }
        // A correctly signed payload that is not an object.
        let array = testkit::rs256(&json!([1, 2]));
        assert!(matches!(check(&array), Err(Failure::TokenMalformed(_))));
    }

    #[test]
    fn checks_time_claims_with_leeway() {
        assert_eq!(
            check(&testkit::rs256(&with(json!({"exp": NOW - 31})))),
            Err(Failure::TokenExpired)
        );
        assert!(check(&testkit::rs256(&with(json!({"exp": NOW - 29})))).is_ok());
        assert_eq!(
            check(&testkit::rs256(&with(json!({"exp": 1})))),
            Err(Failure::TokenExpired)
        );
        assert!(matches!(
            check(&testkit::rs256(&with(json!({"exp": null})))),
            Err(Failure::TokenClaimsInvalid(_))
        ));
        assert!(matches!(
            check(&testkit::rs256(&with(json!({"exp": "soon"})))),
            Err(Failure::TokenClaimsInvalid(_))
        ));
        assert_eq!(
            check(&testkit::rs256(&with(json!({"nbf": NOW + 31})))),
            Err(Failure::TokenNotYetValid)
        );
        assert!(check(&testkit::rs256(&with(json!({"nbf": NOW + 29})))).is_ok());
        assert_eq!(
            check(&testkit::rs256(&with(json!({"iat": NOW + 600})))),
            Err(Failure::TokenNotYetValid)
        );
    }

    #[test]
    fn checks_issuer_audience_subject_and_scope() {
        let claims_err = |c: Value| {
            matches!(
                check(&testkit::rs256(&c)),
                Err(Failure::TokenClaimsInvalid(_))
            )
        };
        assert!(claims_err(with(json!({"iss": "https://evil.invalid"}))));
        assert!(claims_err(with(json!({"iss": null}))));
        assert!(claims_err(with(json!({"aud": "someone-else"}))));
        assert!(claims_err(with(json!({"aud": null}))));
        assert!(check(&testkit::rs256(&with(json!({"aud": ["x", "other"]})))).is_ok());
        assert!(claims_err(with(json!({"sub": null}))));
        assert!(claims_err(with(json!({"sub": ""}))));
        assert!(claims_err(with(json!({"sub": 42}))));
        assert_eq!(
            check(&testkit::rs256(&with(json!({"scope": "openid user:otp"})))),
            Err(Failure::InsufficientScope)
        );
        assert_eq!(
            check(&testkit::rs256(&with(json!({"scope": null})))),
            Err(Failure::InsufficientScope)
        );
        assert!(check(&testkit::rs256(&with(
            json!({"scope": null, "scp": ["user:otp:create"]})
        )))
        .is_ok());
    }
}
