from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from models.codec import encode
from models.config import Settings
from models.records import Item
from stream.app import Runtime
from stream.processor import Output, Pending
from stream.take import unless_done


class _GatedPending(Pending):
    """A batch whose index search runs until the gate opens."""

    gate = threading.Event()

    def search(self) -> Any:
        self.gate.wait(10)
        return None


def test_catalog_updates_wait_while_a_search_reads_the_index(tmp_path: Path) -> None:
    runtime = Runtime(Settings(metrics_port=0), tmp_path)
    runtime.watcher._on_item(encode(Item("new-item", name="tent")))

    async def scenario() -> list[bool]:
        searcher = ThreadPoolExecutor(1)
        pending = _GatedPending(Output(), {}, [], None, None)
        found = runtime.search(searcher, pending)
        waiting = []
        runtime.between_batches()  # a search runs: the upsert must wait
        waiting.append(runtime.watcher.waiting())
        pending.gate.set()
        await runtime.searches_done()
        waiting.append(found.done())
        runtime.between_batches()  # no search now: the upsert is taken
        waiting.append(runtime.watcher.waiting())
        searcher.shutdown()
        return waiting

    assert asyncio.run(scenario()) == [True, True, False]
    assert not runtime.searches


def test_a_failed_finisher_stops_the_agent_waiting_on_it() -> None:
    async def scenario() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue(1)
        queue.put_nowait(0)  # full: the next put waits for the finisher

        async def finisher() -> None:
            await asyncio.sleep(0.01)
            raise RuntimeError("output refused 5 times")

        task = asyncio.ensure_future(finisher())
        await unless_done(task, queue.put(1))

    with pytest.raises(RuntimeError, match="refused 5 times"):
        asyncio.run(scenario())


def test_the_agent_goes_on_while_the_finisher_runs() -> None:
    async def scenario() -> int:
        queue: asyncio.Queue[int] = asyncio.Queue(1)
        task = asyncio.ensure_future(asyncio.sleep(10))
        await unless_done(task, queue.put(1))
        task.cancel()
        return queue.qsize()

    assert asyncio.run(scenario()) == 1


def test_tune_gc_freezes_startup_objects_and_collects_less_often() -> None:
    import gc

    from stream.app import GC_YOUNG_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_resuming_flowing_flow_keeps_what_is_queued() -> None:
    from types import SimpleNamespace

    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    from stream.faust_patches import keep_queued_on_resume

    app = SimpleNamespace(flow_control=FlowControlEvent())
    keep_queued_on_resume(app)
    queue: FlowControlQueue[str] = FlowControlQueue(
        flow_control=app.flow_control, clear_on_resume=True
    )
    queue.put_nowait("read before the rebalance")
    app.flow_control.resume()  # suspended -> flowing: the stale event is dropped
    assert queue.qsize() == 0 and app.flow_control.is_active()
    queue.put_nowait("read after the seek")
    app.flow_control.resume()  # already flowing (faust's second resume after a restore)
    assert queue.get_nowait() == "read after the seek"
    queue.put_nowait("read before the next rebalance")
    app.flow_control.suspend()
    app.flow_control.resume()
    assert queue.qsize() == 0
