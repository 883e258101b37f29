//! The requests: the paths, bodies and headers every thread builds on, and the weighted mix of
//! cheap kinds (answered before the credential service) that the cheap and churn threads draw
//! from with a deterministic PRNG.

use harness::*;
use serde_json::json;

use crate::kinds::*;
use crate::tokens::{GuessPool, Tokens};

pub const OTP: &str = OTP_PATH;
pub const VERIFY: &str = "/user/2022-1/user/otp/verify";
pub const GATE_PIN: &str = "/user/2021-2/user/pin";
pub const GATE_PAY: &str = "/pay/2021-2/transactions/42/authorize";
pub const GATE_DELETE: &str = "/user/2021-2/user";
/// A code of the wrong length: never valid, but still an attempt against the user's budget.
pub const WRONG_CODE: &str = "0000000";
pub const GOOD_PIN: &str = r#"{"pin":"8299"}"#;

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn post_json(path: &str, auth: Option<&str>, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    headers.extend_from_slice(extra);
    request("POST", path, &headers, Some(body))
}

pub fn verify_body(code: &str) -> String {
    json!({ "otp": code }).to_string()
}

pub fn pay_body(code: &str) -> String {
    json!({"data": {"type": "paymentAuthorization", "attributes": {"twoFactor": {"method": "pin", "otp": code}}}})
        .to_string()
}

pub fn pin_body(code: &str) -> String {
    json!({"data": {"type": "pin", "attributes": {"pin": "4711", "otp": code}}}).to_string()
}

pub enum Build {
    Fixed(Vec<u8>),
    /// Built per request with a guess user's token.
    VerifyGuess,
    GateGuess,
}

pub struct Cheap {
    pub weight: u32,
    pub kind: &'static Kind,
    pub build: Build,
}

pub fn cheap_mix(t: &Tokens) -> Vec<Cheap> {
    let auth = bearer(&t.cheap);
    let a = Some(auth.as_str());
    let fixed = |weight, kind, raw| Cheap {
        weight,
        kind,
        build: Build::Fixed(raw),
    };
    let oversized = format!(r#"{{"pin":"{}"}}"#, "1".repeat(5000));
    vec![
        fixed(8, &K_NO_TOKEN, post_json(OTP, None, &[], GOOD_PIN)),
        fixed(
            4,
            &K_TOKEN_MALFORMED,
            post_json(OTP, Some("Bearer not-a-jwt"), &[], GOOD_PIN),
        ),
        fixed(
            4,
            &K_TOKEN_BAD_SIG,
            post_json(OTP, Some(&bearer(&t.bad_signature)), &[], GOOD_PIN),
        ),
        fixed(
            4,
            &K_TOKEN_EXPIRED,
            post_json(OTP, Some(&bearer(&t.expired)), &[], GOOD_PIN),
        ),
        fixed(
            2,
            &K_TOKEN_UNKNOWN_KID,
            post_json(OTP, Some(&bearer(&t.unknown_kid)), &[], GOOD_PIN),
        ),
        fixed(
            4,
            &K_NO_SCOPE,
            post_json(OTP, Some(&bearer(&t.no_scope)), &[], GOOD_PIN),
        ),
        fixed(
            6,
            &K_BAD_ACCEPT,
            post_json(OTP, a, &[("accept", "text/html")], GOOD_PIN),
        ),
        fixed(
            6,
            &K_BAD_CONTENT_TYPE,
            request(
                "POST",
                OTP,
                &[("authorization", &auth), ("content-type", "text/plain")],
                Some(GOOD_PIN),
            ),
        ),
        fixed(2, &K_OVERSIZED, post_json(OTP, a, &[], &oversized)),
        fixed(5, &K_BODY_NOT_JSON, post_json(OTP, a, &[], r#"{"pin":"82"#)),
        fixed(
            3,
            &K_FIELD_INVALID,
            post_json(OTP, a, &[], r#"{"pin":8299}"#),
        ),
        fixed(3, &K_CREDENTIALS_MISSING, post_json(OTP, a, &[], "{}")),
        fixed(
            4,
            &K_METHOD,
            request("GET", OTP, &[("authorization", &auth)], None),
        ),
        Cheap {
            weight: 6,
            kind: &K_VERIFY_WRONG,
            build: Build::VerifyGuess,
        },
        fixed(
            2,
            &K_VERIFY_BAD_TYPE,
            post_json(VERIFY, a, &[], r#"{"otp":"123456","types":["card"]}"#),
        ),
        fixed(
            5,
            &K_GATE_NO_CODE,
            request(
                "PUT",
                GATE_PIN,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/vnd.api+json"),
                ],
                Some(r#"{"data":{"attributes":{"pin":"4711"}}}"#),
            ),
        ),
        Cheap {
            weight: 4,
            kind: &K_GATE_WRONG,
            build: Build::GateGuess,
        },
        fixed(
            3,
            &K_GATE_NO_TOKEN,
            request("DELETE", GATE_DELETE, &[("x-otp", "123456")], None),
        ),
        fixed(
            6,
            &K_PASS_USER,
            request(
                "GET",
                "/user/2021-2/user/profile",
                &[("authorization", &auth)],
                None,
            ),
        ),
        fixed(2, &K_PASS_GATED_GET, request("GET", GATE_PIN, &[], None)),
        fixed(
            3,
            &K_UNKNOWN_VERSION,
            post_json("/user/1999-1/user/otp", a, &[], GOOD_PIN),
        ),
        fixed(
            2,
            &K_PASS_PAY,
            request("GET", "/pay/2021-2/transactions/42", &[], None),
        ),
        fixed(6, &K_CATCH_ALL, request("GET", "/healthz", &[], None)),
        fixed(
            3,
            &K_UNKNOWN_PATH,
            post_json("/no/such/path", None, &[], "{}"),
        ),
    ]
}

/// Share of cheap requests that draw on the guess pool.
pub fn guess_share(mix: &[Cheap]) -> f64 {
    let total: u32 = mix.iter().map(|c| c.weight).sum();
    let guesses: u32 = mix
        .iter()
        .filter(|c| !matches!(c.build, Build::Fixed(_)))
        .map(|c| c.weight)
        .sum();
    f64::from(guesses) / f64::from(total)
}

/// splitmix64: a deterministic, dependency-free PRNG per thread.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn pick<'a>(&mut self, mix: &'a [Cheap], total: u32) -> &'a Cheap {
        let mut r = self.below(u64::from(total)) as u32;
        for c in mix {
            if r < c.weight {
                return c;
            }
            r -= c.weight;
        }
        &mix[mix.len() - 1]
    }
}

/// The request of a cheap kind; `None` when the guess pool is used up.
pub fn build<'a>(c: &'a Cheap, pool: &GuessPool, scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    match &c.build {
        Build::Fixed(raw) => Some(raw),
        Build::VerifyGuess => {
            *scratch = post_json(
                VERIFY,
                Some(&bearer(pool.take()?)),
                &[],
                &verify_body(WRONG_CODE),
            );
            Some(scratch)
        }
        Build::GateGuess => {
            *scratch = post_json(
                GATE_PAY,
                Some(&bearer(pool.take()?)),
                &[],
                &pay_body(WRONG_CODE),
            );
            Some(scratch)
        }
    }
}
