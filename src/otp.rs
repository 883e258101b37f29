//! One-time password maths: HOTP dynamic truncation (RFC 4226) over an HMAC chosen by config, with
//! a per-user key derived from the master key and a counter taken from the clock (RFC 6238).
//!
//! Validity: a code minted in time step `T` is accepted by verification while the current step is in
//! `T ..= T + lifetime/step - 1`, so it expires at the start of step `T + lifetime/step`. That instant
//! is `expiresAt`. A code therefore lives between `lifetime - step` and `lifetime` seconds.
//!
//! Key rotation: several master keys may be configured, each with an id. New codes use the active
//! key; verification accepts a code made with any configured key until that key is removed. Each
//! key multiplies the candidates a guess is compared with: one guess is accepted by chance with
//! probability `keys × lifetime/step / 10^digits` (1 key, 5 steps, 6 digits: 1 in 200,000).

use crate::secret::Secret;
use crate::timefmt::rfc3339_millis;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HmacAlgorithm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "SHA1" => Some(Self::Sha1),
            "SHA256" => Some(Self::Sha256),
            "SHA512" => Some(Self::Sha512),
            _ => None,
        }
    }

    pub fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        // HOTP/TOTP (RFC 4226, 6238) are defined over HMAC-SHA-1 too; ring names it "legacy use".
        let algorithm = match self {
            Self::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => ring::hmac::HMAC_SHA256,
            Self::Sha512 => ring::hmac::HMAC_SHA512,
        };
        ring::hmac::sign(&ring::hmac::Key::new(algorithm, key), message)
            .as_ref()
            .to_vec()
    }
}

/// The OTP settings the filter runs with (validated by `config`).
pub struct OtpSettings {
    pub digits: u32,
    pub algorithm: HmacAlgorithm,
    pub step_seconds: u64,
    pub lifetime_seconds: u64,
    /// Master keys by id; never empty once validated.
    pub keys: Vec<MasterKey>,
    /// Index into `keys` of the key new codes are made with.
    pub active: usize,
    /// The scope a token needs for the verify route.
    pub verify_scope: String,
}

pub struct MasterKey {
    pub id: String,
    pub key: Secret,
}

impl OtpSettings {
    fn windows(&self) -> u64 {
        (self.lifetime_seconds / self.step_seconds.max(1)).max(1)
    }
}

/// RFC 4226 §5.3: HMAC over the 8-byte big-endian counter, dynamic truncation, modulo 10^digits.
/// Returns `None` only if the HMAC came back short, which the algorithms above never do.
pub fn hotp(algorithm: HmacAlgorithm, key: &[u8], counter: u64, digits: u32) -> Option<u32> {
    let mac = algorithm.hmac(key, &counter.to_be_bytes());
    let offset = usize::from(mac.last()? & 0x0f);
    let window = mac.get(offset..offset + 4)?;
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(window);
    let truncated = u32::from_be_bytes(bytes) & 0x7fff_ffff;
    // 10 digits exceed 31 bits, so the modulus is taken in u64.
    Some((u64::from(truncated) % 10u64.pow(digits)) as u32)
}

/// Zero-padded decimal, as every authenticator app shows it.
pub fn format_code(value: u32, digits: u32) -> String {
    format!("{value:0width$}", width = digits as usize)
}

/// `K_user = HMAC(master, user id)`: a code for one user says nothing about another's.
pub fn user_key(algorithm: HmacAlgorithm, master: &Secret, user_id: &str) -> Secret {
    Secret::from_bytes(algorithm.hmac(master.expose(), user_id.as_bytes()))
}

/// A freshly minted code and the instant verification starts refusing it.
pub struct Minted {
    pub code: Secret,
    pub expires_at_ms: u64,
}

impl Minted {
    pub fn expires_at(&self) -> String {
        rfc3339_millis(self.expires_at_ms)
    }
}

pub fn mint(settings: &OtpSettings, user_id: &str, now_ms: u64) -> Option<Minted> {
    let step = settings.step_seconds.max(1);
    let counter = now_ms / 1000 / step;
    let master = settings.keys.get(settings.active)?;
    let key = user_key(settings.algorithm, &master.key, user_id);
    let value = hotp(settings.algorithm, key.expose(), counter, settings.digits)?;
    let expires_at_ms = expiry_ms(settings, counter)?;
    Some(Minted {
        code: Secret::new(format_code(value, settings.digits)),
        expires_at_ms,
    })
}

fn expiry_ms(settings: &OtpSettings, counter: u64) -> Option<u64> {
    (counter.checked_add(settings.windows())?)
        .checked_mul(settings.step_seconds.max(1))?
        .checked_mul(1000)
}

/// Which key and time step a verified code was made with: together with the user they identify
/// the code for the single-use ledger.
#[derive(Debug, PartialEq, Eq)]
pub struct Match {
    pub key_id: String,
    pub counter: u64,
    pub expires_at_ms: u64,
}

