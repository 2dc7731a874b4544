"""Small helpers shared by the test packages (server, hostile, e2e).

`tests/` is on sys.path (pytest inserts the directory of the top-level conftest.py), so test
modules import this as `testsupport`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers started as processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(check: Callable[[], bool], within_s: float = 30.0, what: str = "condition") -> None:
    """Poll `check` every 50 ms until it holds; fail after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within_s:.0f} s")
        await asyncio.sleep(0.05)
