//! JWS signatures (RFC 7515): the token's header, the key it names, and the signature, with the
//! algorithm pinned per key (RFC 8725). A token verified once is remembered in the claims cache.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::reply::failure::Failure;
use crate::token::cache::ClaimsCache;
use crate::token::claims::check_claims;
use crate::token::jwk::{Algorithm, Key, KeySet};
use crate::token::jwks::RemoteJwks;
use crate::token::{TokenSettings, Verified};

fn decode_json_object(part: &str, what: &'static str) -> Result<Map<String, Value>, Failure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Failure::TokenMalformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Failure::TokenMalformed(what)),
    }
}

/// Finds the key for a token: configured keys first, then the fetched set.
fn find_key<'a>(
    keys: &'a KeySet,
    remote: Option<&'a mut RemoteJwks>,
    kid: Option<&str>,
    algorithm: Algorithm,
) -> Result<&'a Key, Failure> {
    if let Some(key) = keys.find(kid, algorithm) {
        return Ok(key);
    }
    let Some(remote) = remote else {
        return Err(Failure::TokenKeyUnknown);
    };
    match remote.keys().map(|set| set.find(kid, algorithm).is_some()) {
        // Fail closed until a first key set has been loaded.
        None => return Err(Failure::JwksUnavailable),
        Some(false) => {
            remote.want_refetch();
            return Err(Failure::TokenKeyUnknown);
        }
        Some(true) => {}
    }
    let remote: &'a RemoteJwks = remote;
    remote
        .keys()
        .and_then(|set| set.find(kid, algorithm))
        .ok_or(Failure::TokenKeyUnknown)
}

/// Checks the signature, then the claims (time, issuer, audience, user, linked identity, scope).
/// With a cache, a token whose signature was already verified skips the signature check (the
/// expensive part: ~1 ms for RS256 inside V8); its claims are checked every time.
pub fn verify(
    settings: &TokenSettings,
    remote: Option<&mut RemoteJwks>,
    cache: Option<&mut ClaimsCache>,
    token: &str,
    now_ms: u64,
) -> Result<Verified, Failure> {
    let now_secs = now_ms / 1000;
    let Some(cache) = cache else {
        let claims = verify_signature(&settings.keys, remote, token)?;
        return check_claims(settings, &claims, now_secs);
    };
    let hash = cache.hash(token);
    if let Some(claims) = cache.get(&hash, now_ms) {
        return check_claims(settings, &claims, now_secs);
    }
    let claims = verify_signature(&settings.keys, remote, token)?;
    let verified = check_claims(settings, &claims, now_secs)?;
    cache.insert(hash, claims, now_ms);
    Ok(verified)
}

/// Verifies the JWS and returns its (now trusted) claims.
pub fn verify_signature(
    keys: &KeySet,
    remote: Option<&mut RemoteJwks>,
    token: &str,
) -> Result<Map<String, Value>, Failure> {
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
    let algorithm = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Algorithm::parse)
        .ok_or(Failure::TokenSignatureInvalid(
            "The token's algorithm is not accepted.",
        ))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(Failure::TokenMalformed("The token's kid is not a string.")),
    };
    let key = find_key(keys, remote, kid, algorithm)?;
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
    if !key.verifies(signed, &signature) {
        return Err(Failure::TokenSignatureInvalid(
            "The token signature does not verify.",
        ));
    }
    // Only now is the payload trusted enough to read.
    decode_json_object(claims_b64, "The token payload is not base64url JSON.")
}
