"""A WebSocket client that sends exactly the frames a test names (RFC 6455 5.2), for what no
well-behaved library sends: fragments, invalid UTF-8, reserved bits, a peer that stops reading.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import struct

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """One masked client frame."""
    head = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", head, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", head, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", head, 0x80 | 127, n)
    mask = os.urandom(4)
    return header + mask + _mask(payload, mask)


def _mask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def upgrade_request(path: str = "/v1/realtime", headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.response_head = b""

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/v1/realtime",
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
        client = cls(reader, writer)
        writer.write(upgrade_request(path, headers))
        client.response_head = await reader.readuntil(b"\r\n\r\n")
        return client

    @property
    def status(self) -> int:
        return int(self.response_head.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.response_head.decode().split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> None:
        self.writer.write(frame(opcode, payload, fin=fin, rsv1=rsv1))

    def close(self, code: int | None = 1000, reason: bytes = b"") -> None:
        self.send(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)

    async def recv(self, within: float = 5.0) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): its opcode and payload."""
        async with asyncio.timeout(within):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def recv_close(self, within: float = 5.0) -> tuple[int | None, str]:
        """Skip to the server's close frame: its code (None if it had none) and reason."""
        while True:
            opcode, payload = await self.recv(within)
            if opcode == CLOSE:
                if len(payload) < 2:
                    return None, ""
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    async def eof(self, within: float = 5.0) -> bool:
        """Whether the server dropped the connection (after whatever it still sends)."""
        async with asyncio.timeout(within):
            while await self.reader.read(65536):
                pass
        return True

    def abort(self) -> None:
        self.writer.transport.abort()

    async def shut(self) -> None:
        """Drop the connection and wait until it is gone (a test's cleanup)."""
        self.writer.transport.abort()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
