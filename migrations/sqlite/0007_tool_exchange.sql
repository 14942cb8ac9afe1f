-- A reply's tool calls and their results (JSON: each round's text, calls and results, and where
-- the answer starts in the reply's text), so later prompts know what was looked up or done.
-- NULL: the reply called no tool.

ALTER TABLE messages ADD COLUMN tool_exchange TEXT;
