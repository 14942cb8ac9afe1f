"""A loopback TCP relay in front of a fake server, for cutting the bot's connections on purpose.

Point the bot at `proxy.url` instead of the fake's own address. `drop()` resets every open
connection (like a NAT or load balancer forgetting them: no FIN, no close frame) and
`outage()` also refuses new connections until it ends, so tests can watch a client notice the
loss and reconnect. Bytes are relayed unchanged, so HTTP, long polls and websockets all work.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

_CHUNK = 64 * 1024


class TcpProxy:
    """`async with TcpProxy(port) as proxy:` relays 127.0.0.1:proxy.port to 127.0.0.1:port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.accepted = 0  # connections relayed since the start
        self.refused = 0  # connections reset during an outage
        self._refusing = False
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`: the fake's base URL, by way of the relay."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    def drop(self) -> int:
        """Reset every open connection at once; returns how many there were."""
        links = list(self._links)
        self._links.clear()
        for client, upstream in links:
            _reset(client)
            _reset(upstream)
        return len(links)

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """Drop every connection and refuse new ones until the block ends."""
        self._refusing = True
        self.drop()
        try:
            yield
        finally:
            self._refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)
            return
        self.accepted += 1
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        self._pumps.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._pumps.difference_update(pumps)
            self._links.discard(link)
            for side in link:
                side.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes one way until either side closes; then close the other side too."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) rather than a polite FIN."""
    transport = writer.transport
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def port_of(url: str) -> int:
    """The port of a fake's `http://127.0.0.1:<port>` URL, to put a relay in front of it."""
    return int(url.rsplit(":", 1)[1])
