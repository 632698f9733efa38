"""A TCP proxy a test puts in front of a server (PostgreSQL) to make the network misbehave.

``stall()`` stops forwarding in both directions: connections stay open, new ones are accepted,
and whatever is sent waits in the proxy, as over a path that drops every packet (no RST, no FIN).
``heal()`` lets it flow again, in order. ``refuse()`` closes every new connection at once, as a
server that is down; ``reset()`` sends an RST on every connection open now.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        #: Connections accepted so far (refused ones included).
        self.accepted = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            _abort(link.client)
            _abort(link.server)
        for link in list(self._links):
            await asyncio.gather(*link.tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stall(self) -> None:
        self._flowing.clear()

    def refuse(self) -> None:
        self._refusing = True

    def reset(self) -> None:
        """RST every connection open now (SO_LINGER 0, then close)."""
        for link in list(self._links):
            _abort(link.client)
            _abort(link.server)

    def heal(self) -> None:
        self._refusing = False
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _abort(link.client)
            _abort(link.server)


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
