//! `credential-service users …`: the operator's commands, and the demo users.

use std::io::{BufRead, Write};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cli::{SecretSource, UsersArgs, UsersCommand};
use crate::hasher::{default_params, Hasher, Peppers, StoredHash};
use crate::metrics::Metrics;
use crate::pin_rule::check_pin;
use crate::protocol::Kind;
use crate::store::Store;

/// Demo users, all with [`DEMO_PASSWORD`] and [`DEMO_PIN`]: two linked, one not.
pub const DEMO_USERS: [(&str, Option<&str>); 3] = [
    ("demo-user", Some("pace-identity:demo-user")),
    ("demo-user-2", Some("pace-identity:demo-user-2")),
    ("unlinked-user", None),
];
pub const DEMO_PASSWORD: &str = "correct-horse-battery-staple";
pub const DEMO_PIN: &str = "8299";

/// Shortest password accepted (NIST SP 800-63B: at least 8 characters).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest secret accepted: the verify body is at most 8 KiB anyway.
pub const MAX_SECRET_BYTES: usize = 1024;

/// Inserts the demo users that are absent, hashed with the active pepper. Idempotent.
pub async fn seed_demo_users(store: &Store, hasher: &Hasher) -> Result<usize, String> {
    let ids: Vec<&str> = DEMO_USERS.iter().map(|(id, _)| *id).collect();
    let present = store
        .existing(&ids)
        .await
        .map_err(|e| format!("store: {e}"))?;
    let mut added = 0;
    for (id, linked) in DEMO_USERS {
        if present.iter().any(|p| p == id) {
            continue;
        }
        let password = hasher
            .hash(Zeroizing::new(DEMO_PASSWORD.to_owned()))
            .await?;
        let pin = hasher.hash(Zeroizing::new(DEMO_PIN.to_owned())).await?;
        if store
            .add_user(id, linked, Some(&password), Some(&pin))
            .await
            .map_err(|e| format!("store: {e}"))?
        {
            added += 1;
        }
    }
    Ok(added)
}

pub fn check_user_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        Err("a user id is 1 to 256 bytes without control characters".into())
    } else {
        Ok(())
    }
}

/// Reads secrets: one stdin line per `stdin` request (in order), or named variables.
struct Secrets<R> {
    stdin: R,
}

impl<R: BufRead> Secrets<R> {
    fn read(
        &mut self,
        from_stdin: bool,
        env: Option<&str>,
    ) -> Result<Option<Zeroizing<String>>, String> {
        if from_stdin {
            let mut line = Zeroizing::new(String::new());
            self.stdin
                .read_line(&mut line)
                .map_err(|e| format!("reading stdin: {e}"))?;
            let trimmed = line.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err("empty secret on stdin".into());
            }
            return Ok(Some(Zeroizing::new(trimmed.to_owned())));
        }
        match env {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(Zeroizing::new(v))),
                _ => Err(format!("environment variable {var} is unset or empty")),
            },
            None => Ok(None),
        }
    }
}

/// Checks a new secret against the rules. Messages never quote the secret.
pub fn check_secret(kind: Kind, secret: &str) -> Result<(), String> {
    if secret.len() > MAX_SECRET_BYTES {
        return Err(format!("a secret is at most {MAX_SECRET_BYTES} bytes"));
    }
    match kind {
        Kind::Pin => check_pin(secret).map_err(|p| p.to_string()),
        Kind::Password if secret.chars().count() < MIN_PASSWORD_CHARS => Err(format!(
            "a password has at least {MIN_PASSWORD_CHARS} characters"
        )),
        Kind::Password => Ok(()),
    }
}

async fn hashed(
    hasher: &Hasher,
    kind: Kind,
    secret: Option<Zeroizing<String>>,
) -> Result<Option<StoredHash>, String> {
    match secret {
        Some(s) => {
            check_secret(kind, &s)?;
            hasher.hash(s).await.map(Some)
        }
        None => Ok(None),
    }
}

fn found(ok: Result<bool, sqlx::Error>, id: &str) -> Result<(), String> {
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("no user {id:?}")),
        Err(e) => Err(format!("store: {e}")),
    }
}

