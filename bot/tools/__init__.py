"""Tools the model may call, served by MCP servers (stdio or streamable HTTP)."""
