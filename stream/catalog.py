"""Catalog upserts and new model versions, taken into the served index without stalling the
event loop.

The watcher (`stream.watch`) does the costly part in its own thread: it loads and checks a
version and composes the vectors of upserts (`ServingModel.prepare`). What is left is putting
them into an index's graph, hnswlib's costly part. `CatalogFeed` does it a slice at a time:
each slice is staged on the event loop (labels, vectors and metadata: cheap) and linked in the
thread that runs the batches' searches, so that the graph never changes while it is searched
and the loop never waits for it. Linking takes at most LINK_DUTY of that thread's time, so a
burst of tens of thousands of items is spread over some seconds instead of holding a core while
events wait.

A new model version takes the whole catalog the same way, before it is served; it is swapped
in between two batches once the last slice is linked. Upserts queued for the model it
replaces are dropped: the watcher prepared the whole catalog, them included, for the new one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from ..models.serving import CatalogChange, ServingModel
from . import metrics

log = logging.getLogger(__name__)
SLICE = 64  # upserts linked at a time: a search waits for at most one slice
LINK_DUTY = 0.5  # the share of the searcher thread's time that linking may take
PROGRESS_S = 10.0  # how often a model taking a large catalog logs how far it is
NAMED = 3  # upserts named in the line that logs them


class CatalogFeed:
    """Queued catalog changes and the model (if any) taking the catalog before it is served.
    `swap` is called with that model once it holds the whole catalog; `steps` counts every
    change to what is served (answers kept from before a step are stale)."""

    def __init__(self, swap: Callable[[ServingModel], None], searcher: Executor | None = None):
        self.swap = swap
        self.queue: deque[tuple[CatalogChange, int]] = deque()  # a change, and how far it is
        self.incoming: ServingModel | None = None
        # The searches' thread; without one, or outside an event loop, slices link at once.
        self.searcher = searcher
        self.linking: asyncio.Future[float] | None = None  # the slice being linked
        self.steps = 0
        self._resume_at = 0.0
        self._resuming: asyncio.TimerHandle | None = None
        self._applied: list[CatalogChange] = []  # upserts linked since the last log line
        self._progress_at = 0.0

    def take(
        self, model: ServingModel | None, changes: list[CatalogChange], served: ServingModel | None
    ) -> None:
        """Queue what the watcher handed over: a loaded `model` (whose whole catalog is among
        `changes`) and upserts prepared for it, or for the `served` model."""
        if model is not None:
            self.incoming = model
            self.queue = deque(c for c in self.queue if c[0].serving is model)
            self._progress_at = time.monotonic() + PROGRESS_S
        for change in changes:
            serving = change.serving
            if serving is not None and (serving is served or serving is self.incoming):
                self.queue.append((change, 0))
        self.advance()

    def busy(self) -> bool:
        """Whether upserts or a model wait to be linked."""
        return bool(self.queue) or self.linking is not None

    def advance(self) -> None:
        """Link the next slice, unless one is being linked or linking must rest a while."""
        apart = self.searcher is not None and _in_event_loop()
        while self.queue and self.linking is None:
            if apart and time.monotonic() < self._resume_at:
                self._rest()
                return
            change, start = self.queue.popleft()
            stop = start + SLICE
            if stop < len(change):
                self.queue.appendleft((change, stop))
            serving = change.serving
            assert serving is not None  # only changes for a model are queued
            staged = serving.stage(change, start, stop)
            link = functools.partial(_timed, functools.partial(serving.index.link, staged))
            if not apart or self.searcher is None:
                self._linked(change, start, stop, _failure(link))
                continue
            linking = asyncio.get_running_loop().run_in_executor(self.searcher, link)
            self.linking = linking
            linking.add_done_callback(functools.partial(self._done, change, start, stop))

    def _rest(self) -> None:
        if self._resuming is None:
            delay = max(0.0, self._resume_at - time.monotonic())
            self._resuming = asyncio.get_running_loop().call_later(delay, self._resume)

    def _resume(self) -> None:
        self._resuming = None
        self.advance()

    def _done(
        self, change: CatalogChange, start: int, stop: int, linking: asyncio.Future[float]
    ) -> None:
        self.linking = None
        failed = linking.exception()
        if failed is None:
            self._resume_at = time.monotonic() + linking.result() * (1 / LINK_DUTY - 1)
        self._linked(change, start, stop, failed)
        self.advance()

    def _linked(
        self, change: CatalogChange, start: int, stop: int, failed: BaseException | None
    ) -> None:
        """Count a linked slice; swap in a model that now holds the whole catalog; log."""
        self.steps += 1
        n = len(change.live[start:stop])
        if failed is not None:  # a verified model should not get here; keep serving
            metrics.ITEMS_FAILED.inc(n)
            log.error("catalog upserts not applied (%s: %s)", type(failed).__name__, failed)
        elif not change.whole:
            metrics.ITEMS.inc(n)
        done = stop >= len(change)
        incoming = self.incoming
        if change.whole and incoming is not None and change.serving is incoming:
            if done:
                self.incoming = None
                self.swap(incoming)
            elif time.monotonic() >= self._progress_at:
                self._progress_at = time.monotonic() + PROGRESS_S
                log.info(
                    "model %s: %d of %d catalog items in its index",
                    incoming.version,
                    stop,
                    len(change),
                )
            return
        if done:
            self._applied.append(change)
            metrics.observe_model(change.serving)  # the index's size
        if self._applied and not self.queue:
            self._log_applied()

    def _log_applied(self) -> None:
        applied, self._applied = self._applied, []
        items = [item for change in applied for item in change.items]
        named = ", ".join(item.item_id for item in items[:NAMED])
        more = ", ..." if len(items) > NAMED else ""
        received = sum(change.received for change in applied)
        log.info("catalog: %d upserts applied (%s%s)", received, named, more)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _timed(link: Callable[[], None]) -> float:
    """Run `link`; the seconds it took."""
    started = time.perf_counter()
    link()
    return time.perf_counter() - started


def _failure(function: Callable[[], object]) -> BaseException | None:
    """What `function()` raised, if anything."""
    try:
        function()
    except Exception as exc:
        return exc
    return None
