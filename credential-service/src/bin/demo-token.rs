//! `demo-token`: DEV-ONLY JWS minter for the otp-filter demo and tests.
//!
//! ```text
//! demo-token [--alg RS256|ES256|HS256] [--key PATH] [--kid KID] [--secret VALUE]
//!            [--claims JSON] [--header JSON]
//! demo-token jwks
//! ```
//!
//! Prints one compact JWS (or one JWKS object) on stdout. The keys under `envoy/dev-keys/`
//! are published test keys: nothing signed with them may ever be trusted outside a demo.
//!
//! `--claims` / `--header` are JSON objects merged (shallowly) over the defaults; a `null`
//! value removes the key. The header's `alg` may be overridden to anything (useful for
//! negative tests); the signature is always made with `--alg`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Map, Value};
use sha2::Sha256;

const USAGE: &str = "usage (DEV-ONLY keys and tokens):
  demo-token [--alg RS256|ES256|HS256] [--key PATH] [--kid KID] [--secret VALUE]
             [--claims JSON] [--header JSON]
      prints a compact JWS; --claims/--header objects merge over the defaults, null removes a key
      defaults: RS256 key envoy/dev-keys/rs256-DEV-ONLY.pem kid dev-rs256,
                ES256 key envoy/dev-keys/es256-DEV-ONLY.pem kid dev-es256,
                HS256 kid dev-hs256 (needs --secret)
  demo-token jwks
      prints the JWKS of both dev keys";

const RS256_KEY: &str = "envoy/dev-keys/rs256-DEV-ONLY.pem";
const ES256_KEY: &str = "envoy/dev-keys/es256-DEV-ONLY.pem";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
    Hs256,
}

impl Alg {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "RS256" => Ok(Alg::Rs256),
            "ES256" => Ok(Alg::Es256),
            "HS256" => Ok(Alg::Hs256),
            other => Err(format!(
                "unsupported --alg {other:?} (RS256, ES256 or HS256)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::Hs256 => "HS256",
        }
    }

    fn default_kid(self) -> &'static str {
        match self {
            Alg::Rs256 => "dev-rs256",
            Alg::Es256 => "dev-es256",
            Alg::Hs256 => "dev-hs256",
        }
    }
}

#[derive(Debug, Default)]
struct MintArgs {
    alg: Option<String>,
    key: Option<String>,
    kid: Option<String>,
    secret: Option<String>,
    claims: Option<String>,
    header: Option<String>,
}

enum Command {
    Mint(MintArgs),
    Jwks,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("jwks") if args.len() == 1 => return Ok(Command::Jwks),
        Some("jwks") => return Err("`jwks` takes no arguments".to_owned()),
        _ => {}
    }
    let mut out = MintArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        if matches!(flag, "-h" | "--help") {
            return Ok(Command::Help);
        }
        let slot = match flag {
            "--alg" => &mut out.alg,
            "--key" => &mut out.key,
            "--kid" => &mut out.kid,
            "--secret" => &mut out.secret,
            "--claims" => &mut out.claims,
            "--header" => &mut out.header,
            other => return Err(format!("unknown argument {other:?}")),
        };
        if slot.is_some() {
            return Err(format!("{flag} given twice"));
        }
        let value = inline
            .or_else(|| it.next().cloned())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        *slot = Some(value);
    }
    Ok(Command::Mint(out))
}

/// Shallow merge: every key of `overlay` replaces the one in `base`; `null` removes it.
fn merge(base: &mut Map<String, Value>, overlay: Map<String, Value>) {
    for (k, v) in overlay {
        if v.is_null() {
            base.remove(&k);
        } else {
            base.insert(k, v);
        }
    }
}

fn parse_object(what: &str, s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{what}: not a JSON object")),
        Err(e) => Err(format!("{what}: invalid JSON: {e}")),
    }
}

fn now_secs() -> Result<u64, String> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| "system clock is before 1970".to_owned())
}

