//! The bearer token from `Authorization` (RFC 6750 §2.1).

use crate::reply::failure::Failure;
use crate::token::MAX_TOKEN_BYTES;

/// RFC 6750 §2.1: `Bearer` (scheme case-insensitive, RFC 9110 §11.1) then one or more spaces then a
/// b64token. Anything else, including a second `Bearer`, is malformed.
/// RFC 6750 token68 characters (before trailing `=`). A `match` LLVM turns into range checks; a
/// per-byte search of a list over every byte of every token showed up in profiles.
fn is_token68(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

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
    if !body.bytes().all(is_token68) {
        return Err(Failure::TokenMalformed(
            "The token has characters a bearer token cannot have.",
        ));
    }
    Ok(token)
}
