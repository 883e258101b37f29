//! OAuth 2.0 token introspection (RFC 7662) for the demo: `POST /v1/introspect`.
//!
//! The caller (otp-filter, as a confidential client) authenticates with HTTP Basic and sends
//! `token=<jwt>` form-encoded. The service decides `active` itself: the token must be a
//! compact JWS signed RS256 by the one configured key (the dev key by default) and not
//! expired. This is a stand-in for an authorization server, good for demos and tests only:
//! it knows no revocation, and trusts whatever claims the dev key signed.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::auth::auth_matches;

/// An active answer carries every claim of the token, as Keycloak's does (RFC 7662 §2.2 allows
/// any), so that claim rules such as a linked identity hold in introspection mode as in the
/// others. These come first, in this order; the rest follow by name.
const FIRST_CLAIMS: [&str; 7] = ["sub", "scope", "exp", "iat", "iss", "aud", "client_id"];

/// The introspection endpoint's configuration: who may call it and which key signs tokens.
pub struct Introspector {
    client_id: String,
    /// Never empty: an empty secret disables the endpoint instead.
    client_secret: String,
    key: rsa::pkcs1v15::VerifyingKey<Sha256>,
    /// Wait this long before answering, so tests can make the endpoint slow.
    pub delay: Duration,
}

/// The answer to a well-formed, authenticated introspection request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The token's claims but `null` ones (and `active`, which is the answer's own), in the order
    /// of [`FIRST_CLAIMS`] and then by name.
    Active(Vec<(String, Value)>),
    Inactive,
}

