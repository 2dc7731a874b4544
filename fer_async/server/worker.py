"""What a `--workers` process adds to its app: its identity, metrics publishing, a watch on the supervisor.

The supervisor is `fer_async.workers`; a plain one-process server is worker 0 of 1 and adds
nothing but the identity (for `/healthz`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from fer_async.server.keys import METRICS

logger = logging.getLogger(__name__)

# How stale a sibling's numbers in /metrics may be.
METRICS_PUBLISH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker a process is: `index` of `count`, its pid, and the directory the workers share."""

    index: int
    count: int
    pid: int
    shared_dir: Path | None = None

    @classmethod
    def single(cls) -> WorkerInfo:
        """The only worker of a plain one-process server."""
        return cls(index=0, count=1, pid=os.getpid())

    @property
    def label(self) -> str:
        return str(self.index)

    def as_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count, "pid": self.pid}


# Which of the `--workers` processes this app runs in (index 0 of 1 for a plain server).
WORKER: web.AppKey[WorkerInfo] = web.AppKey("worker", WorkerInfo)


async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context of a worker's app: metrics publishing and the watch on the supervisor."""
    metrics = app[METRICS]
    loop = asyncio.get_running_loop()
    parent = multiprocessing.parent_process()
    if parent is not None:
        # The sentinel is a pipe that becomes readable when the supervisor exits, however it exits.
        def supervisor_gone() -> None:
            loop.remove_reader(parent.sentinel)
            logger.warning("the supervisor is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(parent.sentinel, supervisor_gone)

    async def publish_forever() -> None:
        while True:
            try:
                own = metrics.own_families()  # on the loop's thread, as for /metrics
                await asyncio.to_thread(metrics.publish, own)
            except OSError as exc:
                logger.warning("cannot publish metrics: %s", exc)
            await asyncio.sleep(METRICS_PUBLISH_INTERVAL_S)

    publisher = asyncio.create_task(publish_forever())
    yield
    publisher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await publisher
    if parent is not None:
        loop.remove_reader(parent.sentinel)
