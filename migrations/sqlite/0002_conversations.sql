-- Conversations people keep (issue 14): per-user memory, named sessions, group background, and
-- full-text search (FTS5, BM25) over messages and memories.
--
-- messages gains the status 'background' (a group message the bot saw but was not addressed to:
-- never a turn) and the session it belongs to. SQLite cannot change a CHECK constraint in place,
-- so the table is rebuilt with its rows and indexes.

CREATE TABLE messages_new (
    id          INTEGER PRIMARY KEY,
    channel_id  INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    role        TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    author_id   TEXT    NOT NULL,
    author_name TEXT    NOT NULL DEFAULT '',
    content     TEXT    NOT NULL DEFAULT '',
    status      TEXT    NOT NULL CHECK (status IN
                    ('complete', 'queued', 'streaming', 'partial', 'failed', 'interrupted',
                     'background')),
    token_count INTEGER,
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    session_id  INTEGER NOT NULL DEFAULT 0  -- sessions.id; 0: the chat's first conversation, "main"
);
INSERT INTO messages_new (id, channel_id, role, author_id, author_name, content, status,
                          token_count, created_at, updated_at)
    SELECT id, channel_id, role, author_id, author_name, content, status, token_count, created_at,
           updated_at
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;

CREATE INDEX messages_channel_recent ON messages (channel_id, id DESC);
CREATE INDEX messages_author ON messages (author_id);
CREATE INDEX messages_created ON messages (created_at);
-- A session's last N messages (the prompt's history) as an index range scan, newest first.
CREATE INDEX messages_session_recent ON messages (channel_id, session_id, id DESC);
-- A group's recent background messages, and pruning them to the newest few hundred.
CREATE INDEX messages_background ON messages (channel_id, id) WHERE status = 'background';

-- The session a chat's new messages go to (0: "main").
ALTER TABLE channels ADD COLUMN session_id INTEGER NOT NULL DEFAULT 0;

-- Named conversations of a chat (/session new NAME); "main" (id 0) has no row.
CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY,
    channel_id INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    UNIQUE (channel_id, name)
);

-- Facts a user asked the bot to remember (/remember): per user of a platform, in every chat.
CREATE TABLE memories (
    id          INTEGER PRIMARY KEY,
    platform    TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    shared      INTEGER NOT NULL DEFAULT 0 CHECK (shared IN (0, 1)),  -- 1: used in groups too
    token_count INTEGER NOT NULL,
    created_at  REAL    NOT NULL
);
CREATE INDEX memories_owner ON memories (platform, user_id, id);

-- Full-text indexes over the two tables' content (external content: the text is stored once).
-- Porter stemming so "cats" finds "cat"; diacritics folded so "cafe" finds "café".
-- Messages are indexed with their chat as a second column ("c<channel id>"), so a search of one
-- chat intersects its doclist inside the index instead of ranking every chat's matches.
CREATE VIEW messages_search AS SELECT id, content, 'c' || channel_id AS chat FROM messages;
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, chat, content = 'messages_search', content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content, chat) VALUES (new.id, new.content, 'c' || new.channel_id);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content, chat)
        VALUES ('delete', old.id, old.content, 'c' || old.channel_id);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content, chat)
        VALUES ('delete', old.id, old.content, 'c' || old.channel_id);
    INSERT INTO messages_fts (rowid, content, chat) VALUES (new.id, new.content, 'c' || new.channel_id);
END;

CREATE VIRTUAL TABLE memories_fts USING fts5(
    content, content = 'memories', content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE OF content ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO memories_fts (rowid, content) VALUES (new.id, new.content);
END;