impl Decision {
    /// The JSON body: `{"active":true,...claims}` or exactly `{"active":false}` (RFC 7662
    /// §2.2: an inactive answer says nothing more, not even why).
    pub fn to_json(&self) -> String {
        let Decision::Active(claims) = self else {
            return r#"{"active":false}"#.to_owned();
        };
        // Built by hand to keep `active` first and the claims in a stable order.
        let mut out = String::from(r#"{"active":true"#);
        for (name, value) in claims {
            out.push_str(&format!(r#",{}:{value}"#, Value::String(name.clone())));
        }
        out.push('}');
        out
    }

    pub fn sub(&self) -> Option<&str> {
        match self {
            Decision::Active(claims) => claims
                .iter()
                .find(|(name, _)| *name == "sub")
                .and_then(|(_, v)| v.as_str()),
            Decision::Inactive => None,
        }
    }
}

/// The request body is not a usable introspection request (RFC 6749 `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadForm;

impl Introspector {
    /// `client_secret` must not be empty (the caller disables the endpoint instead).
    pub fn new(
        client_id: String,
        client_secret: String,
        key: rsa::RsaPublicKey,
        delay: Duration,
    ) -> Result<Self, String> {
        if client_secret.is_empty() {
            return Err("empty introspection client secret".to_owned());
        }
        Ok(Introspector {
            client_id,
            client_secret,
            key: rsa::pkcs1v15::VerifyingKey::new(key),
            delay,
        })
    }

    /// Whether `authorization` is `Basic base64(ID:SECRET)` for our client. Both halves are
    /// compared in constant time, and both always (`&`, not `&&`), so timing tells nothing.
    /// RFC 6749 §2.3.1 has clients form-encode ID and secret before Basic encoding, and many
    /// skip that: either form is accepted, which only matters for secrets with `%` or `+`.
    pub fn client_ok(&self, authorization: Option<&str>) -> bool {
        let Some((id, secret)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let raw = auth_matches(&self.client_id, Some(&id))
            & auth_matches(&self.client_secret, Some(&secret));
        let decoded_id = form_decode(&id).ok();
        let decoded_secret = form_decode(&secret).ok();
        let decoded = auth_matches(&self.client_id, decoded_id.as_deref())
            & auth_matches(&self.client_secret, decoded_secret.as_deref());
        raw | decoded
    }

    /// Decides whether `token` is active at unix time `now`: a compact JWS whose header
    /// says RS256 (and nothing we would have to understand), signed by our key, with a
    /// numeric `exp` after `now` and any `nbf` not after it. Everything else is inactive.
    pub fn decide(&self, token: &str, now: u64) -> Decision {
        self.verified_claims(token)
            .filter(|claims| is_current(claims, now))
            .map_or(Decision::Inactive, |mut claims| {
                claims.remove("active");
                claims.retain(|_, v| !v.is_null());
                let mut copied: Vec<(String, Value)> = FIRST_CLAIMS
                    .iter()
                    .filter_map(|name| claims.remove(*name).map(|v| (name.to_string(), v)))
                    .collect();
                copied.extend(claims);
                Decision::Active(copied)
            })
    }

    /// The claims of `token` if its signature is ours, else `None`.
    fn verified_claims(&self, token: &str) -> Option<Map<String, Value>> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let header = json_object(header_b64)?;
        // The key is pinned to RS256 (RFC 8725 §3.1); `crit` names extensions we do not
        // implement, so such a token must be rejected (RFC 7515 §4.1.11).
        if header.get("alg").and_then(Value::as_str) != Some("RS256") || header.contains_key("crit")
        {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).ok()?;
        let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice()).ok()?;
        // The signing input is the first two parts as sent, dot included.
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        self.key.verify(signing_input.as_bytes(), &signature).ok()?;
        json_object(payload_b64)
    }
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// `exp` is required and must be in the future; `nbf`, if present, must not be.
/// Non-numeric values make the token inactive rather than being ignored.
fn is_current(claims: &Map<String, Value>, now: u64) -> bool {
    let now = now as f64;
    let exp_ok = claims
        .get("exp")
        .and_then(Value::as_f64)
        .is_some_and(|exp| exp > now);
    let nbf_ok = match claims.get("nbf") {
        None => true,
        Some(nbf) => nbf.as_f64().is_some_and(|nbf| nbf <= now),
    };
    exp_ok && nbf_ok
}

/// Splits `Basic <base64(user:pass)>` (scheme case-insensitive, RFC 7617) into user and
/// password, split at the first colon. `None` for anything else.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, credentials) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials.trim_start()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// Decodes one `application/x-www-form-urlencoded` name or value: `+` is a space, `%XX` a
/// byte; the result must be UTF-8. A stray `%` is an error, not a literal.
pub fn form_decode(s: &str) -> Result<String, BadForm> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(hex_value).ok_or(BadForm)?;
                let lo = bytes.next().and_then(hex_value).ok_or(BadForm)?;
                out.push(hi << 4 | lo);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| BadForm)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The `token` parameter of an introspection request body. Other parameters
/// (`token_type_hint`, ...) are ignored; a missing, empty or repeated `token` is a bad
/// request (RFC 6749 §3.1: parameters must not repeat).
pub fn token_param(body: &[u8]) -> Result<String, BadForm> {
    let body = std::str::from_utf8(body).map_err(|_| BadForm)?;
    let mut token = None;
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name)? != "token" {
            continue;
        }
        if token.is_some() {
            return Err(BadForm);
        }
        token = Some(form_decode(value)?);
    }
    token.filter(|t| !t.is_empty()).ok_or(BadForm)
}

