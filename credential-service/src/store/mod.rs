//! The persistent store: users, the per-user failure budget and the used one-time codes.
//!
//! **One code path for both engines.** Every query goes through sqlx's runtime query API on
//! its `Any` driver, and the URL picks the engine: `sqlite://path` (the default, a file created
//! if missing) or `postgres://…` (several replicas share users and counters). Why `Any` rather
//! than code generic over `sqlx::Database`:
//! - the queries are plain strings with `$n` parameters, which SQLite and PostgreSQL both
//!   read, over only TEXT and BIGINT columns, which `Any` maps without loss; the atomic steps are
//!   single `INSERT … ON CONFLICT … RETURNING` / `UPDATE … RETURNING` statements, which both
//!   engines have (SQLite since 3.35; sqlx bundles a newer one);
//! - generic code would need a wall of `for<'q> Encode<'q, DB> + Type<DB>` bounds on every
//!   function and would be compiled twice; `Any` is one pool type, chosen at run time;
//! - what `Any` costs (arguments boxed into an enum per query) is noise next to one argon2.
//!
//! The schema is one migration file (`migrations/`) for both, applied at start with sqlx's
//! migrator (which takes PostgreSQL's advisory lock, so replicas starting together are safe).

pub mod codes;
pub mod lockout;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, Row};

use crate::hasher::StoredHash;
use crate::protocol::Kind;

/// The migrations, embedded in the binary; same SQL for both engines.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "users attempts codes",
    include_str!("../../migrations/0001_users_attempts_codes.sql"),
)];

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>>
    {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Unix time in milliseconds (0 for a clock before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn of(url: &str) -> Result<Engine, String> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else {
            Err("--database-url: sqlite://PATH or postgres://… expected".to_owned())
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// A user as the verify path needs it, with the user's lock state.
#[derive(Debug, Clone)]
pub struct UserForCheck {
    pub linked_identity: Option<String>,
    pub password: Option<StoredHash>,
    pub pin: Option<StoredHash>,
    /// `Some((locked_until_ms, hard_locked))` if the user has a budget row.
    pub lock: Option<(i64, bool)>,
}

impl UserForCheck {
    pub fn secret(&self, kind: Kind) -> Option<StoredHash> {
        match kind {
            Kind::Password => self.password.clone(),
            Kind::Pin => self.pin.clone(),
        }
    }
}

/// One line of `users list`. No secret, only whether there is one and its pepper id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserListing {
    pub id: String,
    pub linked_identity: Option<String>,
    pub password: Option<Option<String>>,
    pub pin: Option<Option<String>>,
    pub failures: i64,
    pub locked_until_ms: i64,
    pub hard_locked: bool,
}

fn stored(phc: Option<String>, pepper: Option<String>) -> Option<StoredHash> {
    phc.map(|phc| StoredHash {
        phc,
        pepper_id: pepper,
    })
}

/// The store; cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
}

/// The database's own error text can quote values (a user id, never a secret: secrets reach
/// the store only as hashes), so it stays in logs and out of answers.
pub type StoreResult<T> = Result<T, sqlx::Error>;

fn kind_columns(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Password => ("password_phc", "password_pepper"),
        Kind::Pin => ("pin_phc", "pin_pepper"),
    }
}

