-- The admin console's sign-in sessions and the attempt throttle live in the database, so every
-- process sharing it shares them (bot/storage/console_sessions.py, bot/storage/throttle.py).
--
-- A session row keys on the SHA-256 of the cookie's token: the table holds nothing a browser
-- could present. `credential` binds it to the password it signed in with (an HMAC keyed by the
-- cookie's token, so it says nothing about the password): a new password ends it.
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY,
    credential TEXT NOT NULL,
    remote     TEXT NOT NULL,
    created_at REAL NOT NULL,
    seen_at    REAL NOT NULL
);
CREATE INDEX console_sessions_seen ON console_sessions (seen_at);

-- Attempts per key (e.g. a client address) in a scope (e.g. the console's sign-in), counted
-- before the check they guard, and until when the key must wait.
CREATE TABLE throttle (
    scope        TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    last_at      REAL    NOT NULL,
    locked_until REAL    NOT NULL,
    PRIMARY KEY (scope, key)
);
