"""Delivery bookkeeping of the worker, free of faust: repeats dropped, batches acknowledged in
order once their outputs are delivered (at-least-once).

A partition can hand the same message out twice (the embedded broker returns its last record
again at the end of the log): `Deduplicator` drops messages already delivered, and only those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def unless_done(task: asyncio.Future[Any], step: Awaitable[Any]) -> None:
    """Await `step` unless `task` ends first; raise `task`'s failure if it has one."""
    waiting = asyncio.ensure_future(step)
    if not waiting.done():
        await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        if not waiting.done():
            waiting.cancel()
        task.result()  # its failure, or CancelledError
        raise RuntimeError("the task awaited beside it ended")
    await waiting


class InOrderAcks:
    """Acknowledges handled batches (`ack`, once per event) in the order they were taken, each
    once its outputs are delivered, while the agent goes on with later batches. At most
    `limit` batches wait for delivery (`add` then waits). A failed delivery fails the agent's
    next `add` or `check`, and nothing after it is acked: the worker stops and a restart reads
    those events again."""

    def __init__(self, ack: Callable[[Any], Awaitable[Any]], limit: int = 8):
        self.ack = ack
        self.queue: asyncio.Queue[tuple[Awaitable[Any], list[Any]]] = asyncio.Queue(limit)
        self.task: asyncio.Task[None] | None = None

    async def add(self, delivered: Awaitable[Any], events: list[Any]) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        self.check()
        try:
            self.queue.put_nowait((delivered, events))
        except asyncio.QueueFull:  # `limit` batches undelivered: wait for room
            await self._unless_failed(self.queue.put((delivered, events)))

    def check(self) -> None:
        """Raise the delivery failure that stopped acknowledging, if any."""
        if self.task is not None and self.task.done() and not self.task.cancelled():
            error = self.task.exception()
            if error is not None:
                raise error

    async def drain(self) -> None:
        """Wait until every batch added so far is acknowledged."""
        await self._unless_failed(self.queue.join())

    async def _unless_failed(self, step: Any) -> None:
        """Await `step` unless acknowledging stops first; raise its failure if it did."""
        self.check()
        if self.task is None:
            await step
        else:
            await unless_done(self.task, step)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            delivered, events = await self.queue.get()
            try:
                await delivered
                for event in events:
                    await self.ack(event)
            finally:
                self.queue.task_done()


class Deduplicator:
    """Drops a message whose (partition, offset) was already delivered.

    Only exact repeats are dropped: an offset below one already delivered that was never seen
    itself is new and kept (and counted in `out_of_order`), since dropping a message is data
    loss while a repeat is harmless (at-least-once). The last `window` offsets of each
    partition are remembered; an older one counts as new."""

    def __init__(self, window: int = 100_000) -> None:
        self.window = window
        self.seen: dict[int, set[int]] = {}
        self.highest: dict[int, int] = {}
        self.dropped = 0
        self.out_of_order: list[tuple[int, int, int]] = []

    def fresh(self, partition: int, offset: int) -> bool:
        seen = self.seen.setdefault(partition, set())
        if offset in seen:
            self.dropped += 1
            return False
        highest = self.highest.get(partition, -1)
        if offset < highest:
            self.out_of_order.append((partition, offset, highest))
        else:
            self.highest[partition] = offset
        seen.add(offset)
        if len(seen) > 2 * self.window:
            self.seen[partition] = set(sorted(seen)[-self.window :])
        return True

    def take_dropped(self) -> int:
        """Messages dropped since the last call."""
        dropped, self.dropped = self.dropped, 0
        return dropped

    def take_out_of_order(self) -> list[tuple[int, int, int]]:
        """(partition, offset, highest offset delivered before it) of each message delivered
        after a later one of its partition, since the last call."""
        found, self.out_of_order = self.out_of_order, []
        return found