impl Store {
    /// Connects (creating a SQLite file if missing), and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, String> {
        let engine = Engine::of(url)?;
        sqlx::any::install_default_drivers();
        let url = match engine {
            // `mode=rwc`: create the file if it is missing.
            Engine::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options: AnyConnectOptions = url.parse().map_err(|e| format!("--database-url: {e}"))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        // WAL: readers never wait for the writer; writers queue on the busy
                        // timeout (sqlx sets 5 s) instead of failing with SQLITE_BUSY.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| format!("cannot open the {} store: {e}", engine.as_str()))?;
        let migrator = Migrator::new(Embedded)
            .await
            .map_err(|e| format!("migrations: {e}"))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| format!("migrations: {e}"))?;
        Ok(Store { pool, engine })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether the store answers a query (for `/readyz`).
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT COUNT(*) FROM users WHERE id = $1")
            .bind("")
            .fetch_one(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The user and its lock state, in one query.
    pub async fn user_for_check(&self, id: &str) -> StoreResult<Option<UserForCheck>> {
        let row = sqlx::query(
            "SELECT u.linked_identity, u.password_phc, u.password_pepper, u.pin_phc, \
             u.pin_pepper, a.locked_until_ms, a.hard_locked \
             FROM users u LEFT JOIN attempts a ON a.user_id = u.id WHERE u.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let until: Option<i64> = row.try_get(5)?;
        let hard: Option<i64> = row.try_get(6)?;
        Ok(Some(UserForCheck {
            linked_identity: row.try_get(0)?,
            password: stored(row.try_get(1)?, row.try_get(2)?),
            pin: stored(row.try_get(3)?, row.try_get(4)?),
            lock: until.map(|u| (u, hard.unwrap_or(0) != 0)),
        }))
    }

    /// Adds a user; `false` if the id is taken.
    pub async fn add_user(
        &self,
        id: &str,
        linked_identity: Option<&str>,
        password: Option<&StoredHash>,
        pin: Option<&StoredHash>,
    ) -> StoreResult<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "INSERT INTO users (id, linked_identity, password_phc, password_pepper, pin_phc, \
             pin_pepper, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(linked_identity)
        .bind(password.map(|h| h.phc.as_str()))
        .bind(password.and_then(|h| h.pepper_id.as_deref()))
        .bind(pin.map(|h| h.phc.as_str()))
        .bind(pin.and_then(|h| h.pepper_id.as_deref()))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Which of `ids` exist.
    pub async fn existing(&self, ids: &[&str]) -> StoreResult<Vec<String>> {
        let mut found = Vec::new();
        for id in ids {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE id = $1")
                .bind(*id)
                .fetch_one(&self.pool)
                .await?;
            if n > 0 {
                found.push((*id).to_owned());
            }
        }
        Ok(found)
    }

    /// Sets a secret; `false` if there is no such user. A new password also lifts every lock
    /// of the user, the hard lock included (docs/credential-service.md).
    pub async fn set_secret(&self, id: &str, kind: Kind, hash: &StoredHash) -> StoreResult<bool> {
        let (phc, pepper) = kind_columns(kind);
        let done = sqlx::query(&format!(
            "UPDATE users SET {phc} = $2, {pepper} = $3, updated_ms = $4 WHERE id = $1"
        ))
        .bind(id)
        .bind(hash.phc.as_str())
        .bind(hash.pepper_id.as_deref())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let found = done.rows_affected() == 1;
        if found && kind == Kind::Password {
            self.unlock(id).await?;
        }
        Ok(found)
    }

    /// Replaces a hash that just verified with a new one, unless it changed meanwhile (a
    /// `set-password` must win over a rehash). `true` if replaced.
    pub async fn replace_hash(
        &self,
        id: &str,
        kind: Kind,
        old_phc: &str,
        new: &StoredHash,
    ) -> StoreResult<bool> {
        let (phc, pepper) = kind_columns(kind);
        let done = sqlx::query(&format!(
            "UPDATE users SET {phc} = $3, {pepper} = $4 WHERE id = $1 AND {phc} = $2"
        ))
        .bind(id)
        .bind(old_phc)
        .bind(new.phc.as_str())
        .bind(new.pepper_id.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets or clears the linked identity; `false` if there is no such user.
    pub async fn set_linked_identity(&self, id: &str, identity: Option<&str>) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE users SET linked_identity = $2, updated_ms = $3 WHERE id = $1")
                .bind(id)
                .bind(identity)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a user and its budget row; `false` if there was no such user.
    pub async fn delete_user(&self, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM attempts WHERE user_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every user, by id, with the budget state.
    pub async fn list_users(&self) -> StoreResult<Vec<UserListing>> {
        let rows = sqlx::query(
            "SELECT u.id, u.linked_identity, u.password_phc, u.password_pepper, u.pin_phc, \
             u.pin_pepper, a.failures, a.locked_until_ms, a.hard_locked \
             FROM users u LEFT JOIN attempts a ON a.user_id = u.id ORDER BY u.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let has = |phc: Option<String>, pepper: Option<String>| phc.map(|_| pepper);
                Ok(UserListing {
                    id: row.try_get(0)?,
                    linked_identity: row.try_get(1)?,
                    password: has(row.try_get(2)?, row.try_get(3)?),
                    pin: has(row.try_get(4)?, row.try_get(5)?),
                    failures: row.try_get::<Option<i64>, _>(6)?.unwrap_or(0),
                    locked_until_ms: row.try_get::<Option<i64>, _>(7)?.unwrap_or(0),
                    hard_locked: row.try_get::<Option<i64>, _>(8)?.unwrap_or(0) != 0,
                })
            })
            .collect()
    }

    /// The stored hash of one secret, for tests and `users list`-like tools.
    pub async fn stored_hash(&self, id: &str, kind: Kind) -> StoreResult<Option<StoredHash>> {
        let (phc, pepper) = kind_columns(kind);
        let row = sqlx::query(&format!("SELECT {phc}, {pepper} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(stored(row.try_get(0)?, row.try_get(1)?)),
            None => Ok(None),
        }
    }
}