/// Runs one `users` command; what it prints goes to `out`.
pub async fn run(
    args: UsersArgs,
    peppers: Peppers,
    stdin: impl BufRead,
    out: &mut impl Write,
) -> Result<(), String> {
    let store = Store::connect(&args.db.database_url, args.db.db_max_connections).await?;
    let hasher = Hasher::new(peppers, default_params(), 2, Arc::new(Metrics::new()))?;
    let mut secrets = Secrets { stdin };
    let say =
        |out: &mut dyn Write, line: String| writeln!(out, "{line}").map_err(|e| e.to_string());
    match args.command {
        UsersCommand::Add {
            id,
            linked_identity,
            password_stdin,
            password_from_env,
            pin_stdin,
            pin_from_env,
        } => {
            check_user_id(&id)?;
            let password = secrets.read(password_stdin, password_from_env.as_deref())?;
            let pin = secrets.read(pin_stdin, pin_from_env.as_deref())?;
            let password = hashed(&hasher, Kind::Password, password).await?;
            let pin = hashed(&hasher, Kind::Pin, pin).await?;
            let added = store
                .add_user(
                    &id,
                    linked_identity.as_deref(),
                    password.as_ref(),
                    pin.as_ref(),
                )
                .await
                .map_err(|e| format!("store: {e}"))?;
            if !added {
                return Err(format!("user {id:?} exists"));
            }
            say(out, format!("added {id}"))
        }
        UsersCommand::SetPassword { id, source } => {
            set(
                &store,
                &hasher,
                &mut secrets,
                &id,
                Kind::Password,
                &source,
                out,
            )
            .await
        }
        UsersCommand::SetPin { id, source } => {
            set(&store, &hasher, &mut secrets, &id, Kind::Pin, &source, out).await
        }
        UsersCommand::Link { id, identity } => {
            found(store.set_linked_identity(&id, Some(&identity)).await, &id)?;
            say(out, format!("linked {id}"))
        }
        UsersCommand::Unlink { id } => {
            found(store.set_linked_identity(&id, None).await, &id)?;
            say(out, format!("unlinked {id}"))
        }
        UsersCommand::Unlock { id } => {
            // Budgets exist for ids that are not users too (wrong one-time codes).
            store.unlock(&id).await.map_err(|e| format!("store: {e}"))?;
            say(out, format!("unlocked {id}"))
        }
        UsersCommand::Delete { id } => {
            found(store.delete_user(&id).await, &id)?;
            say(out, format!("deleted {id}"))
        }
        UsersCommand::List => {
            let now = crate::store::now_ms();
            say(
                out,
                "id\tlinked_identity\tpassword\tpin\tfailures\tlock".to_owned(),
            )?;
            for u in store
                .list_users()
                .await
                .map_err(|e| format!("store: {e}"))?
            {
                let secret = |s: &Option<Option<String>>| match s {
                    None => "-".to_owned(),
                    Some(None) => "set(no-pepper)".to_owned(),
                    Some(Some(p)) => format!("set(pepper={p})"),
                };
                let lock = if u.hard_locked {
                    "hard".to_owned()
                } else if u.locked_until_ms > now {
                    format!(
                        "{}s",
                        crate::store::lockout::retry_after(u.locked_until_ms, now)
                    )
                } else {
                    "-".to_owned()
                };
                say(
                    out,
                    format!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        u.id,
                        u.linked_identity.as_deref().unwrap_or("-"),
                        secret(&u.password),
                        secret(&u.pin),
                        u.failures,
                        lock
                    ),
                )?;
            }
            Ok(())
        }
    }
}

async fn set<R: BufRead>(
    store: &Store,
    hasher: &Hasher,
    secrets: &mut Secrets<R>,
    id: &str,
    kind: Kind,
    source: &SecretSource,
    out: &mut impl Write,
) -> Result<(), String> {
    let secret = secrets
        .read(source.stdin, source.from_env.as_deref())?
        .ok_or_else(|| "no secret given".to_owned())?;
    let hash = hashed(hasher, kind, Some(secret))
        .await?
        .ok_or_else(|| "no secret given".to_owned())?;
    found(store.set_secret(id, kind, &hash).await, id)?;
    writeln!(out, "set {} for {id}", kind.as_str()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rules() {
        assert!(check_secret(Kind::Pin, "8299").is_ok());
        for bad in ["1234", "1111", "1121", "829", "82990"] {
            let e = check_secret(Kind::Pin, bad).unwrap_err();
            assert!(!e.contains(bad), "{e}");
        }
        assert!(check_secret(Kind::Password, "correct-horse-battery-staple").is_ok());
        assert!(check_secret(Kind::Password, "short").is_err());
        assert!(check_secret(Kind::Password, &"x".repeat(MAX_SECRET_BYTES + 1)).is_err());
        assert!(check_user_id("demo-user").is_ok());
        assert!(check_user_id("").is_err());
        assert!(check_user_id("a\nb").is_err());
    }
}
