"""MCP servers for the tools tests, built with the SDK's own server side; run as a script.

`python mcp_servers.py stdio` serves over stdio; `http [PORT]` serves streamable HTTP on loopback
(port 0: a free one) and prints its port on the first line of stdout; `silent` starts and
answers nothing. The tools: `echo`, `big` (a long text), `fail` (a tool error), `crash` (the
process exits mid-call), `freeze` (blocks the server's event loop: nothing answers any more),
`env_length` (an environment variable's length, never its value), `wait` (answers after a
while). With FAKE_LEAK_ENV=NAME set, the server writes that variable's value to stderr when it
starts (a careless server). `HttpFake` runs the streamable-HTTP server for a test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer

SCRIPT = str(Path(__file__).resolve())
PORT_GUARD_S = 60.0  # a hang guard: the HTTP server prints its port within a second or two


def command(mode: str, *args: str) -> list[str]:
    """The command line that runs this script in `mode` with the test's Python."""
    return [sys.executable, SCRIPT, mode, *args]


def build() -> MCPServer:
    """The fake server and its tools."""
    server = MCPServer("parley-fake", log_level="ERROR")

    @server.tool()
    async def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def big(chars: int) -> str:
        """Return a text of `chars` characters."""
        return "".join(chr(ord("a") + i % 26) for i in range(chars))

    @server.tool()
    async def fail(message: str) -> str:
        """Fail with a tool error."""
        raise ValueError(message)

    @server.tool()
    async def crash() -> str:
        """End the server process in the middle of the call."""
        print("fake server: crashing now", file=sys.stderr, flush=True)
        os._exit(3)

    @server.tool()
    async def freeze() -> str:
        """Block the server's event loop (a hung server)."""
        time.sleep(3600)  # noqa: ASYNC251 - blocking the loop is the point
        return ""

    @server.tool()
    async def env_length(name: str) -> str:
        """The length of an environment variable (0 when unset)."""
        return str(len(os.environ.get(name, "")))

    @server.tool()
    async def wait(seconds: float, text: str) -> str:
        """Return the text after `seconds`."""
        await asyncio.sleep(seconds)
        return text

    return server


class HttpFake:
    """The streamable-HTTP fake as a process on loopback: started, killed, started again."""

    def __init__(self) -> None:
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """Its MCP endpoint."""
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> int:
        """Serve on the same port as before (a free one the first time); returns the port."""
        proc = await asyncio.create_subprocess_exec(
            *command("http", str(self.port)), stdout=asyncio.subprocess.PIPE
        )
        self._proc = proc
        assert proc.stdout is not None
        async with asyncio.timeout(PORT_GUARD_S):
            self.port = int(await proc.stdout.readline())
        return self.port

    async def kill(self) -> None:
        """Stop it at once (a crash)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


def _serve_http(port: int) -> None:
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    print(sock.getsockname()[1], flush=True)
    app = build().streamable_http_app()
    uvicorn.Server(uvicorn.Config(app, log_level="error")).run(sockets=[sock])


def main() -> None:
    mode = sys.argv[1]
    leak = os.environ.get("FAKE_LEAK_ENV")
    if leak:
        print(f"fake server: starting with {leak}={os.environ.get(leak)}", file=sys.stderr)
        sys.stderr.flush()
    if mode == "stdio":
        build().run("stdio")
    elif mode == "http":
        _serve_http(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    elif mode == "silent":
        time.sleep(3600)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
