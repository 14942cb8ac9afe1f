-- The process answering a reply row: both dialects' messages have the column, so the store writes
-- one INSERT for both. On SQLite it stays empty (one process owns the file); PostgreSQL has had it
-- since 0001. The request budget several processes share lives only on PostgreSQL.

ALTER TABLE messages ADD COLUMN owner INTEGER;
