//! One-time codes accepted once, fleet-wide.

use super::{now_ms, Store, StoreResult};
use crate::protocol::ConsumeRequest;

impl Store {
    /// Records the first use of a code: `true` if this call inserted (user, key id, step),
    /// `false` if it was already there and unexpired. One statement: the primary key decides,
    /// so of any number of parallel calls on any number of replicas exactly one gets `true`. A
    /// row that expired but was not purged yet is taken over (as if it had been purged).
    pub async fn consume(&self, req: &ConsumeRequest) -> StoreResult<bool> {
        let row = sqlx::query(
            "INSERT INTO used_codes (user_id, key_id, step, expires_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, key_id, step) DO UPDATE SET expires_at_ms = $4 \
             WHERE used_codes.expires_at_ms <= $5 \
             RETURNING step",
        )
        .bind(req.user.as_str())
        .bind(req.key_id.as_str())
        .bind(req.step)
        .bind(req.expires_at_ms)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Deletes the codes that have expired, and budget rows with nothing in them that were last
    /// touched a day ago. Returns the number of codes deleted.
    pub async fn purge(&self) -> StoreResult<u64> {
        let now = now_ms();
        let codes = sqlx::query("DELETE FROM used_codes WHERE expires_at_ms <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        sqlx::query(
            "DELETE FROM attempts WHERE failures = 0 AND hard_locked = 0 \
             AND locked_until_ms <= $1 AND updated_ms < $2",
        )
        .bind(now)
        .bind(now - 86_400_000)
        .execute(self.pool())
        .await?;
        Ok(codes.rows_affected())
    }

    /// How many code rows are stored for `user` (tests).
    pub async fn code_rows(&self, user: &str) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM used_codes WHERE user_id = $1")
            .bind(user)
            .fetch_one(self.pool())
            .await
    }
}
