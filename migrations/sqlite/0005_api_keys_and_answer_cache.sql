-- The HTTP API's keys made with `parley api-key create` (only their hash is kept), and the answer
-- cache: complete replies by the hash of exactly what was sent to the LLM.

CREATE TABLE api_keys (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    key_hash   TEXT    NOT NULL UNIQUE,  -- SHA-256 of the key, hex: the key itself is never stored
    created_at REAL    NOT NULL
);

-- Rows are evicted oldest first (by id) beyond cache.max_entries, and once expired.
CREATE TABLE answer_cache (
    id         INTEGER PRIMARY KEY,
    key        TEXT    NOT NULL UNIQUE,  -- SHA-256 of the servers, the request path and body, hex
    answer     TEXT    NOT NULL,
    usage      TEXT    NOT NULL DEFAULT '{}',  -- JSON: the LLM's token counts for the answer
    created_at REAL    NOT NULL,
    expires_at REAL    NOT NULL
);
CREATE INDEX answer_cache_expires ON answer_cache (expires_at);
