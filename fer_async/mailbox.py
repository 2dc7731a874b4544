"""A one-slot mailbox where the newest item wins (the aiortc media-relay pattern).

For live video the only frame worth processing is the latest one: a consumer that falls
behind should skip frames, not work through a backlog and show ever older pictures. The
producer never blocks; it learns which item it displaced, so it can count drops.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class MailboxClosed(Exception):
    """The mailbox was closed: no more items will come."""


class LatestMailbox(Generic[T]):
    """Holds at most one item; `put` replaces it, `get` waits for one. For one event loop."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._has_item = False  # separate from the item so that None can be sent too
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return 1 if self._has_item else 0

    def put(self, item: T) -> T | None:
        """Store `item`, returning the unread item it replaced (None if the slot was empty).

        After close() nothing is stored and `item` itself comes back as dropped: a producer
        fanning out to many consumers need not care which of them just went away.
        """
        if self._closed:
            return item
        replaced = self._item if self._has_item else None
        self._item, self._has_item = item, True
        self._wake()
        return replaced

    async def get(self) -> T:
        """The newest item, waiting for one if the slot is empty.

        An item put before close() is still delivered; after that, MailboxClosed.
        """
        while not self._has_item:
            if self._closed:
                raise MailboxClosed("the mailbox is closed")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        item = cast(T, self._item)  # _has_item says it holds a T (which may itself be None)
        self._item, self._has_item = None, False
        return item

    def close(self) -> None:
        """Wake every waiting `get` with MailboxClosed once the slot is empty. Idempotent."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
