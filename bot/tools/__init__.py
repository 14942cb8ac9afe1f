"""Tools the model may call, served by the MCP servers of `[tools]` (stdio or streamable HTTP).

`hub.ToolHub` runs the servers and calls their tools; `calls` assembles the streamed tool calls
of a reply; `messages` builds the follow-up chat messages; `turn.ToolTurn` carries out a reply's
tool rounds; `history` is the exchange stored with a reply and replayed in later prompts;
`status` reports for doctor and /healthz.
"""
