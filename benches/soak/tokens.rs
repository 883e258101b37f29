//! The tokens the load sends: one per refusal the filter makes on the token, the demo users', and
//! a pool of minted "guess" users that take the wrong codes, at most GUESS_BUDGET each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use harness::bench::mint_all;
use serde_json::json;

use crate::mix::{cheap_mix, guess_share};
use crate::Settings;

/// Wrong attempts per minted "guess" user: below the raised `max_failures` (100), so the throttle
/// never answers for them.
pub const GUESS_BUDGET: u64 = 90;

/// Minted users for wrong codes: user `k / GUESS_BUDGET` takes the k-th guess of the run.
pub struct GuessPool {
    pub tokens: Vec<String>,
    pub next: AtomicU64,
}

impl GuessPool {
    pub fn take(&self) -> Option<&str> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens
            .get((k / GUESS_BUDGET) as usize)
            .map(String::as_str)
    }
}

pub struct Tokens {
    pub cheap: String,
    pub no_scope: String,
    pub expired: String,
    pub bad_signature: String,
    pub unknown_kid: String,
    pub demo: [String; 2],
    pub unlinked: String,
    pub guesses: GuessPool,
}

/// Every token the load needs, minted with the demo-token binary; they live past the run (and
/// the filter's cache holds each for at most 300 s).
pub fn mint(settings: &Settings) -> Tokens {
    let exp = now_secs() + settings.seconds as u64 + 900;
    let claims = |sub: &str, scope: &str| {
        vec![
            "--claims".to_string(),
            json!({"sub": sub, "scope": scope, "exp": exp}).to_string(),
        ]
    };
    let both = "openid user:otp:create user:otp:verify";
    let guess_users = guess_users(settings);
    println!("minting {} tokens ...", guess_users + 7);
    let mut args = vec![
        claims("soak-cheap", both),
        claims("soak-no-scope", "openid"),
        vec![
            "--claims".to_string(),
            json!({"sub": "soak-expired", "iat": now_secs() - 7200, "exp": now_secs() - 3600})
                .to_string(),
        ],
        [
            claims("soak-unknown-kid", both),
            vec!["--kid".into(), "soak-unknown".into()],
        ]
        .concat(),
        claims("demo-user", both),
        claims("demo-user-2", both),
        claims("unlinked-user", both),
    ];
    args.extend((0..guess_users).map(|i| claims(&format!("soak-guess-{i}"), both)));
    let mut minted = mint_all(&args).into_iter();
    let mut take = || minted.next().unwrap();
    let cheap = take();
    Tokens {
        bad_signature: tamper_signature(&cheap),
        cheap,
        no_scope: take(),
        expired: take(),
        unknown_kid: take(),
        demo: [take(), take()],
        unlinked: take(),
        guesses: GuessPool {
            tokens: minted.collect(),
            next: AtomicU64::new(0),
        },
    }
}

/// Guess users: the pacing caps the rate, so this covers the run with a margin.
fn guess_users(settings: &Settings) -> usize {
    let mix_probe = cheap_mix(&Tokens {
        cheap: String::new(),
        no_scope: String::new(),
        expired: String::new(),
        bad_signature: String::new(),
        unknown_kid: String::new(),
        demo: [String::new(), String::new()],
        unlinked: String::new(),
        guesses: GuessPool {
            tokens: Vec::new(),
            next: AtomicU64::new(0),
        },
    });
    let cheap_rate = settings.rps + settings.churn_per_sec * 2.0;
    let guesses = settings.seconds
        * (cheap_rate * guess_share(&mix_probe) + 0.25 / settings.cycle.as_secs_f64());
    (guesses * 1.3 / GUESS_BUDGET as f64).ceil() as usize + 4
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Flips one character in the middle of the signature: still base64url, no longer valid.
fn tamper_signature(token: &str) -> String {
    let sig_start = token.rfind('.').expect("JWS") + 1;
    let i = sig_start + (token.len() - sig_start) / 2;
    let mut bytes = token.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}
