-- messages.owner: here since 0001 (SQLite gains it in its 0003).
--
-- The Discord request budget the bot's processes share (bot/storage/shared_budget.py): one row
-- per budget holds the "theoretical arrival time" of the generic cell rate algorithm. UNLOGGED:
-- a PostgreSQL crash empties it, which only means a full budget again. A database where an older
-- Parley already created the table at run time keeps it (and its rows) as it is.
CREATE UNLOGGED TABLE IF NOT EXISTS parley_shared_budgets (
    name text PRIMARY KEY,
    tat  double precision NOT NULL  -- epoch seconds (database clock) the next grant is due
);
