//! `demo-token`: DEV-ONLY JWS minter for the otp-filter demo and tests.
//!
//! ```text
//! demo-token [--alg RS256|RS384|RS512|PS256|ES256|ES384|EdDSA|HS256] [--key PATH] [--kid KID]
//!            [--secret VALUE] [--claims JSON] [--header JSON]
//! demo-token jwks [ALG:KID:PATH ...]
//! ```
//!
//! Prints one compact JWS (or one JWKS object) on stdout. The keys under `envoy/dev-keys/`
//! are published test keys: nothing signed with them may ever be trusted outside a demo.
//!
//! `--claims` / `--header` are JSON objects merged (shallowly) over the defaults; a `null`
//! value removes the key. The header's `alg` may be overridden to anything (useful for
//! negative tests); the signature is always made with `--alg`.
//!
//! Signatures follow RFC 7518 / RFC 8037: RSxxx is RSASSA-PKCS1-v1_5 with SHA-256/384/512,
//! PS256 is RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt, ESxxx is the raw
//! fixed-size r||s (not DER), EdDSA is the raw 64-byte Ed25519 signature.

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
use sha2::{Sha256, Sha384, Sha512};

const USAGE: &str = "usage (DEV-ONLY keys and tokens):
  demo-token [--alg RS256|RS384|RS512|PS256|ES256|ES384|EdDSA|HS256] [--key PATH] [--kid KID]
             [--secret VALUE] [--claims JSON] [--header JSON] [--payload JSON]
      prints a compact JWS; --claims/--header objects merge over the defaults, null removes a key;
      --payload replaces the claims with any JSON (for malformed-token tests)
      defaults: --alg RS256; key envoy/dev-keys/<alg>-DEV-ONLY.pem and kid dev-<alg> (alg in
                lower case; EdDSA uses ed25519), HS256 kid dev-hs256 (needs --secret)
  demo-token jwks [ALG:KID:PATH ...]
      prints a JWKS of exactly the listed keys; with none, one key per asymmetric algorithm
      (RS256, RS384, RS512, PS256, ES256, ES384, EdDSA) with its default file and kid";

/// Every algorithm `--alg` takes, in the order `jwks` lists the default keys.
const ALL_ALGS: [Alg; 8] = [
    Alg::Rs256,
    Alg::Rs384,
    Alg::Rs512,
    Alg::Ps256,
    Alg::Es256,
    Alg::Es384,
    Alg::EdDsa,
    Alg::Hs256,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Es256,
    Es384,
    EdDsa,
    Hs256,
}

impl Alg {
    fn parse(s: &str) -> Result<Self, String> {
        ALL_ALGS.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            format!(
                "unsupported algorithm {s:?} (RS256, RS384, RS512, PS256, ES256, ES384, \
                     EdDSA or HS256)"
            )
        })
    }

    /// The JOSE `alg` name.
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }

    /// The name of the dev key in file names and kids: the curve for EdDSA, whose `alg`
    /// alone does not say which curve.
    fn key_name(self) -> &'static str {
        match self {
            Alg::Rs256 => "rs256",
            Alg::Rs384 => "rs384",
            Alg::Rs512 => "rs512",
            Alg::Ps256 => "ps256",
            Alg::Es256 => "es256",
            Alg::Es384 => "es384",
            Alg::EdDsa => "ed25519",
            Alg::Hs256 => "hs256",
        }
    }

    fn default_kid(self) -> String {
        format!("dev-{}", self.key_name())
    }

    /// `envoy/dev-keys/<key name>-DEV-ONLY.pem`, relative to the repo root. HS256 has none.
    fn default_key_file(self) -> Option<String> {
        (self != Alg::Hs256).then(|| format!("envoy/dev-keys/{}-DEV-ONLY.pem", self.key_name()))
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
    /// Replaces the claims with any JSON value, for tokens that must be malformed inside.
    payload: Option<String>,
}

