"""A deliberately minimal WebSocket / HTTP client on raw asyncio streams.

aiohttp's client is too well-behaved for hostile tests: it always sends whole frames, reads
replies in the background and normalises URLs. These helpers let a test send half a frame and
hang up, connect with a tiny receive buffer and never read, or request un-normalised paths.
Loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HANDSHAKE_TIMEOUT_S = 15.0


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client-to-server frame (clients must mask, RFC 6455 5.3)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    # XOR with the repeated mask, fast enough for a few MB.
    body = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + mask + body


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    head: bytes  # the whole response head (status line + headers)

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (servers never mask)."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    def close_now(self) -> None:
        """Hang up without a closing handshake (RST if unread data is pending)."""
        self.writer.transport.abort()


async def open_socket(host: str, port: int, *, rcvbuf: int | None = None, limit: int = 2**16) -> RawConnection:
    """A connected stream pair; `rcvbuf` shrinks the kernel receive buffer (set before connect)."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError("loopback only")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), HANDSHAKE_TIMEOUT_S)
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    except BaseException:
        sock.close()
        raise
    return RawConnection(reader, writer, 0, b"")


async def read_head(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANDSHAKE_TIMEOUT_S)
    status = int(head.split(b" ", 2)[1])
    return status, head


async def ws_connect_raw(
    host: str,
    port: int,
    path: str = "/ws",
    *,
    origin: str | None = None,
    rcvbuf: int | None = None,
    limit: int = 2**16,
) -> RawConnection:
    """Do the opening handshake by hand; `status` is 101 on success (the body is not read)."""
    conn = await open_socket(host, port, rcvbuf=rcvbuf, limit=limit)
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    await conn.writer.drain()
    conn.status, conn.head = await read_head(conn.reader)
    return conn


async def http_get_raw(host: str, port: int, target: str, *, read_body: int = 4096) -> tuple[int, bytes]:
    """GET `target` exactly as given (no normalisation); (status, head + up to read_body bytes)."""
    conn = await open_socket(host, port)
    try:
        conn.writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        await conn.writer.drain()
        status, head = await read_head(conn.reader)
        body = b""
        try:
            while len(body) < read_body:
                chunk = await asyncio.wait_for(conn.reader.read(read_body - len(body)), 10.0)
                if not chunk:
                    break
                body += chunk
        except (TimeoutError, ConnectionError):
            pass
        return status, head + body
    finally:
        conn.writer.close()
