"""Dropping the TCP connection of a peer that stopped reading: at once, with what it was still owed.

asyncio's `transport.close()` waits until its unsent buffer has drained, which for a peer that
never reads is never: the socket stays open, with the kernel's send queue (megabytes of MJPEG
parts) behind it. `transport.abort()` closes the socket, but the kernel still holds that queue
and keeps the orphaned connection for minutes, retrying a peer that reads nothing. With
SO_LINGER at 0 the close is a reset: the queue is freed and the peer learns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def drop(transport: asyncio.BaseTransport | None) -> None:
    """Reset `transport`'s connection now, discarding whatever is still unsent (no-op when it is gone)."""
    if not isinstance(transport, asyncio.WriteTransport):
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    transport.abort()
