//! Bearer token checks: extraction (RFC 6750), JWS signature (RS256, ES256, HS256) and claims.
//! Everything a token can get wrong is a 401 with its own code; a missing scope is a 403.

mod bearer;
pub mod cache;
mod claims;
pub mod introspection;
pub mod jwk;
pub mod jwks;
mod jws;
pub mod jwt_authn;
pub mod rsa2048;

pub use bearer::bearer_token;
pub use claims::{check_claims, check_verified_claims, LinkedIdentityRule};
pub use jws::{verify, verify_signature};

use crate::reply::failure::Failure;
use crate::token::introspection::IntrospectionSettings;
use crate::token::jwk::KeySet;
use crate::token::jwks::RemoteJwksSettings;

/// Tokens above this size are refused before any decoding (Keycloak tokens are 1–3 KiB).
pub const MAX_TOKEN_BYTES: usize = 8192;

pub struct TokenSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// When non-empty, an `azp` in this list is accepted in place of a matching `aud`.
    pub authorized_parties: Vec<String>,
    pub required_scope: String,
    pub leeway_seconds: u64,
    pub user_id_claim: String,
    pub linked_identity: Option<LinkedIdentityRule>,
    /// Keys from the config: the inline JWKS and HMAC secrets.
    pub keys: KeySet,
    pub remote_jwks: Option<RemoteJwksSettings>,
    /// JWT mode: how many verified tokens each VM remembers, and for how long at most.
    pub cache_entries: usize,
    pub cache_seconds: u64,
    pub source: TokenSource,
}

/// Who verifies the bearer token.
pub enum TokenSource {
    /// The filter verifies the JWS itself, with `keys` and `remote_jwks`.
    Jwt,
    /// Envoy's `jwt_authn` filter verified it (signature, `exp`, `iss`, `aud` per its provider) and
    /// left the payload in dynamic metadata under this key (`payload_in_metadata`).
    JwtAuthn { payload_key: String },
    /// An RFC 7662 introspection endpoint decides.
    Introspection(IntrospectionSettings),
}

/// What the rest of the flow needs from a verified token.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub user_id: String,
    pub scopes: Vec<String>,
}

