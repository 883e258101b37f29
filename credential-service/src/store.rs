//! The user store and the verdict logic.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

use crate::lockout::{Lockout, LockoutPolicy};
use crate::protocol::{Kind, Verdict, VerifyRequest};

// The user store is embedded so `make run` needs no files; the PHC strings were made with
// `credential-service hash` (argon2id, default parameters, random salt). The demo secrets
// are `correct-horse-battery-staple` (password) and `8299` (PIN) for both users.
const DEMO_USER_PASSWORD: &str = "$argon2id$v=19$m=19456,t=2,p=1$A1vqe63I1wk/Z09KXCuRlw$2HmhdzEKceQWBp1hVMaah+i0fWQrVvulXBJmSzfjOTU";
const DEMO_USER_PIN: &str = "$argon2id$v=19$m=19456,t=2,p=1$qtpd0bdFIhS4YgL6joby4g$pYUpZQQZvxet5ehZRqAUfkgAUsW+JzT5c3D1k9xxC8Y";
const UNLINKED_USER_PASSWORD: &str = "$argon2id$v=19$m=19456,t=2,p=1$KqQyy4f29KKUMuiLQ2ebng$T5rcnNtTdg7COLG6GzfT1kPhRs3eO4sPBaypFeQJJkU";
const UNLINKED_USER_PIN: &str = "$argon2id$v=19$m=19456,t=2,p=1$oJjjsVpi4qgRzaIKTj1oBQ$62IxO+Zhw+z01aBy8Iy6JtB50LU62MLmd882QwJIRUc";
/// Hash of a random value nobody knows, with the same parameters as the real ones: verified
/// against for unknown users (and missing secrets) so timing does not reveal who exists.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$zvsTla6jhrZZw6Ud0ZcueQ$18ZN/m9HvD/rsmKAouKtunAqBBpSHk2+u3qCFfab54Q";

/// One user of the store.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    /// argon2 PHC string of the password, if the user has one.
    pub password_phc: Option<String>,
    /// argon2 PHC string of the PIN, if the user has one.
    pub pin_phc: Option<String>,
    /// The identity this account is linked to; `None` answers `missing-linked-identity`.
    pub linked_identity: Option<String>,
}

impl UserRecord {
    fn phc(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Password => self.password_phc.as_deref(),
            Kind::Pin => self.pin_phc.as_deref(),
        }
    }
}

/// The users built into the binary.
pub fn embedded_users() -> Vec<UserRecord> {
    vec![
        UserRecord {
            id: "demo-user".into(),
            password_phc: Some(DEMO_USER_PASSWORD.into()),
            pin_phc: Some(DEMO_USER_PIN.into()),
            linked_identity: Some("pace-identity:demo-user".into()),
        },
        // A second linked user with the same secrets, to show codes differ per user.
        UserRecord {
            id: "demo-user-2".into(),
            password_phc: Some(DEMO_USER_PASSWORD.into()),
            pin_phc: Some(DEMO_USER_PIN.into()),
            linked_identity: Some("pace-identity:demo-user-2".into()),
        },
        UserRecord {
            id: "unlinked-user".into(),
            password_phc: Some(UNLINKED_USER_PASSWORD.into()),
            pin_phc: Some(UNLINKED_USER_PIN.into()),
            linked_identity: None,
        },
    ]
}

/// Where the store reads the time from; injectable for tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

pub struct Store {
    users: HashMap<String, UserRecord>,
    dummy_phc: String,
    argon2: Argon2<'static>,
    lockout: Lockout,
    clock: Clock,
}

