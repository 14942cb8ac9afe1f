"""Tools the model may call, served by the MCP servers of `[tools]` (stdio or streamable HTTP).

`hub.ToolHub` runs the servers and calls their tools; `calls` assembles the streamed tool calls
of a reply; `messages` builds the follow-up chat messages; `status` reports for doctor and
/healthz.
"""
