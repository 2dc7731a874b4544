"""The async batcher's rules, with a hand-written handler (the test is about batching, not faces)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from fer_async.batcher import Batcher, BatcherClosed, BatcherOverloaded, BatchStats


class Handler:
    """Doubles numbers, records each batch, can be held back by a gate, fails on "boom"."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[object]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.delay = delay

    async def __call__(self, items: list[object]) -> list[object]:
        self.batches.append(list(items))
        self.entered.set()
        await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if "boom" in items:
            raise RuntimeError("handler exploded")
        return [ValueError(f"bad item {x}") if x == "bad" else x * 2 for x in items]  # type: ignore[operator]


@pytest.fixture
def handler() -> Handler:
    return Handler()


Make = Callable[..., Batcher[object, object]]


@pytest.fixture
async def make(handler: Handler) -> AsyncIterator[Make]:
    made: list[Batcher[object, object]] = []

    def factory(**kwargs: object) -> Batcher[object, object]:
        batcher: Batcher[object, object] = Batcher(handler, **kwargs)  # type: ignore[arg-type]
        made.append(batcher)
        return batcher

    yield factory
    for batcher in made:
        await batcher.aclose()


async def test_results_come_back_to_their_callers(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=4, max_wait_s=0.05)
    await batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert [len(b) for b in handler.batches] == [4, 4, 2]  # max_batch respected
    assert [x for b in handler.batches for x in b] == list(range(10))  # FIFO


async def test_a_lone_item_waits_at_most_max_wait(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=8, max_wait_s=0.1)
    await batcher.start()
    started = time.monotonic()
    assert await batcher.submit(1) == 2
    elapsed = time.monotonic() - started
    assert 0.08 < elapsed < 1.0
    assert handler.batches == [[1]]


async def test_a_lone_caller_stops_paying_the_wait_until_callers_overlap(make: Make, handler: Handler) -> None:
    """One caller at a time: only the first item waits max_wait; overlap turns the wait back on."""
    batcher = make(max_batch=8, max_wait_s=1.0)
    await batcher.start()
    started = time.monotonic()
    for i in range(5):  # strictly one after another, like one webcam tab
        assert await batcher.submit(i) == i * 2
    # Waiting on every item would take 5 s; the first wait showed nobody else was coming.
    assert time.monotonic() - started < 3.0
    assert handler.batches == [[0], [1], [2], [3], [4]]

    # Two callers at once share a batch (the second is already queued), which re-arms the wait...
    assert list(await asyncio.gather(batcher.submit(5), batcher.submit(6))) == [10, 12]
    assert handler.batches[-1] == [5, 6]

    # ...so the next lone item waits for company again, and a caller arriving within it joins.
    async def later(item: int, delay: float) -> object:
        await asyncio.sleep(delay)
        return await batcher.submit(item)

    await asyncio.gather(later(7, 0), later(8, 0.2))
    assert handler.batches[-1] == [7, 8]


async def test_items_within_max_wait_share_a_batch(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=8, max_wait_s=0.3)
    await batcher.start()

    async def later(item: int, delay: float) -> object:
        await asyncio.sleep(delay)
        return await batcher.submit(item)

    await asyncio.gather(later(1, 0), later(2, 0.05), later(3, 0.8))
    assert handler.batches == [[1, 2], [3]]


async def test_deadline_counts_from_enqueue_so_backlog_goes_out_at_once() -> None:
    handler = Handler(delay=0.6)
    batcher: Batcher[object, object] = Batcher(handler, max_batch=2, max_wait_s=0.5)
    await batcher.start()
    try:
        started = time.monotonic()
        # 1 and 2 fill a batch at once; 3 queues while it runs (0.6 s), already past its deadline.
        tasks = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.gather(*tasks)
        # Waiting max_wait again after the first batch would take >= 0.6 + 0.5 + 0.6 = 1.7 s.
        assert time.monotonic() - started < 1.5
        assert handler.batches == [[1, 2], [3]]
    finally:
        await batcher.aclose()


async def test_max_wait_zero_sends_what_is_queued(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=8, max_wait_s=0)
    await batcher.start()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]
    assert sum(len(b) for b in handler.batches) == 3


async def test_full_queue_refuses_at_once(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=1, max_wait_s=0, max_queue=2)
    await batcher.start()
    handler.gate.clear()
    in_flight = asyncio.create_task(batcher.submit(1))
    await handler.entered.wait()  # item 1 is in the handler, the queue is empty
    queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    assert batcher.queue_size == 2
    started = time.monotonic()
    with pytest.raises(BatcherOverloaded, match="2 items already waiting"):
        await batcher.submit(4)
    assert time.monotonic() - started < 0.05  # refused, not queued behind the others
    handler.gate.set()
    assert await asyncio.gather(in_flight, *queued) == [2, 4, 6]
    assert await batcher.submit(5) == 10  # room again


