-- Channels, messages, per-channel settings and the admin audit log.

CREATE TABLE channels (
    id          INTEGER PRIMARY KEY,
    platform    TEXT    NOT NULL,
    channel_key TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    UNIQUE (platform, channel_key)
);

-- A reply gets its row (status 'queued') when the user's message arrives, right after the user's row,
-- so a channel's rows are in conversation order by id even when messages queue up behind each other.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,
    channel_id  INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    role        TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    author_id   TEXT    NOT NULL,
    author_name TEXT    NOT NULL DEFAULT '',
    content     TEXT    NOT NULL DEFAULT '',
    status      TEXT    NOT NULL CHECK (status IN
                    ('complete', 'queued', 'streaming', 'partial', 'failed', 'interrupted')),
    token_count INTEGER,
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL
);

-- Serves "last N messages of a channel" as an index range scan, newest first, without a sort.
CREATE INDEX messages_channel_recent ON messages (channel_id, id DESC);
CREATE INDEX messages_author ON messages (author_id);
CREATE INDEX messages_created ON messages (created_at);

CREATE TABLE channel_settings (
    channel_id INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,  -- JSON
    updated_at REAL    NOT NULL,
    PRIMARY KEY (channel_id, key)
);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,
    channel_id INTEGER REFERENCES channels (id) ON DELETE SET NULL,
    actor_id   TEXT    NOT NULL,
    actor_name TEXT    NOT NULL DEFAULT '',
    action     TEXT    NOT NULL,  -- e.g. 'config.set', 'config.refused', 'reset', 'forget'
    key        TEXT,
    old_value  TEXT,
    new_value  TEXT,
    created_at REAL    NOT NULL
);
