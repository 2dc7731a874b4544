"""LatestMailbox: one slot, newest wins, close wakes waiters."""

from __future__ import annotations

import asyncio

import pytest

from fer_async.mailbox import LatestMailbox, MailboxClosed


async def test_latest_wins_and_put_reports_what_it_dropped() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    assert len(box) == 0
    assert box.put(1) is None
    assert box.put(2) == 1
    assert box.put(3) == 2
    assert len(box) == 1
    assert await box.get() == 3
    assert len(box) == 0


async def test_get_waits_for_a_put() -> None:
    box: LatestMailbox[str] = LatestMailbox()
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    box.put("frame")
    assert await asyncio.wait_for(getter, 1) == "frame"


async def test_a_slow_consumer_sees_only_the_newest() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    received: list[int] = []
    dropped = 0

    async def consume() -> None:
        while True:
            try:
                received.append(await box.get())
            except MailboxClosed:
                return
            await asyncio.sleep(0.02)  # slower than the producer

    consumer = asyncio.create_task(consume())
    for i in range(50):
        if box.put(i) is not None:
            dropped += 1
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.05)
    box.close()
    await asyncio.wait_for(consumer, 1)
    assert received == sorted(received) and received[-1] == 49  # in order, and ends on the latest
    assert dropped > 0 and len(received) + dropped == 50


async def test_none_is_a_valid_item() -> None:
    box: LatestMailbox[int | None] = LatestMailbox()
    box.put(None)
    assert len(box) == 1
    assert await box.get() is None


async def test_close_wakes_waiters_and_later_gets() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    waiters = [asyncio.create_task(box.get()) for _ in range(3)]
    await asyncio.sleep(0)
    box.close()
    assert box.closed
    for waiter in waiters:
        with pytest.raises(MailboxClosed):
            await asyncio.wait_for(waiter, 1)
    with pytest.raises(MailboxClosed):
        await box.get()
    box.close()  # idempotent


async def test_item_put_before_close_is_still_delivered_then_puts_are_dropped() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    box.put(7)
    box.close()
    assert await box.get() == 7
    assert box.put(8) == 8  # refused: handed back as dropped
    assert len(box) == 0
    with pytest.raises(MailboxClosed):
        await box.get()


async def test_cancelled_get_leaves_no_stale_waiter() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    box.put(1)  # must not try to wake the cancelled getter
    assert await box.get() == 1
