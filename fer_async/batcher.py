"""A generic asyncio dynamic batcher: many concurrent `submit(item)` calls, one handler call per batch.

Modelled on Ray Serve's `batching.py` (one future per item, the deadline counted from the
first item, cancelled callers skipped, every waiter failed on error, the result count
checked) with these changes:

* The queue is bounded: when it is full `submit` raises `BatcherOverloaded` at once, so a
  burst turns into fast, explicit refusals instead of unbounded memory and latency.
* `start()` / `aclose()` are explicit (no `__del__`); `aclose` fails every waiter with
  `BatcherClosed`, including the batch the handler is running.
* The max-wait deadline runs from when the first item was *enqueued*, not from when the loop
  picked it up: items that queued while the previous batch ran have already waited, so they go
  out at once instead of waiting max_wait again.
* Per-item errors: the handler may return an `Exception` instance in an item's slot; that
  exception is raised to that item's caller only (e.g. one undecodable frame among sixteen).
* The wait adapts: it is only spent while callers overlap. After a batch of one item during
  which nothing else queued up, the next batch takes what is already queued and goes at once.
  A lone caller (one webcam tab) would otherwise pay max_wait on every item for nothing: on
  two cores that cost a single client a fifth of its frame rate. The first batch with more
  than one item, or items queued while a batch ran, turns the wait back on.

Fairness: items are served strictly FIFO. The batcher does not limit how many items one
caller submits; the web layer keeps at most one item in flight per client, so a client
that sends frames quickly cannot take more than one slot of any batch, nor starve others.

Stdlib only: it knows nothing of faces, models or aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherOverloaded(RuntimeError):
    """The queue is full: the caller should shed this item (e.g. drop the frame, HTTP 503)."""


class BatcherClosed(RuntimeError):
    """The batcher was closed (or never started) before this item got a result."""


@dataclass(frozen=True)
class BatchStats:
    size: int  # items handed to the handler (cancelled ones already skipped)
    queue_wait_s: float  # how long the oldest item of the batch waited in the queue
    run_s: float  # the handler's time for the whole batch
    failed: bool = False  # the handler raised, or returned the wrong number of results


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float  # time.monotonic()


class Batcher(Generic[T, R]):
    """Collects submitted items into batches of up to `max_batch`, waiting at most `max_wait_s`.

    `handler(items)` must return one entry per item, in order: a result, or an Exception
    instance that is raised to that item's caller alone. If the handler raises (or returns the
    wrong number of entries), every caller of that batch gets the error and the batcher keeps
    serving the next batch.
    """

    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self._handler = handler
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._callers_overlap = True  # see the module docstring: the wait adapts

    @property
    def queue_size(self) -> int:
        """Items waiting for a batch (cancelled ones included until the loop skips them)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._closed:
            raise BatcherClosed("the batcher was closed; create a new one")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def aclose(self) -> None:
        """Stop the loop and fail every waiting caller with BatcherClosed. Idempotent."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            # asyncio.wait neither raises the loop's own error (already logged) nor swallows a
            # cancellation of the task calling aclose(), as suppress(CancelledError) would.
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it a second time
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("the server is shutting down"))

    async def __aenter__(self) -> Batcher[T, R]:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def submit(self, item: T) -> R:
        """The handler's result for `item`; raises its per-item or per-batch error.

        Raises BatcherOverloaded at once when `max_queue` items are already waiting, and
        BatcherClosed if the batcher is closed or not started. Cancelling the caller drops the
        item: the loop skips it when it forms the next batch.
        """
        if self._closed or self._task is None:
            raise BatcherClosed("the batcher is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, future, time.monotonic()))
        except asyncio.QueueFull:
            raise BatcherOverloaded(f"too busy: {self.max_queue} items already waiting") from None
        return await future

    async def _collect(self, batch: list[_Pending[T, R]]) -> None:
        """Wait for a first live item, then gather more until max_batch or its deadline.

        Fills the caller's list in place, so that if the loop is cancelled half-way the items
        already taken off the queue are still known and can be failed.
        """
        while not batch:
            first = await self._queue.get()
            if not first.future.done():  # done = its caller was cancelled
                batch.append(first)
        deadline = batch[0].enqueued + (self.max_wait_s if self._callers_overlap else 0.0)
        while len(batch) < self.max_batch:
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        pending = await self._queue.get()
                except TimeoutError:
                    break
            else:
                pending = self._queue.get_nowait()
            if not pending.future.done():
                batch.append(pending)

    async def _run(self) -> None:
        batch: list[_Pending[T, R]] = []
        try:
            while True:
                batch = []
                await self._collect(batch)
                await self._dispatch(batch)
                self._callers_overlap = len(batch) > 1 or not self._queue.empty()
        except asyncio.CancelledError:
            _fail(batch, BatcherClosed("the server is shutting down"))
            raise
        except BaseException:
            # A bug here must not leave callers waiting forever on futures nobody will set.
            logger.exception("batcher loop crashed")
            _fail(batch, BatcherClosed("the batcher stopped after an internal error"))
            self._closed = True
            raise

    async def _dispatch(self, batch: list[_Pending[T, R]]) -> None:
        started = time.monotonic()
        failed = False
        try:
            results = await self._handler([p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(batch)} items")
        except Exception as exc:
            failed = True
            logger.warning("batch of %d failed: %r", len(batch), exc)
            _fail(batch, exc)
        else:
            for p, result in zip(batch, results, strict=True):
                if p.future.done():
                    continue  # its caller gave up while the handler ran
                if isinstance(result, Exception):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
        if self._on_batch is not None:
            stats = BatchStats(
                size=len(batch),
                queue_wait_s=started - batch[0].enqueued,
                run_s=time.monotonic() - started,
                failed=failed,
            )
            try:
                self._on_batch(stats)
            except Exception:
                logger.exception("on_batch callback failed")


def _fail(batch: list[_Pending[T, R]], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