impl Verified {
    /// 403 unless the token grants `scope` (the route decides which; gates need none).
    pub fn require_scope(self, scope: Option<&str>) -> Result<Self, Failure> {
        match scope {
            Some(required) if !self.scopes.iter().any(|s| s == required) => {
                Err(Failure::InsufficientScope)
            }
            _ => Ok(self),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, claims, merged, NOW};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::{json, Value};

    fn check(token: &str) -> Result<Verified, Failure> {
        verify(&testkit::config().token, None, None, token, NOW * 1000)
            .and_then(|v| v.require_scope(Some("user:otp:create")))
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
        let user = |t: &str| check(t).map(|v| v.user_id);
        let ok = Ok("demo-user".to_string());
        assert_eq!(user(&testkit::rs256(&claims())), ok);
        assert_eq!(user(&testkit::es256(&claims())), ok);
        assert_eq!(user(&testkit::hs256(&claims())), ok);
        // Without a kid, the only key of the token's algorithm is used.
        let no_kid = testkit::sign(&json!({"alg": "ES256"}), &claims());
        assert_eq!(user(&no_kid), ok);
    }

    #[test]
    fn every_algorithm_verifies_with_its_own_key_only() {
        for (alg, _, kid) in testkit::ALGORITHMS {
            let token = testkit::sign(&json!({"alg": alg, "kid": kid}), &claims());
            assert_eq!(
                check(&token).map(|v| v.user_id),
                Ok("demo-user".into()),
                "{alg}"
            );
            // One bit of the signature flipped.
            let (signed, sig) = token.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            sig[5] ^= 0x01;
            let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig));
            assert!(
                matches!(check(&forged), Err(Failure::TokenSignatureInvalid(_))),
                "{alg}"
            );
            if alg.starts_with("RS") {
                // Signed by another RSA key under this key's id.
                let other =
                    testkit::sign_with(&json!({"alg": alg, "kid": kid}), &claims(), "rs256-next");
                assert!(
                    matches!(check(&other), Err(Failure::TokenSignatureInvalid(_))),
                    "{alg}"
                );
            }
            // Pinned: the key refuses any other algorithm, even one of its family.
            let swapped = if alg == "RS256" { "RS512" } else { "RS256" };
            let confused = testkit::sign(&json!({"alg": swapped, "kid": kid}), &claims());
            assert!(
                matches!(check(&confused), Err(Failure::TokenSignatureInvalid(_))),
                "{alg} as {swapped}"
            );
        }
    }

    #[test]
    fn remote_keys_are_used_and_unknown_kids_ask_for_a_refetch() {
        use crate::token::jwks::{RemoteJwks, RemoteJwksSettings};
        use std::time::Duration;
        let mut settings = testkit::config();
        settings.token.keys = KeySet::default();
        let mut remote = RemoteJwks::new(RemoteJwksSettings {
            upstream: crate::callout::UpstreamSettings {
                cluster: "c".into(),
                authority: "a".into(),
                path: "/jwks".into(),
                timeout: Duration::from_secs(1),
            },
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(30),
        });
        let token = testkit::rs256(&claims());
        let result = verify(&settings.token, Some(&mut remote), None, &token, NOW * 1000);
        assert_eq!(
            result,
            Err(Failure::JwksUnavailable),
            "fail closed before the first load"
        );
        remote.due(0);
        remote
            .on_answer(Some(200), testkit::jwks().to_string().as_bytes(), 0)
            .unwrap();
        assert!(verify(&settings.token, Some(&mut remote), None, &token, NOW * 1000).is_ok());
        let unknown = testkit::sign(&json!({"alg": "RS256", "kid": "new-key"}), &claims());
        assert_eq!(
            verify(
                &settings.token,
                Some(&mut remote),
                None,
                &unknown,
                NOW * 1000
            ),
            Err(Failure::TokenKeyUnknown)
        );
        assert!(
            remote.due(30_000).is_some(),
            "the unknown kid asked for an early refetch"
        );
    }

    #[test]
    fn the_cache_skips_only_the_signature() {
        use crate::token::cache::ClaimsCache;
        use std::time::Duration;
        let mut config = testkit::config();
        let mut cache = ClaimsCache::new(8, Duration::from_secs(300), [7; 16]);
        let token = testkit::rs256(&with(json!({"exp": NOW + 100})));
        let at = |secs: u64| secs * 1000;
        assert!(verify(&config.token, None, Some(&mut cache), &token, at(NOW)).is_ok());
        assert_eq!(cache.len(), 1);
        // Keys gone: the cached token still passes (its signature was checked), a new one does not.
        config.token.keys = KeySet::default();
        assert!(verify(&config.token, None, Some(&mut cache), &token, at(NOW + 1)).is_ok());
        let fresh = testkit::rs256(&with(json!({"exp": NOW + 101})));
        assert_eq!(
            verify(&config.token, None, Some(&mut cache), &fresh, at(NOW)),
            Err(Failure::TokenKeyUnknown)
        );
        // Claims are checked on every hit: a linked-identity rule, and expiry (leeway 30 s; the
        // entry itself ends at exp).
        config.token.linked_identity = Some(LinkedIdentityRule {
            claim: "linked".into(),
            equals: None,
        });
        assert_eq!(
            verify(&config.token, None, Some(&mut cache), &token, at(NOW + 2)),
            Err(Failure::MissingLinkedIdentity)
        );
        config.token.linked_identity = None;
        assert_eq!(
            verify(&config.token, None, Some(&mut cache), &token, at(NOW + 100)),
            Err(Failure::TokenKeyUnknown),
            "entry expired at exp"
        );
        // The stale entry was dropped; failed tokens are not added.
        assert!(cache.is_empty());
        let expired = testkit::rs256(&with(json!({"exp": 1})));
        let mut config = testkit::config();
        config.token.leeway_seconds = 0;
        assert_eq!(
            verify(&config.token, None, Some(&mut cache), &expired, at(NOW)),
            Err(Failure::TokenExpired)
        );
        assert!(cache.is_empty());
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
    fn authorized_party_and_linked_identity() {
        let mut config = testkit::config();
        let with_azp = testkit::rs256(&with(json!({"aud": "account", "azp": "pace-app"})));
        assert!(matches!(
            verify(&config.token, None, None, &with_azp, NOW * 1000),
            Err(Failure::TokenClaimsInvalid(_))
        ));
        config.token.authorized_parties = vec!["pace-app".into()];
        assert!(verify(&config.token, None, None, &with_azp, NOW * 1000).is_ok());

        config.token.linked_identity = Some(LinkedIdentityRule {
            claim: "linked".into(),
            equals: None,
        });
        let t = |c: Value| {
            verify(
                &config.token,
                None,
                None,
                &testkit::rs256(&with(c)),
                NOW * 1000,
            )
        };
        assert_eq!(t(json!({})), Err(Failure::MissingLinkedIdentity));
        assert_eq!(
            t(json!({"linked": false})),
            Err(Failure::MissingLinkedIdentity)
        );
        assert_eq!(
            t(json!({"linked": ""})),
            Err(Failure::MissingLinkedIdentity)
        );
        assert!(t(json!({"linked": "google"})).is_ok());
        assert!(t(json!({"linked": ["google"]})).is_ok());
        for falsy in [json!(0), json!(0.0), json!(null), json!([]), json!({})] {
            assert_eq!(
                t(json!({ "linked": falsy })),
                Err(Failure::MissingLinkedIdentity),
                "{falsy}"
            );
        }
        for truthy in [
            json!(1),
            json!(-1),
            json!(0.5),
            json!(true),
            json!({"idp": "x"}),
        ] {
            assert!(t(json!({ "linked": truthy })).is_ok(), "{truthy}");
        }
        // `equals` compares numbers by value, at any depth.
        config.token.linked_identity = Some(LinkedIdentityRule {
            claim: "linked".into(),
            equals: Some(json!({"level": 1, "idps": [2]})),
        });
        let t = |c: Value| {
            verify(
                &config.token,
                None,
                None,
                &testkit::rs256(&with(c)),
                NOW * 1000,
            )
        };
        assert!(t(json!({"linked": {"level": 1.0, "idps": [2.0]}})).is_ok());
        assert_eq!(
            t(json!({"linked": {"level": 1, "idps": [2, 3]}})),
            Err(Failure::MissingLinkedIdentity)
        );
        assert_eq!(
            t(json!({"linked": {"level": "1", "idps": [2]}})),
            Err(Failure::MissingLinkedIdentity)
        );
        config.token.linked_identity = Some(LinkedIdentityRule {
            claim: "idp".into(),
            equals: Some(json!("pace")),
        });
        let t = |c: Value| {
            verify(
                &config.token,
                None,
                None,
                &testkit::rs256(&with(c)),
                NOW * 1000,
            )
        };
        assert_eq!(
            t(json!({"idp": "other"})),
            Err(Failure::MissingLinkedIdentity)
        );
        assert!(t(json!({"idp": "pace"})).is_ok());
        // 401 for the identity comes before 403 for the scope.
        assert_eq!(
            t(json!({"idp": "other", "scope": "openid"})),
            Err(Failure::MissingLinkedIdentity)
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