/// Loads the RSA public key that signs introspectable tokens: from a private key (PKCS#8
/// or PKCS#1 PEM, as the dev keys are) or a public one (SPKI or PKCS#1 PEM).
pub fn load_public_key(path: &Path) -> Result<rsa::RsaPublicKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("reading introspection key {}: {e}", path.display()))?;
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
        .map(|k| k.to_public_key())
        .or_else(|_| rsa::RsaPublicKey::from_public_key_pem(&pem))
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(&pem))
        .map_err(|_| format!("{}: not an RSA key in PEM form", path.display()))?;
    // RFC 7518 §3.3: RS256 keys are 2048 bits at least.
    if key.size() < 256 {
        return Err(format!(
            "{}: RSA key has {} bits, at least 2048 needed",
            path.display(),
            key.size() * 8
        ));
    }
    Ok(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::signature::{SignatureEncoding, Signer};
    use serde_json::json;

    pub(crate) fn dev_key_path(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../envoy/dev-keys")
            .join(name)
    }

    /// A compact JWS over `header` and `claims`, RS256-signed with the private key `key`.
    pub(crate) fn sign(key: &str, header: &Value, claims: &Value) -> String {
        let pem = std::fs::read_to_string(dev_key_path(key)).unwrap();
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = rsa::pkcs1v15::SigningKey::<Sha256>::new(key).sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    pub(crate) fn introspector(secret: &str) -> Introspector {
        let key = load_public_key(&dev_key_path("rs256-DEV-ONLY.pem")).unwrap();
        Introspector::new("otp-filter".into(), secret.into(), key, Duration::ZERO).unwrap()
    }

    pub(crate) fn rs256_header() -> Value {
        json!({"alg":"RS256","typ":"JWT","kid":"dev-rs256"})
    }

    const NOW: u64 = 1_700_000_000;

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%20c%2Fd%2e").unwrap(), "a b c/d.");
        assert_eq!(form_decode("%C3%A9").unwrap(), "\u{e9}");
        assert_eq!(form_decode("").unwrap(), "");
        for bad in ["%", "%4", "%zz", "%4g", "%ff"] {
            assert_eq!(form_decode(bad), Err(BadForm), "{bad}");
        }
        assert_eq!(token_param(b"token=abc.def.ghi").unwrap(), "abc.def.ghi");
        assert_eq!(
            token_param(b"token_type_hint=access_token&token=a%2Eb%2Ec&x").unwrap(),
            "a.b.c"
        );
        assert_eq!(token_param(b"&to%6Ben=a+b&").unwrap(), "a b");
        for bad in [
            &b""[..],
            b"token=",
            b"token",
            b"tokens=x",
            b"token_type_hint=access_token",
            b"token=a&token=b",
            b"token=a%",
            b"token=\xff",
        ] {
            assert_eq!(
                token_param(bad),
                Err(BadForm),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn basic_auth_parsing_and_compare() {
        assert_eq!(
            parse_basic(&basic("otp-filter:s3:cr et")),
            Some(("otp-filter".into(), "s3:cr et".into()))
        );
        assert_eq!(
            parse_basic(&format!("bAsIc  {}", STANDARD.encode("a:b"))),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(
            parse_basic(&format!("Basic {}", STANDARD.encode("nocolon"))),
            None
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic"), None);
        assert_eq!(parse_basic("Basic !!!"), None);

        let i = introspector("s3cret+%");
        assert!(i.client_ok(Some(&basic("otp-filter:s3cret+%"))));
        // RFC 6749 §2.3.1 form-encoding of the secret is accepted too.
        assert!(i.client_ok(Some(&basic("otp-filter:s3cret%2B%25"))));
        for wrong in [
            "otp-filter:s3cret",
            "otp-filter:s3cret+%x",
            "otp-filterx:s3cret+%",
            "other:s3cret+%",
            ":s3cret+%",
            "otp-filter:",
        ] {
            assert!(!i.client_ok(Some(&basic(wrong))), "{wrong}");
        }
        assert!(!i.client_ok(Some("Bearer s3cret+%")));
        assert!(!i.client_ok(None));
        assert!(Introspector::new(
            "c".into(),
            String::new(),
            load_public_key(&dev_key_path("rs256-DEV-ONLY.pem")).unwrap(),
            Duration::ZERO
        )
        .is_err());
    }

    #[test]
    fn valid_token_is_active_with_its_claims() {
        let i = introspector("s");
        let claims = json!({"iss":"https://id.demo.invalid/realms/pace","aud":["a","b"],
            "sub":"demo-user","scope":"openid user:otp:create","iat":NOW - 10,"exp":NOW + 60,
            "client_id":"web","email":"copied@example.invalid","active":false,"linked":false});
        let d = i.decide(&sign("rs256-DEV-ONLY.pem", &rs256_header(), &claims), NOW);
        assert_eq!(d.sub(), Some("demo-user"));
        let body: Value = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(
            body,
            json!({"active":true,"sub":"demo-user","scope":"openid user:otp:create",
                   "exp":NOW + 60,"iat":NOW - 10,"iss":"https://id.demo.invalid/realms/pace",
                   "aud":["a","b"],"client_id":"web","email":"copied@example.invalid",
                   "linked":false})
        );
        assert!(d
            .to_json()
            .starts_with(r#"{"active":true,"sub":"demo-user","scope""#));
        // Only the claims present are copied.
        let d = i.decide(
            &sign(
                "rs256-DEV-ONLY.pem",
                &rs256_header(),
                &json!({"exp": NOW + 1, "sub": null}),
            ),
            NOW,
        );
        assert_eq!(
            d.to_json(),
            format!(r#"{{"active":true,"exp":{}}}"#, NOW + 1)
        );
        // nbf in the past is fine.
        let d = i.decide(
            &sign(
                "rs256-DEV-ONLY.pem",
                &json!({"alg":"RS256"}),
                &json!({"exp": NOW + 1, "nbf": NOW}),
            ),
            NOW,
        );
        assert!(matches!(d, Decision::Active(_)));
    }

    #[test]
    fn inactive_tokens() {
        let i = introspector("s");
        let good = |claims: Value| sign("rs256-DEV-ONLY.pem", &rs256_header(), &claims);
        let valid = good(json!({"sub":"u","exp":NOW + 60}));
        assert!(matches!(i.decide(&valid, NOW), Decision::Active(_)));

        let (h, rest) = valid.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let other_payload =
            URL_SAFE_NO_PAD.encode(json!({"sub":"admin","exp":NOW + 60}).to_string());
        let mut flipped = URL_SAFE_NO_PAD.decode(s).unwrap();
        flipped[10] ^= 1;
        let inactive = [
            // expired, exactly at exp, no exp, exp not a number, not yet valid
            good(json!({"sub":"u","exp":NOW - 1})),
            good(json!({"sub":"u","exp":NOW})),
            good(json!({"sub":"u"})),
            good(json!({"sub":"u","exp":"9999999999"})),
            good(json!({"sub":"u","exp":NOW + 60,"nbf":NOW + 5})),
            good(json!({"sub":"u","exp":NOW + 60,"nbf":"0"})),
            // bad signatures
            format!("{h}.{other_payload}.{s}"),
            format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(flipped)),
            format!("{h}.{p}."),
            format!("{h}.{p}.{s}="),
            sign(
                "rs256-next-DEV-ONLY.pem",
                &rs256_header(),
                &json!({"exp":NOW + 60}),
            ),
            sign(
                "ps256-DEV-ONLY.pem",
                &rs256_header(),
                &json!({"exp":NOW + 60}),
            ),
            // right key, but the header does not say RS256 or asks for extensions
            sign(
                "rs256-DEV-ONLY.pem",
                &json!({"alg":"RS384"}),
                &json!({"exp":NOW + 60}),
            ),
            sign(
                "rs256-DEV-ONLY.pem",
                &json!({"alg":"none"}),
                &json!({"exp":NOW + 60}),
            ),
            sign(
                "rs256-DEV-ONLY.pem",
                &json!({"typ":"JWT"}),
                &json!({"exp":NOW + 60}),
            ),
            sign(
                "rs256-DEV-ONLY.pem",
                &json!({"alg":"RS256","crit":["x"],"x":1}),
                &json!({"exp":NOW + 60}),
            ),
            // signed, but the payload is not a JSON object
            sign("rs256-DEV-ONLY.pem", &rs256_header(), &json!([NOW + 60])),
            // not JWTs at all
            String::new(),
            "not-a-jwt".into(),
            "a.b".into(),
            "a.b.c".into(),
            format!("{valid}.extra"),
            format!("{h}.{p}"),
            format!(" {valid}"),
            valid.replace('.', ".."),
        ];
        for (n, token) in inactive.iter().enumerate() {
            let d = i.decide(token, NOW);
            assert_eq!(d, Decision::Inactive, "case {n}");
            assert_eq!(d.to_json(), r#"{"active":false}"#);
            assert_eq!(d.sub(), None);
        }
    }

    #[test]
    fn key_loading() {
        let private = load_public_key(&dev_key_path("rs256-DEV-ONLY.pem")).unwrap();
        assert_eq!(private.size(), 256);
        assert!(load_public_key(&dev_key_path("es256-DEV-ONLY.pem")).is_err());
        assert!(load_public_key(&dev_key_path("ed25519-DEV-ONLY.pem")).is_err());
        // A public key in SPKI PEM works as well as the private key it comes from.
        use rsa::pkcs8::EncodePublicKey;
        let pem = private
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let path = std::env::temp_dir().join(format!(
            "credential-service-test-{}-spki.pem",
            std::process::id()
        ));
        std::fs::write(&path, pem).unwrap();
        let public = load_public_key(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(public.unwrap(), private);
        assert!(load_public_key(&dev_key_path("no-such-key.pem")).is_err());
    }
}