fn default_claims(now: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("iss".into(), json!("https://id.demo.invalid/realms/pace"));
    m.insert("aud".into(), json!("otp-filter-demo"));
    m.insert("sub".into(), json!("demo-user"));
    m.insert("scope".into(), json!("openid user:otp:create"));
    m.insert("iat".into(), json!(now));
    m.insert("exp".into(), json!(now + 3600));
    m
}

/// A default key path: relative to the current directory (the repo root, normally), else
/// relative to this crate's source tree so `cargo run` works from anywhere in the checkout.
fn default_key_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    if from_source.exists() {
        from_source
    } else {
        here
    }
}

fn read_key(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading key {}: {e}", path.display()))
}

fn load_rsa(path: &Path) -> Result<rsa::RsaPrivateKey, String> {
    let pem = read_key(path)?;
    rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
        .map_err(|e| {
            format!(
                "{}: not an RSA private key (PKCS#8/PKCS#1 PEM): {e}",
                path.display()
            )
        })
}

fn load_p256(path: &Path) -> Result<p256::SecretKey, String> {
    let pem = read_key(path)?;
    p256::SecretKey::from_pkcs8_pem(&pem)
        .or_else(|_| p256::SecretKey::from_sec1_pem(&pem))
        .map_err(|e| {
            format!(
                "{}: not a P-256 private key (PKCS#8/SEC1 PEM): {e}",
                path.display()
            )
        })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key material for one signature.
enum SigningKey {
    Rs256(Box<rsa::RsaPrivateKey>),
    Es256(p256::SecretKey),
    Hs256(Vec<u8>),
}

impl SigningKey {
    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            SigningKey::Rs256(key) => {
                let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new((**key).clone());
                // Blinded private-key operation.
                let sig = signer
                    .try_sign_with_rng(&mut rsa::rand_core::OsRng, signing_input)
                    .map_err(|e| format!("RS256 signing: {e}"))?;
                Ok(sig.to_vec())
            }
            SigningKey::Es256(key) => {
                let signer = p256::ecdsa::SigningKey::from(key);
                let sig: p256::ecdsa::Signature = signer
                    .try_sign(signing_input)
                    .map_err(|e| format!("ES256 signing: {e}"))?;
                // JWS wants the fixed-size r||s form, not DER.
                Ok(sig.to_bytes().to_vec())
            }
            SigningKey::Hs256(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret)
                    .map_err(|e| format!("HS256 key: {e}"))?;
                mac.update(signing_input);
                Ok(mac.finalize().into_bytes().to_vec())
            }
        }
    }
}

/// Builds the compact JWS `b64(header).b64(claims).b64(signature)`.
fn compact_jws(
    key: &SigningKey,
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
) -> Result<String, String> {
    let header = serde_json::to_vec(header).map_err(|e| format!("header: {e}"))?;
    let claims = serde_json::to_vec(claims).map_err(|e| format!("claims: {e}"))?;
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

fn mint(args: MintArgs, now: u64) -> Result<String, String> {
    let alg = Alg::parse(args.alg.as_deref().unwrap_or("RS256"))?;
    let key = match alg {
        Alg::Hs256 => {
            if args.key.is_some() {
                return Err("--key is not used with HS256 (use --secret)".to_owned());
            }
            let secret = args.secret.ok_or("HS256 needs --secret")?;
            if secret.is_empty() {
                return Err("--secret must not be empty".to_owned());
            }
            SigningKey::Hs256(secret.into_bytes())
        }
        Alg::Rs256 | Alg::Es256 => {
            if args.secret.is_some() {
                return Err(format!("--secret is only for HS256, not {}", alg.name()));
            }
            let default = if alg == Alg::Rs256 {
                RS256_KEY
            } else {
                ES256_KEY
            };
            let path = args
                .key
                .map_or_else(|| default_key_path(default), PathBuf::from);
            if alg == Alg::Rs256 {
                SigningKey::Rs256(Box::new(load_rsa(&path)?))
            } else {
                SigningKey::Es256(load_p256(&path)?)
            }
        }
    };

    let mut header = Map::new();
    header.insert("alg".into(), json!(alg.name()));
    header.insert("typ".into(), json!("JWT"));
    header.insert(
        "kid".into(),
        json!(args.kid.as_deref().unwrap_or(alg.default_kid())),
    );
    if let Some(h) = &args.header {
        merge(&mut header, parse_object("--header", h)?);
    }

    let mut claims = default_claims(now);
    if let Some(c) = &args.claims {
        merge(&mut claims, parse_object("--claims", c)?);
    }

    compact_jws(&key, &header, &claims)
}

fn rsa_jwk(key: &rsa::RsaPrivateKey) -> Value {
    json!({
        "kty": "RSA",
        "kid": Alg::Rs256.default_kid(),
        "alg": "RS256",
        "use": "sig",
        "n": b64(&key.n().to_bytes_be()),
        "e": b64(&key.e().to_bytes_be()),
    })
}

fn ec_jwk(key: &p256::SecretKey) -> Result<Value, String> {
    let point = key.public_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err("EC public key has no affine coordinates".to_owned());
    };
    Ok(json!({
        "kty": "EC",
        "kid": Alg::Es256.default_kid(),
        "alg": "ES256",
        "use": "sig",
        "crv": "P-256",
        "x": b64(x),
        "y": b64(y),
    }))
}