impl Store {
    /// Builds a store; every PHC string must parse.
    pub fn new(
        users: Vec<UserRecord>,
        dummy_phc: String,
        policy: LockoutPolicy,
        clock: Clock,
    ) -> Result<Self, String> {
        PasswordHash::new(&dummy_phc).map_err(|e| format!("dummy hash: {e}"))?;
        let mut map = HashMap::new();
        for user in users {
            for (kind, phc) in [
                (Kind::Password, &user.password_phc),
                (Kind::Pin, &user.pin_phc),
            ] {
                if let Some(phc) = phc {
                    PasswordHash::new(phc)
                        .map_err(|e| format!("user {:?} {}: {e}", user.id, kind.as_str()))?;
                }
            }
            if map.contains_key(&user.id) {
                return Err(format!("duplicate user {:?}", user.id));
            }
            map.insert(user.id.clone(), user);
        }
        Ok(Store {
            users: map,
            dummy_phc,
            argon2: Argon2::default(),
            lockout: Lockout::new(policy),
            clock,
        })
    }

    /// The embedded store with the real clock.
    pub fn embedded(policy: LockoutPolicy) -> Result<Self, String> {
        Store::new(
            embedded_users(),
            DUMMY_HASH.to_owned(),
            policy,
            Arc::new(Instant::now),
        )
    }

    #[cfg(test)]
    pub fn lockout(&self) -> &Lockout {
        &self.lockout
    }

