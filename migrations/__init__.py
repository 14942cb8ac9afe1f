"""Versioned SQL migrations, NNNN_name.sql, applied in order (installed as `bot.migrations`)."""