fn jwks() -> Result<String, String> {
    let rsa_key = load_rsa(&default_key_path(RS256_KEY))?;
    let ec_key = load_p256(&default_key_path(ES256_KEY))?;
    let set = json!({ "keys": [rsa_jwk(&rsa_key), ec_jwk(&ec_key)?] });
    serde_json::to_string(&set).map_err(|e| format!("jwks: {e}"))
}

fn run(args: &[String]) -> Result<Option<String>, String> {
    let command = parse_args(args).map_err(|e| format!("{e}\n{USAGE}"))?;
    match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(None)
        }
        Command::Jwks => jwks().map(Some),
        Command::Mint(m) => mint(m, now_secs()?).map(Some),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("demo-token: {msg}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::signature::Verifier;

    fn decode_part(part: &str) -> Map<String, Value> {
        let bytes = URL_SAFE_NO_PAD.decode(part).unwrap();
        match serde_json::from_slice(&bytes).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// (header, claims, signing input, signature bytes)
    fn split(token: &str) -> (Map<String, Value>, Map<String, Value>, String, Vec<u8>) {
        assert!(!token.contains('='), "padding in {token}");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        (
            decode_part(parts[0]),
            decode_part(parts[1]),
            format!("{}.{}", parts[0], parts[1]),
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        )
    }

    fn key_path(rel: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel)
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn rs256_token_verifies_with_the_public_key() {
        let token = mint(
            MintArgs {
                key: Some(key_path(RS256_KEY)),
                ..MintArgs::default()
            },
            1_000,
        )
        .unwrap();
        let (header, claims, input, sig) = split(&token);
        assert_eq!(
            Value::Object(header),
            json!({"alg":"RS256","typ":"JWT","kid":"dev-rs256"})
        );
        assert_eq!(
            Value::Object(claims),
            json!({"iss":"https://id.demo.invalid/realms/pace","aud":"otp-filter-demo",
                   "sub":"demo-user","scope":"openid user:otp:create","iat":1000,"exp":4600})
        );
        let public = load_rsa(Path::new(&key_path(RS256_KEY)))
            .unwrap()
            .to_public_key();
        assert_eq!(sig.len(), 256);
        let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public);
        let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap();
        verifier.verify(input.as_bytes(), &sig).unwrap();
        assert!(verifier.verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn es256_token_verifies_with_the_jwks_key() {
        let token = mint(
            MintArgs {
                alg: Some("ES256".into()),
                key: Some(key_path(ES256_KEY)),
                ..MintArgs::default()
            },
            1_000,
        )
        .unwrap();
        let (header, _, input, sig) = split(&token);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "dev-es256");
        assert_eq!(sig.len(), 64, "raw r||s, not DER");

        // Rebuild the public key from the JWK's x and y, as a verifier would.
        let jwk = ec_jwk(&load_p256(Path::new(&key_path(ES256_KEY))).unwrap()).unwrap();
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
        assert_eq!((x.len(), y.len()), (32, 32));
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        let verifier = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        verifier.verify(input.as_bytes(), &sig).unwrap();
        assert!(verifier.verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn hs256_token_verifies_with_the_secret() {
        let token = mint(
            MintArgs {
                alg: Some("HS256".into()),
                secret: Some("shh".into()),
                ..MintArgs::default()
            },
            1_000,
        )
        .unwrap();
        let (header, _, input, sig) = split(&token);
        assert_eq!(header["kid"], "dev-hs256");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"shh").unwrap();
        mac.update(input.as_bytes());
        mac.verify_slice(&sig).unwrap();
    }

    #[test]
    fn merging_null_removes_keys() {
        let mut base = default_claims(10);
        merge(
            &mut base,
            parse_object("t", r#"{"exp":null,"sub":"other","extra":[1]}"#).unwrap(),
        );
        assert!(!base.contains_key("exp"));
        assert_eq!(base["sub"], "other");
        assert_eq!(base["extra"], json!([1]));
        assert_eq!(base["iat"], 10);

        let token = mint(
            MintArgs {
                alg: Some("HS256".into()),
                secret: Some("k".into()),
                kid: Some("custom".into()),
                header: Some(r#"{"kid":null,"typ":"at+jwt","x5u":"u"}"#.into()),
                claims: Some(r#"{"scope":null,"aud":["a","b"]}"#.into()),
                ..MintArgs::default()
            },
            5,
        )
        .unwrap();
        let (header, claims, _, _) = split(&token);
        assert_eq!(
            Value::Object(header),
            json!({"alg":"HS256","typ":"at+jwt","x5u":"u"})
        );
        assert!(!claims.contains_key("scope"));
        assert_eq!(claims["aud"], json!(["a", "b"]));
    }

    #[test]
    fn rejects_bad_arguments() {
        let hs_without_secret = MintArgs {
            alg: Some("HS256".into()),
            ..MintArgs::default()
        };
        assert!(mint(hs_without_secret, 0).is_err());
        let bad_alg = MintArgs {
            alg: Some("none".into()),
            ..MintArgs::default()
        };
        assert!(mint(bad_alg, 0).is_err());
        let not_object = MintArgs {
            alg: Some("HS256".into()),
            secret: Some("k".into()),
            claims: Some("[1]".into()),
            ..MintArgs::default()
        };
        assert!(mint(not_object, 0).is_err());
        let missing_key = MintArgs {
            key: Some("/nonexistent/key.pem".into()),
            ..MintArgs::default()
        };
        assert!(mint(missing_key, 0).is_err());
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(parse_args(&args(&["--bogus"])).is_err());
        assert!(parse_args(&args(&["--alg"])).is_err());
        assert!(parse_args(&args(&["--kid", "a", "--kid", "b"])).is_err());
        assert!(parse_args(&args(&["jwks", "extra"])).is_err());
    }

    #[test]
    fn jwks_lists_both_dev_keys() {
        let set: Value = serde_json::from_str(&jwks().unwrap()).unwrap();
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        let rsa = &keys[0];
        assert_eq!(
            (&rsa["kty"], &rsa["kid"], &rsa["alg"], &rsa["use"]),
            (
                &json!("RSA"),
                &json!("dev-rs256"),
                &json!("RS256"),
                &json!("sig")
            )
        );
        assert_eq!(rsa["e"], "AQAB");
        let n = URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap();
        assert_eq!(n.len(), 256);
        let ec = &keys[1];
        assert_eq!(
            (&ec["kty"], &ec["kid"], &ec["alg"], &ec["crv"]),
            (
                &json!("EC"),
                &json!("dev-es256"),
                &json!("ES256"),
                &json!("P-256")
            )
        );
    }
}
