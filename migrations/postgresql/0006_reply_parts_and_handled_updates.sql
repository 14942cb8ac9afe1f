-- The platform messages that show each reply, recorded as the platform returns their ids, so a
-- reply cut off by a killed process can be finished on its platform after the restart.
CREATE TABLE reply_parts (
    reply_row  bigint  NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    part       integer NOT NULL,  -- 0 for the reply's first message, then 1, 2...
    message_id text    NOT NULL,  -- the platform's id of the message showing the part
    done       boolean NOT NULL DEFAULT false,  -- its final text is shown (or it is gone): no marker
    PRIMARY KEY (reply_row, part)
);
CREATE INDEX reply_parts_open ON reply_parts (reply_row) WHERE NOT done;

-- Platform updates already handled (a message stored, a command run), so a redelivery is
-- confirmed and not answered again. Rows older than the longest redelivery are purged.
CREATE TABLE handled_updates (
    platform   text             NOT NULL,
    key        text             NOT NULL,  -- e.g. the chat and message id, an interaction id
    handled_at double precision NOT NULL,
    PRIMARY KEY (platform, key)
);
CREATE INDEX handled_updates_age ON handled_updates (handled_at);
