-- One schema for SQLite and PostgreSQL: only TEXT and BIGINT columns (times are unix
-- milliseconds, flags 0/1), which both engines and sqlx's Any driver handle alike.

-- The users. A secret is an argon2id PHC string plus the id of the pepper it was made with
-- (NULL: no pepper). linked_identity NULL answers missing-linked-identity.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    linked_identity TEXT,
    password_phc TEXT,
    password_pepper TEXT,
    pin_phc TEXT,
    pin_pepper TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- The per-user budget of failed checks (passwords, PINs, one-time codes), fleet-wide. No
-- foreign key: wrong codes count for ids that are not in users, too.
--   failures         consecutive failed attempts, attempts still being checked included
--   locked_until_ms  end of the current temporary lock (0: none)
--   lock_ms          length of the last temporary lock (0: none yet), doubled by the next
--   hard_locked      1: locked until `users unlock` or a password change
--   epoch            bumped by every reset, so an attempt settled after one can tell
--   last_attempt     random id of the last attempt counted (tells a caller its own from others)
CREATE TABLE attempts (
    user_id TEXT PRIMARY KEY,
    failures BIGINT NOT NULL DEFAULT 0,
    locked_until_ms BIGINT NOT NULL DEFAULT 0,
    lock_ms BIGINT NOT NULL DEFAULT 0,
    hard_locked BIGINT NOT NULL DEFAULT 0,
    epoch BIGINT NOT NULL DEFAULT 0,
    last_attempt BIGINT NOT NULL DEFAULT 0,
    updated_ms BIGINT NOT NULL DEFAULT 0
);

-- One-time codes accepted, fleet-wide: a (user, key id, step) is inserted once; rows are kept
-- until the code expires and purged after.
CREATE TABLE used_codes (
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_id, step)
);
CREATE INDEX used_codes_expiry ON used_codes (expires_at_ms);
