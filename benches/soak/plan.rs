//! The load threads: cheap connections paced to SOAK_RPS, churn, the two credential threads and a
//! heartbeat that notices a stalled machine. Each returns its tally.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;

use crate::client::Client;
use crate::kinds::*;
use crate::mix::*;
use crate::tally::{run, Shared, Tally};
use crate::tokens::Tokens;
use crate::Settings;

/// Unlinked-user creates in the whole run: its budget is never reset (no valid answer exists).
const UNLINKED_CAP: u64 = 80;

/// Sleeps until `next`, then moves it on by `interval`; never bursts to catch up over 1 s.
/// Returns how far behind schedule the thread was (a stalled machine shows here).
fn pace(next: &mut Instant, interval: Duration) -> Duration {
    let now = Instant::now();
    let late = now.saturating_duration_since(*next);
    if *next > now {
        thread::sleep(*next - now);
    } else if late > Duration::from_secs(1) {
        *next = now;
    }
    *next += interval;
    late
}

pub struct Plan<'a> {
    pub port: u16,
    pub end: Instant,
    pub shared: &'a Shared,
    pub mix: &'a [Cheap],
    pub tokens: &'a Tokens,
    pub settings: &'a Settings,
    pub unlinked_sent: &'a AtomicU64,
}

impl Plan<'_> {
    pub fn running(&self) -> bool {
        Instant::now() < self.end && !self.shared.stop.load(Ordering::Relaxed)
    }

    fn cheap_request(
        &self,
        rng: &mut Rng,
        tally: &mut Tally,
        scratch: &mut Vec<u8>,
    ) -> (&'static Kind, Vec<u8>) {
        let total: u32 = self.mix.iter().map(|c| c.weight).sum();
        let c = rng.pick(self.mix, total);
        match build(c, &self.tokens.guesses, scratch) {
            Some(raw) => (c.kind, raw.to_vec()),
            None => {
                tally.pool_exhausted += 1;
                let fallback = self
                    .mix
                    .iter()
                    .find(|c| std::ptr::eq(c.kind, &K_GATE_NO_CODE))
                    .expect("gate without code in the mix");
                let Build::Fixed(raw) = &fallback.build else {
                    unreachable!()
                };
                (fallback.kind, raw.clone())
            }
        }
    }

    /// Keep-alive connection, paced to its share of SOAK_RPS.
    pub fn cheap(&self, index: usize) -> Tally {
        let mut tally = Tally::default();
        let mut rng = Rng(0x50A4 + index as u64);
        let mut client = Client::new(self.port);
        let interval = Duration::from_secs_f64(self.settings.conns as f64 / self.settings.rps);
        let mut next = Instant::now() + interval.mul_f64(index as f64 / self.settings.conns as f64);
        let mut scratch = Vec::new();
        while self.running() {
            tally.max_lag = tally.max_lag.max(pace(&mut next, interval));
            let (kind, raw) = self.cheap_request(&mut rng, &mut tally, &mut scratch);
            run(&mut client, kind, &raw, &mut tally, self.shared);
        }
        tally.connections = client.opened;
        tally
            .overruns
            .push(("cheap", Instant::now().saturating_duration_since(self.end)));
        tally
    }

    /// New connections: one to three requests each, then the client closes. Some are malformed
    /// HTTP (Envoy answers 400 and closes) and some are abandoned halfway through the body.
    pub fn churn(&self) -> Tally {
        let mut tally = Tally::default();
        let mut rng = Rng(0xC4u64 << 32);
        let interval = Duration::from_secs_f64(1.0 / self.settings.churn_per_sec.max(0.001));
        let mut next = Instant::now();
        let mut scratch = Vec::new();
        let bad_http = request(
            "post",
            OTP,
            &[("authorization", "Bearer x")],
            Some(GOOD_PIN),
        );
        let half = {
            let auth = bearer(&self.tokens.cheap);
            let mut raw = request(
                "POST",
                OTP,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("content-length", "100"),
                ],
                None,
            );
            raw.extend_from_slice(br#"{"pin":"82"#);
            raw
        };
        while self.running() && self.settings.churn_per_sec > 0.0 {
            tally.max_lag = tally.max_lag.max(pace(&mut next, interval));
            let mut client = Client::new(self.port);
            for _ in 0..=rng.below(3) {
                match rng.below(10) {
                    0 => {
                        run(&mut client, &K_BAD_HTTP, &bad_http, &mut tally, self.shared);
                        break;
                    }
                    1 => {
                        // Headers and part of the body, then the client goes away.
                        if let Ok(s) = client.stream() {
                            let _ = s.write_all(&half);
                        }
                        tally.abandoned_body += 1;
                        break;
                    }
                    _ => {
                        let (kind, raw) = self.cheap_request(&mut rng, &mut tally, &mut scratch);
                        run(&mut client, kind, &raw, &mut tally, self.shared);
                    }
                }
            }
            tally.connections += client.opened;
        }
        tally
            .overruns
            .push(("churn", Instant::now().saturating_duration_since(self.end)));
        tally
    }

    /// Sleeps 50 ms at a time and notes how much longer each sleep took.
    pub fn heartbeat(&self) -> Tally {
        let mut tally = Tally::default();
        let nap = Duration::from_millis(50);
        while self.running() {
            let t = Instant::now();
            thread::sleep(nap);
            let over = t.elapsed().saturating_sub(nap);
            tally.max_oversleep = tally.max_oversleep.max(over);
            if over > Duration::from_millis(250) {
                tally.stalls += 1;
            }
        }
        tally
    }

    /// One demo user, one thread: every attempt against the user's budget is followed by a valid
    /// create that resets it, so the throttle never answers.
    pub fn credential(&self, index: usize) -> Tally {
        let mut tally = Tally::default();
        let token = &self.tokens.demo[index];
        let auth = bearer(token);
        let a = Some(auth.as_str());
        let mut client = Client::new(self.port);
        let mut next = Instant::now() + self.settings.cycle.mul_f64(index as f64 / 2.0);
        // The codes used lately: a new code equal to one of them could match that older step,
        // already used, so it is not used (and not counted as fresh).
        let mut used: Vec<String> = Vec::new();
        let mut last_step = String::new();
        let mut uses = 0u64;
        let mut cycle = 0u64;
        let wrong_password_then_pin = r#"{"password":"wrong-horse","pin":"8299"}"#;
        let password = r#"{"password":"correct-horse-battery-staple"}"#;
        while self.running() {
            tally.max_lag = tally.max_lag.max(pace(&mut next, self.settings.cycle));
            cycle += 1;
            let (kind, body) = match cycle % 4 {
                0 => (&K_CREATE_PASSWORD, password),
                1 => (&K_CREATE_BOTH, wrong_password_then_pin),
                _ => (&K_CREATE_PIN, GOOD_PIN),
            };
            let created = run(
                &mut client,
                kind,
                &post_json(OTP, a, &[], body),
                &mut tally,
                self.shared,
            );
            if let Some((_, resp)) = created {
                let v: Value = serde_json::from_slice(&resp.body).unwrap();
                let code = v["otp"].as_str().unwrap().to_string();
                let step = v["expiresAt"].as_str().unwrap().to_string();
                if step != last_step {
                    last_step = step;
                    if used.contains(&code) {
                        tally.fresh_codes_skipped += 1;
                    } else {
                        uses += 1;
                        self.use_fresh_code(&mut client, &mut tally, &auth, &code, uses);
                        used.push(code);
                        if used.len() > 16 {
                            used.remove(0);
                        }
                    }
                }
            }
            run(
                &mut client,
                &K_CREATE_WRONG_PIN,
                &post_json(OTP, a, &[], r#"{"pin":"0000"}"#),
                &mut tally,
                self.shared,
            );
            if index == 1 && cycle % 4 == 2 {
                if let Some(t) = self.tokens.guesses.take() {
                    let raw = post_json(OTP, Some(&bearer(t)), &[], GOOD_PIN);
                    run(
                        &mut client,
                        &K_CREATE_UNKNOWN_USER,
                        &raw,
                        &mut tally,
                        self.shared,
                    );
                } else {
                    tally.pool_exhausted += 1;
                }
            }
            if index == 0
                && cycle % 6 == 3
                && self.unlinked_sent.fetch_add(1, Ordering::Relaxed) < UNLINKED_CAP
            {
                let raw = post_json(OTP, Some(&bearer(&self.tokens.unlinked)), &[], GOOD_PIN);
                run(
                    &mut client,
                    &K_CREATE_UNLINKED,
                    &raw,
                    &mut tally,
                    self.shared,
                );
            }
            if cycle % 8 == 5 {
                self.abandon_create(&auth, &mut tally);
            }
        }
        tally.connections += client.opened;
        tally.overruns.push((
            "credential",
            Instant::now().saturating_duration_since(self.end),
        ));
        tally
    }

    /// The `uses`-th fresh code of a demo user, used once on verify or a gate (in turn), then
    /// replayed on verify.
    fn use_fresh_code(
        &self,
        client: &mut Client,
        tally: &mut Tally,
        auth: &str,
        code: &str,
        uses: u64,
    ) {
        let a = Some(auth);
        let (kind, raw) = match uses % 4 {
            0 => (
                &K_VERIFY_FRESH,
                post_json(VERIFY, a, &[], &verify_body(code)),
            ),
            1 => (
                &K_GATE_PIN_FRESH,
                request(
                    "PUT",
                    GATE_PIN,
                    &[
                        ("authorization", auth),
                        ("content-type", "application/vnd.api+json"),
                    ],
                    Some(&pin_body(code)),
                ),
            ),
            2 => (
                &K_GATE_PAY_FRESH,
                post_json(GATE_PAY, a, &[], &pay_body(code)),
            ),
            _ => (
                &K_GATE_DELETE_FRESH,
                request(
                    "DELETE",
                    GATE_DELETE,
                    &[("authorization", auth), ("x-otp", code)],
                    None,
                ),
            ),
        };
        run(client, kind, &raw, tally, self.shared);
        run(
            client,
            &K_VERIFY_REPLAY,
            &post_json(VERIFY, a, &[], &verify_body(code)),
            tally,
            self.shared,
        );
    }

    /// A valid create whose client leaves while the callout is in flight.
    fn abandon_create(&self, auth: &str, tally: &mut Tally) {
        let mut gone = Client::new(self.port);
        if let Ok(s) = gone.stream() {
            let _ = s.write_all(&post_json(OTP, Some(auth), &[], GOOD_PIN));
            thread::sleep(Duration::from_millis(5));
        }
        tally.abandoned_in_callout += 1;
        tally.connections += gone.opened;
    }
}
