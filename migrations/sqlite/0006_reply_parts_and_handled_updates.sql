-- The platform messages that show each reply, recorded as the platform returns their ids, so a
-- reply cut off by a killed process can be finished on its platform after the restart.
CREATE TABLE reply_parts (
    reply_row  INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    part       INTEGER NOT NULL,  -- 0 for the reply's first message, then 1, 2...
    message_id TEXT    NOT NULL,  -- the platform's id of the message showing the part
    done       INTEGER NOT NULL DEFAULT 0,  -- its final text is shown (or it is gone): no marker
    PRIMARY KEY (reply_row, part)
);
CREATE INDEX reply_parts_open ON reply_parts (reply_row) WHERE NOT done;

-- Platform updates already handled (a message stored, a command run), so a redelivery is
-- confirmed and not answered again. Rows older than the longest redelivery are purged.
CREATE TABLE handled_updates (
    platform   TEXT NOT NULL,
    key        TEXT NOT NULL,  -- e.g. the chat and message id, an interaction id
    handled_at REAL NOT NULL,
    PRIMARY KEY (platform, key)
);
CREATE INDEX handled_updates_age ON handled_updates (handled_at);
