"""The real server, started for a measurement or a test: in this process, or as a subprocess.

`serve_in_process` runs the real app (`create_app`) on an `AppRunner` bound to a real TCP port
of 127.0.0.1 in the caller's event loop: the tests use it (they may inject the session's
model and read the app's state), and the bench's `--in-process`. `ServerProcess` runs
`python -m fer_async` exactly as production does: the bench's default, so that the load
generator does not share a GIL and an event loop with the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from fer_async.config import Settings

logger = logging.getLogger(__name__)

# TensorFlow import + model load + warm-up; on a 2-core box shared with training this takes
# far longer than on an idle machine, and a bench that gives up early is useless.
SERVER_START_TIMEOUT_S = 300.0
SERVER_STOP_TIMEOUT_S = 30.0  # graceful shutdown closes sockets (1001) and drains the batcher
RUNNER_CLEANUP_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_loopback(url: str) -> None:
    """Refuse to load anything but this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"the bench only talks to loopback addresses, not {host!r}")


def rss_kb(pid: int) -> int | None:
    """VmRSS of process `pid` in kB (Linux), None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class LiveServer:
    """A server listening on 127.0.0.1:`port`; `app` is set when it runs in this process."""

    app: web.Application
    port: int
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"


@contextlib.asynccontextmanager
async def serve_in_process(settings: Settings, model: Any = None) -> AsyncIterator[LiveServer]:
    """The real app on `settings.port` of 127.0.0.1 until the block ends (`model`: skip loading one)."""
    from fer_async.server.app import create_app  # aiohttp_jinja2 & co: only when a server is wanted

    app = create_app(settings, model=model)
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
        yield LiveServer(app, settings.port)
    finally:
        await asyncio.wait_for(runner.cleanup(), RUNNER_CLEANUP_TIMEOUT_S)


class ServerProcess:
    """The real server as a subprocess: `python -m fer_async --host 127.0.0.1 --port P ...`."""

    def __init__(self, args: Sequence[str], *, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), *args]
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_s: float | None = None  # launch -> first 200 from /healthz
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, limit: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        return self._log.read().decode("utf-8", "replace")

    async def start(self, wait_s: float = SERVER_START_TIMEOUT_S) -> None:
        # The server's output goes to an anonymous temp file: a pipe nobody reads would fill
        # up and block the server; the tail is shown when it fails to start.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server, closed in stop()
        cmd = [sys.executable, "-m", "fer_async", *self.args]
        logger.info("starting server: %s", " ".join(cmd))
        launched = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        deadline = time.monotonic() + wait_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.base_url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        if resp.status == 200:
                            self.ready_s = time.monotonic() - launched
                            logger.info("server pid %d ready on port %d", self.proc.pid, self.port)
                            return
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    await self.stop()
                    raise RuntimeError(f"server not healthy after {wait_s:.0f} s:\n{tail}")
                await asyncio.sleep(0.05)  # fine-grained: the bench reports launch -> ready

    async def stop(self) -> int | None:
        """SIGINT (graceful shutdown), then SIGTERM, then SIGKILL; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        last_sent: signal.Signals | None = None
        for sig, wait_s in ((signal.SIGINT, SERVER_STOP_TIMEOUT_S), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
                last_sent = sig
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=wait_s)
        if last_sent not in (None, signal.SIGINT):
            logger.warning("the server did not stop on SIGINT; it took %s", last_sent)
        code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None
        return code


class InProcessServer:
    """`serve_in_process` behind ServerProcess's start/stop interface (the bench's --in-process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.replace(host="127.0.0.1", port=free_port())
        self.port = self.settings.port
        self._stack = contextlib.AsyncExitStack()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return os.getpid()

    async def start(self) -> None:
        await self._stack.enter_async_context(serve_in_process(self.settings))

    async def stop(self) -> int | None:
        await self._stack.aclose()
        return 0