/// Checks `code` against every configured key and every step still accepted now. Every candidate
/// is computed and compared in constant time, so the time taken says nothing about which (if any)
/// matched.
pub fn verify(settings: &OtpSettings, user_id: &str, code: &str, now_ms: u64) -> Option<Match> {
    if code.len() != settings.digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = settings.step_seconds.max(1);
    let now_counter = now_ms / 1000 / step;
    let oldest = now_counter.saturating_sub(settings.windows() - 1);
    let mut found = None;
    for master in &settings.keys {
        let key = user_key(settings.algorithm, &master.key, user_id);
        for counter in oldest..=now_counter {
            let candidate = hotp(settings.algorithm, key.expose(), counter, settings.digits)
                .map(|v| format_code(v, settings.digits));
            let equal = candidate.is_some_and(|c| Secret::new(c).ct_eq(code.as_bytes()));
            if equal && found.is_none() {
                found = Some((master.id.clone(), counter));
            }
        }
    }
    let (key_id, counter) = found?;
    Some(Match {
        key_id,
        counter,
        expires_at_ms: expiry_ms(settings, counter)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4226_appendix_d() {
        let key = b"12345678901234567890";
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, want) in expected.iter().enumerate() {
            assert_eq!(
                hotp(HmacAlgorithm::Sha1, key, counter as u64, 6),
                Some(*want),
                "counter {counter}"
            );
        }
    }

    #[test]
    fn rfc6238_appendix_b_with_the_corrected_key_lengths() {
        let seed = b"1234567890".repeat(7);
        let cases: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (time, sha1, sha256, sha512) in cases {
            let counter = time / 30;
            for (alg, key_len, want) in [
                (HmacAlgorithm::Sha1, 20, sha1),
                (HmacAlgorithm::Sha256, 32, sha256),
                (HmacAlgorithm::Sha512, 64, sha512),
            ] {
                let key = &seed[..key_len];
                let got = hotp(alg, key, counter, 8).map(|v| format_code(v, 8));
                assert_eq!(got.as_deref(), Some(want), "{alg:?} at {time}");
            }
        }
    }

    fn settings(step: u64, lifetime: u64) -> OtpSettings {
        OtpSettings {
            digits: 6,
            algorithm: HmacAlgorithm::Sha256,
            step_seconds: step,
            lifetime_seconds: lifetime,
            keys: vec![MasterKey {
                id: "k1".into(),
                key: Secret::from_bytes(vec![7; 32]),
            }],
            active: 0,
            verify_scope: "user:otp:verify".into(),
        }
    }

    #[test]
    fn verification_accepts_the_lifetime_and_nothing_else() {
        let s = settings(60, 300);
        let minted = mint(&s, "demo-user", 1_800_000_012_345).unwrap();
        let code = minted.code.expose_str().to_string();
        let at = |ms| verify(&s, "demo-user", &code, ms);
        let m = at(1_800_000_012_345).expect("valid at once");
        assert_eq!(
            (m.key_id.as_str(), m.counter, m.expires_at_ms),
            ("k1", 30_000_000, minted.expires_at_ms)
        );
        assert!(
            at(minted.expires_at_ms - 1).is_some(),
            "valid until expiresAt"
        );
        assert!(
            at(minted.expires_at_ms).is_none(),
            "refused from expiresAt on"
        );
        assert!(verify(&s, "other-user", &code, 1_800_000_012_345).is_none());
        assert!(
            verify(&s, "demo-user", "12345", 1_800_000_012_345).is_none(),
            "wrong length"
        );
        assert!(verify(&s, "demo-user", "12345a", 1_800_000_012_345).is_none());
        assert!(verify(&s, "demo-user", &format!("{code} "), 1_800_000_012_345).is_none());
    }

    #[test]
    fn rotation_keeps_old_codes_valid_until_their_key_is_removed() {
        let mut s = settings(60, 300);
        let old = mint(&s, "u", 1_800_000_000_000).unwrap();
        s.keys.insert(
            0,
            MasterKey {
                id: "k2".into(),
                key: Secret::from_bytes(vec![9; 32]),
            },
        );
        s.active = 0;
        let new = mint(&s, "u", 1_800_000_000_000).unwrap();
        assert_ne!(old.code.expose(), new.code.expose());
        assert_eq!(
            verify(&s, "u", new.code.expose_str(), 1_800_000_000_000)
                .unwrap()
                .key_id,
            "k2"
        );
        assert_eq!(
            verify(&s, "u", old.code.expose_str(), 1_800_000_000_000)
                .unwrap()
                .key_id,
            "k1"
        );
        s.keys.retain(|k| k.id == "k2");
        assert!(verify(&s, "u", old.code.expose_str(), 1_800_000_000_000).is_none());
    }

    #[test]
    fn codes_are_bound_to_the_time_step_and_the_user() {
        let s = settings(60, 300);
        let at = |ms| mint(&s, "demo-user", ms).map(|m| m.code.expose().to_vec());
        // 1_800_000_000_000 ms is a multiple of 60 s: the same step until 59.999 s later.
        assert_eq!(at(1_800_000_000_000), at(1_800_000_059_999));
        assert_ne!(at(1_800_000_000_000), at(1_800_000_060_000));
        let other = mint(&s, "unlinked-user", 1_800_000_000_000).map(|m| m.code.expose().to_vec());
        assert_ne!(at(1_800_000_000_000), other);
    }

    #[test]
    fn expiry_is_the_end_of_the_last_accepted_step() {
        let s = settings(60, 300);
        let minted = mint(&s, "demo-user", 1_800_000_012_345).expect("mint");
        assert_eq!(minted.expires_at_ms, 1_800_000_300_000);
        assert_eq!(minted.expires_at(), "2027-01-15T08:05:00.000Z");
        assert_eq!(minted.code.expose().len(), 6);
        assert!(minted.code.expose().iter().all(u8::is_ascii_digit));
    }

    #[test]
    fn ten_digit_codes_do_not_overflow() {
        let value = hotp(HmacAlgorithm::Sha512, &[1; 64], u64::MAX, 10);
        assert!(value.is_some());
        assert_eq!(format_code(42, 10), "0000000042");
    }
}