    fn verify(&self, phc: &str, secret: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(hash) => self
                .argon2
                .verify_password(secret.as_bytes(), &hash)
                .is_ok(),
            // Checked in `new`; unreachable in practice, and never a match.
            Err(_) => false,
        }
    }

    /// Spends the same work as a real check, for answers that must not be faster.
    fn burn(&self, secret: &str) {
        black_box(self.verify(&self.dummy_phc, secret));
    }

    /// Answers a verify request. Order: user exists → locked → linked identity → secret.
    pub fn check(&self, req: &VerifyRequest) -> Verdict {
        let Some(user) = self.users.get(&req.user) else {
            self.burn(&req.secret);
            return Verdict::UnknownUser;
        };
        if let Some(retry_after_seconds) = self.lockout.locked(&user.id, (self.clock)()) {
            return Verdict::Locked {
                retry_after_seconds,
            };
        }
        if user.linked_identity.is_none() {
            return Verdict::MissingLinkedIdentity;
        }
        // Reserve the attempt (counted as a failure until proven otherwise) before hashing.
        let attempt = match self.lockout.begin(&user.id, (self.clock)()) {
            Ok(attempt) => attempt,
            Err(retry_after_seconds) => {
                return Verdict::Locked {
                    retry_after_seconds,
                }
            }
        };
        let valid = match user.phc(req.kind) {
            Some(phc) => self.verify(phc, &req.secret),
            None => {
                self.burn(&req.secret);
                false
            }
        };
        self.lockout.finish(attempt, valid, (self.clock)());
        if valid {
            Verdict::Valid
        } else {
            Verdict::Invalid
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    use argon2::{Algorithm, Params, Version};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Tiny argon2 parameters: debug-build argon2 at the real parameters takes seconds.
    pub(crate) fn cheap_hash(secret: &str) -> String {
        let params = Params::new(8, 1, 1, None).unwrap();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        argon2
            .hash_password(secret.as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string()
    }

    /// A manually advanced clock.
    #[derive(Clone)]
    pub(crate) struct TestClock(Arc<Mutex<Instant>>);

    impl TestClock {
        pub(crate) fn new() -> Self {
            TestClock(Arc::new(Mutex::new(Instant::now())))
        }
        pub(crate) fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
        pub(crate) fn clock(&self) -> Clock {
            let inner = self.0.clone();
            Arc::new(move || *inner.lock().unwrap())
        }
    }

    /// Same shape as the embedded store, with cheap hashes.
    pub(crate) fn test_store(max_failures: u32, lockout_secs: u64, clock: &TestClock) -> Store {
        let users = vec![
            UserRecord {
                id: "demo-user".into(),
                password_phc: Some(cheap_hash("correct-horse-battery-staple")),
                pin_phc: Some(cheap_hash("8299")),
                linked_identity: Some("pace-identity:demo-user".into()),
            },
            UserRecord {
                id: "unlinked-user".into(),
                password_phc: Some(cheap_hash("correct-horse-battery-staple")),
                pin_phc: Some(cheap_hash("8299")),
                linked_identity: None,
            },
            UserRecord {
                id: "no-pin-user".into(),
                password_phc: Some(cheap_hash("pw")),
                pin_phc: None,
                linked_identity: Some("x".into()),
            },
        ];
        Store::new(
            users,
            cheap_hash("dummy"),
            LockoutPolicy {
                max_failures,
                lockout: Duration::from_secs(lockout_secs),
            },
            clock.clock(),
        )
        .unwrap()
    }

    fn req(user: &str, kind: Kind, secret: &str) -> VerifyRequest {
        VerifyRequest {
            user: user.into(),
            kind,
            secret: secret.into(),
        }
    }

    #[test]
    fn answers_each_result() {
        let clock = TestClock::new();
        let store = test_store(2, 300, &clock);
        let pw = "correct-horse-battery-staple";
        assert_eq!(
            store.check(&req("demo-user", Kind::Password, pw)),
            Verdict::Valid
        );
        assert_eq!(
            store.check(&req("demo-user", Kind::Pin, "8299")),
            Verdict::Valid
        );
        assert_eq!(
            store.check(&req("demo-user", Kind::Pin, "0000")),
            Verdict::Invalid
        );
        assert_eq!(
            store.check(&req("no-pin-user", Kind::Pin, "pw")),
            Verdict::Invalid
        );
        assert_eq!(
            store.check(&req("nobody", Kind::Password, pw)),
            Verdict::UnknownUser
        );
        assert_eq!(
            store.check(&req("unlinked-user", Kind::Password, pw)),
            Verdict::MissingLinkedIdentity
        );
        // Missing linked identity is answered without checking (or counting) the secret.
        assert_eq!(
            store.check(&req("unlinked-user", Kind::Pin, "wrong")),
            Verdict::MissingLinkedIdentity
        );
        assert_eq!(store.lockout().failures("unlinked-user"), 0);
        // Second consecutive failure (password and PIN both count) locks demo-user.
        assert_eq!(
            store.check(&req("demo-user", Kind::Password, "x")),
            Verdict::Invalid
        );
        let locked = Verdict::Locked {
            retry_after_seconds: 300,
        };
        // Locked is answered without checking the secret: even the right one.
        assert_eq!(store.check(&req("demo-user", Kind::Password, pw)), locked);
        clock.advance(Duration::from_secs(299));
        assert_eq!(
            store.check(&req("demo-user", Kind::Pin, "8299")),
            Verdict::Locked {
                retry_after_seconds: 1
            }
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            store.check(&req("demo-user", Kind::Pin, "8299")),
            Verdict::Valid
        );
    }

    #[test]
    fn valid_answer_resets_failures() {
        let clock = TestClock::new();
        let store = test_store(3, 60, &clock);
        assert_eq!(
            store.check(&req("demo-user", Kind::Pin, "1")),
            Verdict::Invalid
        );
        assert_eq!(
            store.check(&req("demo-user", Kind::Pin, "2")),
            Verdict::Invalid
        );
        assert_eq!(store.lockout().failures("demo-user"), 2);
        assert_eq!(
            store.check(&req("demo-user", Kind::Pin, "8299")),
            Verdict::Valid
        );
        assert_eq!(store.lockout().failures("demo-user"), 0);
    }

    /// The embedded PHC strings really are the documented secrets. Four argon2
    /// verifications at the real parameters: the slow part of the suite in debug builds.
    #[test]
    fn embedded_hashes_match_documented_secrets() {
        let store = Store::embedded(LockoutPolicy {
            max_failures: 10,
            lockout: Duration::from_secs(300),
        })
        .unwrap();
        let pw = "correct-horse-battery-staple";
        for (phc, secret) in [
            (DEMO_USER_PASSWORD, pw),
            (DEMO_USER_PIN, "8299"),
            (UNLINKED_USER_PASSWORD, pw),
            (UNLINKED_USER_PIN, "8299"),
        ] {
            assert!(store.verify(phc, secret), "{phc}");
        }
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let real = PasswordHash::new(DEMO_USER_PASSWORD).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.params, real.params);
    }
}