async def test_handler_error_fails_only_its_batch(make: Make, handler: Handler) -> None:
    stats: list[BatchStats] = []
    batcher = make(max_batch=2, max_wait_s=0.05, on_batch=stats.append)
    await batcher.start()
    results = await asyncio.gather(batcher.submit(1), batcher.submit("boom"), batcher.submit(3), return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
    assert str(results[0]) == "handler exploded"
    assert results[2] == 6
    assert await batcher.submit(4) == 8  # and the loop keeps serving
    assert [(s.size, s.failed) for s in stats] == [(2, True), (1, False), (1, False)]


async def test_per_item_exceptions_reach_only_their_caller(make: Make) -> None:
    batcher = make(max_batch=4, max_wait_s=0.05)
    await batcher.start()
    results = await asyncio.gather(batcher.submit(1), batcher.submit("bad"), batcher.submit(3), return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad item bad"


async def test_wrong_result_count_fails_the_batch() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[1:] if len(items) > 1 else items

    batcher: Batcher[int, int] = Batcher(short, max_batch=2, max_wait_s=0.05)
    await batcher.start()
    try:
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "1 results for 2 items" in str(r) for r in results)
        assert await batcher.submit(3) == 3
    finally:
        await batcher.aclose()


async def test_cancelled_submit_is_skipped(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=4, max_wait_s=0)
    await batcher.start()
    handler.gate.clear()
    first = asyncio.create_task(batcher.submit(1))
    await handler.entered.wait()
    gone = asyncio.create_task(batcher.submit(2))
    kept = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    handler.gate.set()
    assert await first == 2 and await kept == 6
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert handler.batches == [[1], [3]]


async def test_caller_cancelled_while_its_batch_runs(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=4, max_wait_s=0.02)
    await batcher.start()
    handler.gate.clear()
    a = asyncio.create_task(batcher.submit(1))
    b = asyncio.create_task(batcher.submit(2))
    await handler.entered.wait()
    a.cancel()
    handler.gate.set()
    assert await b == 4  # setting the cancelled one's result is skipped without error
    assert a.cancelled()


async def test_aclose_fails_every_waiter(handler: Handler) -> None:
    batcher: Batcher[object, object] = Batcher(handler, max_batch=1, max_wait_s=0)
    await batcher.start()
    handler.gate.clear()
    in_flight = asyncio.create_task(batcher.submit(1))
    await handler.entered.wait()
    queued = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    await batcher.aclose()
    for task in (in_flight, queued):
        with pytest.raises(BatcherClosed):
            await task
    with pytest.raises(BatcherClosed):
        await batcher.submit(3)
    assert not batcher.running
    await batcher.aclose()  # idempotent
    with pytest.raises(BatcherClosed):
        await batcher.start()


async def test_aclose_while_a_batch_is_forming(make: Make, handler: Handler) -> None:
    batcher = make(max_batch=8, max_wait_s=30)
    await batcher.start()
    waiting = asyncio.create_task(batcher.submit(1))  # taken off the queue, waiting for company
    await asyncio.sleep(0.02)
    assert batcher.queue_size == 0 and not waiting.done()
    await batcher.aclose()
    with pytest.raises(BatcherClosed):
        await asyncio.wait_for(waiting, 1)
    assert handler.batches == []


async def test_a_crashed_loop_fails_its_waiters_instead_of_hanging(
    make: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    batcher = make(max_batch=2, max_wait_s=0)

    async def bug(batch: list[object]) -> None:
        raise KeyError("a bug in the batcher itself")

    monkeypatch.setattr(batcher, "_dispatch", bug)
    await batcher.start()
    with pytest.raises(BatcherClosed, match="internal error"):
        await asyncio.wait_for(batcher.submit(1), 1)
    assert "batcher loop crashed" in caplog.text
    with pytest.raises(BatcherClosed):
        await batcher.submit(2)
    await batcher.aclose()  # does not re-raise the crash


async def test_submit_before_start(make: Make) -> None:
    with pytest.raises(BatcherClosed, match="not running"):
        await make().submit(1)


async def test_on_batch_stats_and_a_failing_callback(make: Make) -> None:
    seen: list[BatchStats] = []

    def on_batch(stats: BatchStats) -> None:
        seen.append(stats)
        raise RuntimeError("metrics backend down")

    batcher = make(max_batch=3, max_wait_s=0.05, on_batch=on_batch)
    await batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(3)))
    assert await batcher.submit(7) == 14  # the callback's error did not stop the loop
    assert [s.size for s in seen] == [3, 1]
    assert all(s.queue_wait_s >= 0 and s.run_s >= 0 and not s.failed for s in seen)
    assert seen[1].queue_wait_s >= 0.04  # a lone item waited for company up to max_wait


async def test_async_context_manager(handler: Handler) -> None:
    async with Batcher(handler, max_wait_s=0) as batcher:
        assert batcher.running and await batcher.submit(2) == 4
    assert not batcher.running


def test_bad_settings() -> None:
    async def handler(items: list[int]) -> list[int]:
        return items

    for kwargs in ({"max_batch": 0}, {"max_wait_s": -1.0}, {"max_queue": 0}):
        with pytest.raises(ValueError):
            Batcher(handler, **kwargs)


async def test_executor_handler_like_the_web_layer() -> None:
    """The real wiring: a sync function in a one-thread executor behind the batcher."""
    from concurrent.futures import ThreadPoolExecutor

    def analyze(frames: list[bytes]) -> list[int | ValueError]:
        return [len(f) if f else ValueError("empty image") for f in frames]

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as executor:
        batcher: Batcher[bytes, int] = Batcher(
            lambda frames: loop.run_in_executor(executor, analyze, frames), max_batch=8, max_wait_s=0.01
        )
        await batcher.start()
        try:
            results = await asyncio.gather(batcher.submit(b"abc"), batcher.submit(b""), return_exceptions=True)
            assert results[0] == 3 and isinstance(results[1], ValueError)
        finally:
            await batcher.aclose()