/// One key of a `jwks` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySpec {
    alg: Alg,
    kid: String,
    path: PathBuf,
}

impl KeySpec {
    /// `ALG:KID:PATH`; the path is everything after the second colon, so it may hold colons.
    fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let (Some(alg), Some(kid), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("jwks: expected ALG:KID:PATH, got {s:?}"));
        };
        let alg = Alg::parse(alg).map_err(|e| format!("jwks {s:?}: {e}"))?;
        if alg == Alg::Hs256 {
            return Err(format!(
                "jwks {s:?}: HS256 keys are secrets and never go in a JWKS"
            ));
        }
        if kid.is_empty() || path.is_empty() {
            return Err(format!("jwks {s:?}: empty KID or PATH"));
        }
        Ok(KeySpec {
            alg,
            kid: kid.to_owned(),
            path: PathBuf::from(path),
        })
    }

    /// The standard dev key of `alg`, with its default file and kid.
    fn default_for(alg: Alg) -> Option<Self> {
        Some(KeySpec {
            alg,
            kid: alg.default_kid(),
            path: default_key_path(&alg.default_key_file()?),
        })
    }
}

enum Command {
    Mint(MintArgs),
    /// Empty: the standard dev set.
    Jwks(Vec<KeySpec>),
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    if args.first().map(String::as_str) == Some("jwks") {
        if args.iter().any(|a| matches!(a.as_str(), "-h" | "--help")) {
            return Ok(Command::Help);
        }
        return args[1..]
            .iter()
            .map(|a| KeySpec::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map(Command::Jwks);
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
            "--payload" => &mut out.payload,
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
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&pem))
        .map_err(|e| {
            format!(
                "{}: not an RSA private key (PKCS#8/PKCS#1 PEM): {e}",
                path.display()
            )
        })?;
    // RFC 7518 §3.3/§3.5: 2048 bits at least; verifiers (ours included) refuse smaller keys.
    if key.size() < 256 {
        return Err(format!(
            "{}: RSA key has {} bits, at least 2048 needed",
            path.display(),
            key.size() * 8
        ));
    }
    Ok(key)
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

fn load_p384(path: &Path) -> Result<p384::SecretKey, String> {
    let pem = read_key(path)?;
    p384::SecretKey::from_pkcs8_pem(&pem)
        .or_else(|_| p384::SecretKey::from_sec1_pem(&pem))
        .map_err(|e| {
            format!(
                "{}: not a P-384 private key (PKCS#8/SEC1 PEM): {e}",
                path.display()
            )
        })
}

fn load_ed25519(path: &Path) -> Result<ed25519_dalek::SigningKey, String> {
    let pem = read_key(path)?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        format!(
            "{}: not an Ed25519 private key (PKCS#8 PEM): {e}",
            path.display()
        )
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key material for one signature.
enum Key {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    Ed25519(Box<ed25519_dalek::SigningKey>),
    Hmac(Vec<u8>),
}

/// A key pinned to the one algorithm it signs with (RFC 8725 §3.1).
struct SigningKey {
    alg: Alg,
    key: Key,
}

impl SigningKey {
    /// Loads the private key at `path` for `alg`; a key of the wrong type (an EC key for
    /// RS256, a P-256 key for ES384, ...) is an error, not a silent switch of algorithm.
    fn load(alg: Alg, path: &Path) -> Result<Self, String> {
        let key = match alg {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 => {
                Key::Rsa(Box::new(load_rsa(path)?))
            }
            Alg::Es256 => Key::P256(load_p256(path)?),
            Alg::Es384 => Key::P384(load_p384(path)?),
            Alg::EdDsa => Key::Ed25519(Box::new(load_ed25519(path)?)),
            Alg::Hs256 => return Err("HS256 takes a --secret, not a key file".to_owned()),
        };
        Ok(SigningKey { alg, key })
    }

    fn hs256(secret: Vec<u8>) -> Self {
        SigningKey {
            alg: Alg::Hs256,
            key: Key::Hmac(secret),
        }
    }

    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, String> {
        let failed = |e: &dyn std::fmt::Display| format!("{} signing: {e}", self.alg.name());
        match &self.key {
            Key::Rsa(key) => {
                let key = (**key).clone();
                let rng = &mut rsa::rand_core::OsRng;
                // Blinded private-key operations throughout.
                let sig = match self.alg {
                    Alg::Rs256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
                        .try_sign_with_rng(rng, signing_input)
                        .map(|s| s.to_vec()),
                    Alg::Rs384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(key)
                        .try_sign_with_rng(rng, signing_input)
                        .map(|s| s.to_vec()),
                    Alg::Rs512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(key)
                        .try_sign_with_rng(rng, signing_input)
                        .map(|s| s.to_vec()),
                    // MGF1 with the same SHA-256 and a salt as long as the digest (32 bytes):
                    // exactly what RFC 7518 §3.5 asks of PS256.
                    Alg::Ps256 => rsa::pss::BlindedSigningKey::<Sha256>::new(key)
                        .try_sign_with_rng(rng, signing_input)
                        .map(|s| s.to_vec()),
                    other => return Err(format!("{} is not an RSA algorithm", other.name())),
                };
                sig.map_err(|e| failed(&e))
            }
            // JWS wants the fixed-size r||s form (64 / 96 bytes), not DER.
            Key::P256(key) => {
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(key)
                    .try_sign(signing_input)
                    .map_err(|e| failed(&e))?;
                Ok(sig.to_bytes().to_vec())
            }
            Key::P384(key) => {
                let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(key)
                    .try_sign(signing_input)
                    .map_err(|e| failed(&e))?;
                Ok(sig.to_bytes().to_vec())
            }
            Key::Ed25519(key) => {
                let sig = key.try_sign(signing_input).map_err(|e| failed(&e))?;
                Ok(sig.to_bytes().to_vec())
            }
            Key::Hmac(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret)
                    .map_err(|e| format!("HS256 key: {e}"))?;
                mac.update(signing_input);
                Ok(mac.finalize().into_bytes().to_vec())
            }
        }
    }

    /// The public JWK of this key under `kid`, with `alg` and `use` set so verifiers can
    /// pin it. Symmetric keys have none: they are secrets.
    fn jwk(&self, kid: &str) -> Result<Value, String> {
        let alg = self.alg.name();
        match &self.key {
            Key::Rsa(key) => Ok(json!({
                "kty": "RSA",
                "kid": kid,
                "alg": alg,
                "use": "sig",
                "n": b64(&key.n().to_bytes_be()),
                "e": b64(&key.e().to_bytes_be()),
            })),
            Key::P256(key) => {
                let point = key.public_key().to_encoded_point(false);
                ec_jwk(kid, alg, "P-256", point.x(), point.y())
            }
            Key::P384(key) => {
                let point = key.public_key().to_encoded_point(false);
                ec_jwk(kid, alg, "P-384", point.x(), point.y())
            }
            Key::Ed25519(key) => Ok(json!({
                "kty": "OKP",
                "kid": kid,
                "alg": alg,
                "use": "sig",
                "crv": "Ed25519",
                "x": b64(key.verifying_key().as_bytes()),
            })),
            Key::Hmac(_) => Err("HS256 keys are secrets and never go in a JWKS".to_owned()),
        }
    }
}

/// An EC JWK from the affine coordinates of an uncompressed point, which are always the
/// full field size (32 bytes for P-256, 48 for P-384), as RFC 7518 §6.2.1.2 requires.
fn ec_jwk<T: AsRef<[u8]>>(
    kid: &str,
    alg: &str,
    crv: &str,
    x: Option<&T>,
    y: Option<&T>,
) -> Result<Value, String> {
    let (Some(x), Some(y)) = (x, y) else {
        return Err("EC public key has no affine coordinates".to_owned());
    };
    Ok(json!({
        "kty": "EC",
        "kid": kid,
        "alg": alg,
        "use": "sig",
        "crv": crv,
        "x": b64(x.as_ref()),
        "y": b64(y.as_ref()),
    }))
}

/// Builds the compact JWS `b64(header).b64(claims).b64(signature)`.
fn compact_jws(
    key: &SigningKey,
    header: &Map<String, Value>,
    claims: &Value,
) -> Result<String, String> {
    let header = serde_json::to_vec(header).map_err(|e| format!("header: {e}"))?;
    let claims = serde_json::to_vec(claims).map_err(|e| format!("claims: {e}"))?;
    let signing_input = format!("{}.{}", b64(&header), b64(&claims));
    let signature = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

fn mint(args: MintArgs, now: u64) -> Result<String, String> {
    let alg =
        Alg::parse(args.alg.as_deref().unwrap_or("RS256")).map_err(|e| format!("--alg: {e}"))?;
    let key = if alg == Alg::Hs256 {
        if args.key.is_some() {
            return Err("--key is not used with HS256 (use --secret)".to_owned());
        }
        let secret = args.secret.ok_or("HS256 needs --secret")?;
        if secret.is_empty() {
            return Err("--secret must not be empty".to_owned());
        }
        SigningKey::hs256(secret.into_bytes())
    } else {
        if args.secret.is_some() {
            return Err(format!("--secret is only for HS256, not {}", alg.name()));
        }
        let path = match args.key {
            Some(path) => PathBuf::from(path),
            None => default_key_path(
                &alg.default_key_file()
                    .ok_or_else(|| format!("{} has no default key file", alg.name()))?,
            ),
        };
        SigningKey::load(alg, &path)?
    };

    let mut header = Map::new();
    header.insert("alg".into(), json!(alg.name()));
    header.insert("typ".into(), json!("JWT"));
    header.insert(
        "kid".into(),
        json!(args.kid.unwrap_or_else(|| alg.default_kid())),
    );
    if let Some(h) = &args.header {
        merge(&mut header, parse_object("--header", h)?);
    }

    let mut claims = default_claims(now);
    if let Some(c) = &args.claims {
        merge(&mut claims, parse_object("--claims", c)?);
    }
    let payload = match &args.payload {
        Some(raw) => serde_json::from_str(raw).map_err(|e| format!("--payload: {e}"))?,
        None => Value::Object(claims),
    };

    compact_jws(&key, &header, &payload)
}

/// The JWKS of `specs`, in order; with none, the standard dev set (one key per asymmetric
/// algorithm, never the rotation key `rs256-next`).
fn jwks(specs: &[KeySpec]) -> Result<String, String> {
    let standard: Vec<KeySpec>;
    let specs = if specs.is_empty() {
        standard = ALL_ALGS
            .into_iter()
            .filter_map(KeySpec::default_for)
            .collect();
        &standard
    } else {
        specs
    };
    let keys = specs
        .iter()
        .map(|s| SigningKey::load(s.alg, &s.path)?.jwk(&s.kid))
        .collect::<Result<Vec<_>, _>>()?;
    serde_json::to_string(&json!({ "keys": keys })).map_err(|e| format!("jwks: {e}"))
}

fn run(args: &[String]) -> Result<Option<String>, String> {
    let command = parse_args(args).map_err(|e| format!("{e}\n{USAGE}"))?;
    match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(None)
        }
        Command::Jwks(specs) => jwks(&specs).map(Some),
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

    fn dev_key(alg: Alg) -> String {
        key_path(&alg.default_key_file().unwrap())
    }

    fn field(jwk: &Value, name: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap()
    }

    /// Verifies `sig` over `input` the way a relying party would: with the public key rebuilt
    /// from the JWK alone, by the JWK's `alg`.
    fn verify_with_jwk(jwk: &Value, input: &[u8], sig: &[u8]) -> bool {
        let ec_point = |len: usize| {
            let (x, y) = (field(jwk, "x"), field(jwk, "y"));
            assert_eq!((x.len(), y.len()), (len, len), "fixed-size coordinates");
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            sec1
        };
        let rsa_public = || {
            let n = rsa::BigUint::from_bytes_be(&field(jwk, "n"));
            let e = rsa::BigUint::from_bytes_be(&field(jwk, "e"));
            rsa::RsaPublicKey::new(n, e).unwrap()
        };
        match jwk["alg"].as_str().unwrap() {
            "RS256" | "RS384" | "RS512" => {
                assert_eq!(jwk["kty"], "RSA");
                let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
                    return false;
                };
                let public = rsa_public();
                match jwk["alg"].as_str().unwrap() {
                    "RS256" => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public)
                        .verify(input, &sig)
                        .is_ok(),
                    "RS384" => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(public)
                        .verify(input, &sig)
                        .is_ok(),
                    _ => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(public)
                        .verify(input, &sig)
                        .is_ok(),
                }
            }
            "PS256" => {
                assert_eq!(jwk["kty"], "RSA");
                let Ok(sig) = rsa::pss::Signature::try_from(sig) else {
                    return false;
                };
                // `new` expects a salt as long as the digest: 32 bytes.
                rsa::pss::VerifyingKey::<Sha256>::new(rsa_public())
                    .verify(input, &sig)
                    .is_ok()
            }
            "ES256" => {
                assert_eq!((&jwk["kty"], &jwk["crv"]), (&json!("EC"), &json!("P-256")));
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&ec_point(32)).unwrap();
                p256::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|sig| key.verify(input, &sig).is_ok())
            }
            "ES384" => {
                assert_eq!((&jwk["kty"], &jwk["crv"]), (&json!("EC"), &json!("P-384")));
                let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&ec_point(48)).unwrap();
                p384::ecdsa::Signature::from_slice(sig)
                    .is_ok_and(|sig| key.verify(input, &sig).is_ok())
            }
            "EdDSA" => {
                assert_eq!(
                    (&jwk["kty"], &jwk["crv"]),
                    (&json!("OKP"), &json!("Ed25519"))
                );
                assert!(jwk.get("y").is_none());
                let x: [u8; 32] = field(jwk, "x").try_into().unwrap();
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
                ed25519_dalek::Signature::from_slice(sig)
                    .is_ok_and(|sig| key.verify_strict(input, &sig).is_ok())
            }
            other => panic!("unexpected alg {other}"),
        }
    }

    fn standard_jwks() -> Vec<Value> {
        let set: Value = serde_json::from_str(&jwks(&[]).unwrap()).unwrap();
        set["keys"].as_array().unwrap().clone()
    }

    #[test]
    fn rs256_token_verifies_with_the_public_key() {
        let token = mint(
            MintArgs {
                key: Some(dev_key(Alg::Rs256)),
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
        let public = load_rsa(Path::new(&dev_key(Alg::Rs256)))
            .unwrap()
            .to_public_key();
        assert_eq!(sig.len(), 256);
        let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public);
        let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice()).unwrap();
        verifier.verify(input.as_bytes(), &sig).unwrap();
        assert!(verifier.verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn every_algorithm_verifies_with_its_jwks_key() {
        let keys = standard_jwks();
        for alg in ALL_ALGS.into_iter().filter(|a| *a != Alg::Hs256) {
            // Default key file and kid.
            let token = mint(
                MintArgs {
                    alg: Some(alg.name().into()),
                    ..MintArgs::default()
                },
                1_000,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", alg.name()));
            let (header, _, input, sig) = split(&token);
            assert_eq!(header["alg"], alg.name());
            assert_eq!(header["kid"], format!("dev-{}", alg.key_name()));
            let expected_len = match alg {
                Alg::Es256 | Alg::EdDsa => 64, // raw r||s for ES256, not DER
                Alg::Es384 => 96,
                _ => 256, // RSA 2048
            };
            assert_eq!(sig.len(), expected_len, "{}", alg.name());
            let jwk = keys
                .iter()
                .find(|k| k["kid"] == header["kid"])
                .unwrap_or_else(|| panic!("no JWK for {}", alg.name()));
            assert_eq!(jwk["alg"], alg.name());
            assert!(
                verify_with_jwk(jwk, input.as_bytes(), &sig),
                "{} does not verify",
                alg.name()
            );
            assert!(
                !verify_with_jwk(jwk, b"tampered", &sig),
                "{} verifies a tampered input",
                alg.name()
            );
            // The same signature does not pass under any other published key.
            for other in keys.iter().filter(|k| k["kid"] != jwk["kid"]) {
                assert!(!verify_with_jwk(other, input.as_bytes(), &sig));
            }
        }
    }

    #[test]
    fn ps256_uses_a_32_byte_salt_and_is_randomised() {
        let args = || MintArgs {
            alg: Some("PS256".into()),
            ..MintArgs::default()
        };
        let (_, _, input, sig) = split(&mint(args(), 7).unwrap());
        let (_, _, input2, sig2) = split(&mint(args(), 7).unwrap());
        assert_eq!(input, input2);
        assert_ne!(sig, sig2, "PSS signatures carry a random salt");
        let public = load_rsa(Path::new(&dev_key(Alg::Ps256)))
            .unwrap()
            .to_public_key();
        let sig = rsa::pss::Signature::try_from(sig.as_slice()).unwrap();
        rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(public.clone(), 32)
            .verify(input.as_bytes(), &sig)
            .unwrap();
        assert!(
            rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(public, 20)
                .verify(input.as_bytes(), &sig)
                .is_err()
        );
    }

    #[test]
    fn keys_are_pinned_to_their_algorithm() {
        for (alg, wrong) in [
            (Alg::Rs256, Alg::Es256),
            (Alg::Ps256, Alg::EdDsa),
            (Alg::Es256, Alg::Es384),
            (Alg::Es384, Alg::Es256),
            (Alg::Es256, Alg::Rs256),
            (Alg::EdDsa, Alg::Es256),
        ] {
            let r = mint(
                MintArgs {
                    alg: Some(alg.name().into()),
                    key: Some(dev_key(wrong)),
                    ..MintArgs::default()
                },
                0,
            );
            assert!(
                r.is_err(),
                "{} signed with the {} key",
                alg.name(),
                wrong.name()
            );
        }
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
        for bad in ["none", "rs256", "EDDSA", "ES512", "PS384"] {
            let bad_alg = MintArgs {
                alg: Some(bad.into()),
                ..MintArgs::default()
            };
            assert!(mint(bad_alg, 0).is_err(), "{bad}");
        }
        let secret_with_es = MintArgs {
            alg: Some("ES384".into()),
            secret: Some("k".into()),
            ..MintArgs::default()
        };
        assert!(mint(secret_with_es, 0).is_err());
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
        for bad in [
            "extra",
            "RS256:kid",
            "RS256::p.pem",
            "RS256:kid:",
            "HS256:kid:p.pem",
            "XX1:kid:p.pem",
        ] {
            assert!(parse_args(&args(&["jwks", bad])).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_args(&args(&["jwks", "--help"])),
            Ok(Command::Help)
        ));
        assert!(jwks(&[KeySpec::parse("ES256:k:/nonexistent.pem").unwrap()]).is_err());
        // A key listed under the wrong algorithm.
        let wrong = format!("ES384:k:{}", dev_key(Alg::Es256));
        assert!(jwks(&[KeySpec::parse(&wrong).unwrap()]).is_err());
    }

    #[test]
    fn standard_jwks_has_one_key_per_asymmetric_algorithm() {
        let keys = standard_jwks();
        let summary: Vec<(String, String, String)> = keys
            .iter()
            .map(|k| {
                assert_eq!(k["use"], "sig");
                let s = |f: &str| k[f].as_str().unwrap().to_owned();
                (s("kty"), s("kid"), s("alg"))
            })
            .collect();
        let expect = |kty: &str, kid: &str, alg: &str| (kty.into(), kid.into(), alg.into());
        assert_eq!(
            summary,
            vec![
                expect("RSA", "dev-rs256", "RS256"),
                expect("RSA", "dev-rs384", "RS384"),
                expect("RSA", "dev-rs512", "RS512"),
                expect("RSA", "dev-ps256", "PS256"),
                expect("EC", "dev-es256", "ES256"),
                expect("EC", "dev-es384", "ES384"),
                expect("OKP", "dev-ed25519", "EdDSA"),
            ]
        );
        let rsa = &keys[0];
        assert_eq!(rsa["e"], "AQAB");
        assert_eq!(field(rsa, "n").len(), 256);
        assert_eq!(
            keys[4].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["alg", "crv", "kid", "kty", "use", "x", "y"]
        );
        assert_eq!(field(&keys[5], "x").len(), 48);
        assert_eq!(field(&keys[6], "x").len(), 32);
        // Each key file is a distinct key.
        let n: Vec<&Value> = keys[..4].iter().map(|k| &k["n"]).collect();
        assert!((1..4).all(|i| !n[..i].contains(&n[i])));
    }

    #[test]
    fn listed_jwks_round_trips() {
        let args: Vec<String> = vec![
            "jwks".into(),
            format!(
                "RS256:dev-rs256-next:{}",
                key_path("envoy/dev-keys/rs256-next-DEV-ONLY.pem")
            ),
            format!("RS256:dev-rs256:{}", dev_key(Alg::Rs256)),
        ];
        let Ok(Command::Jwks(specs)) = parse_args(&args) else {
            panic!("jwks args not parsed");
        };
        let set: Value = serde_json::from_str(&jwks(&specs).unwrap()).unwrap();
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(set.as_object().unwrap().len(), 1);
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (&keys[0]["kid"], &keys[1]["kid"]),
            (&json!("dev-rs256-next"), &json!("dev-rs256"))
        );
        assert_ne!(keys[0]["n"], keys[1]["n"]);
        for (i, key) in [
            "envoy/dev-keys/rs256-next-DEV-ONLY.pem",
            "envoy/dev-keys/rs256-DEV-ONLY.pem",
        ]
        .into_iter()
        .enumerate()
        {
            let token = mint(
                MintArgs {
                    key: Some(key_path(key)),
                    kid: Some(keys[i]["kid"].as_str().unwrap().into()),
                    ..MintArgs::default()
                },
                1,
            )
            .unwrap();
            let (header, _, input, sig) = split(&token);
            assert_eq!(header["kid"], keys[i]["kid"]);
            assert!(verify_with_jwk(&keys[i], input.as_bytes(), &sig));
            assert!(!verify_with_jwk(&keys[1 - i], input.as_bytes(), &sig));
        }
        // Other algorithms, and a path with a colon kept whole.
        let spec = KeySpec::parse("EdDSA:my:kid:/no/such").unwrap();
        assert_eq!(
            (spec.alg, spec.kid.as_str(), spec.path.as_path()),
            (Alg::EdDsa, "my", Path::new("kid:/no/such"))
        );
        let spec = KeySpec::parse(&format!("ES384:k384:{}", dev_key(Alg::Es384))).unwrap();
        let set: Value = serde_json::from_str(&jwks(&[spec]).unwrap()).unwrap();
        assert_eq!(set["keys"][0]["crv"], "P-384");
        assert_eq!(set["keys"][0]["kid"], "k384");
    }
}
