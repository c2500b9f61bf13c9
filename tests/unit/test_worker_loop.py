"""The pipeline's loop and the faust adapter's workarounds, without a broker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionrec.models.codec import encode
from sessionrec.models.config import Settings
from sessionrec.models.records import Event, Item
from sessionrec.stream.delivery import unless_done
from sessionrec.stream.kafka import OutMessage
from sessionrec.stream.pipeline import Incoming, Pending, Pipeline
from sessionrec.stream.watch import Watcher

T0 = 1_700_000_000_000


class _Sink:
    """Delivers what it is sent when told to: `deliver()` resolves every batch sent so far."""

    def __init__(self) -> None:
        self.sent: list[OutMessage] = []
        self.waiting: list[asyncio.Future[None]] = []

    def send(self, messages: list[OutMessage]) -> asyncio.Future[None]:
        self.sent.extend(messages)
        done = asyncio.get_running_loop().create_future()
        self.waiting.append(done)
        return done

    def deliver(self) -> None:
        for done in self.waiting:
            if not done.done():
                done.set_result(None)

    def take_retried(self) -> int:
        return 0

    def take_dropped(self) -> dict[str, int]:
        return {}


async def _batches(
    batches: list[list[Event]], between: asyncio.Event | None = None
) -> AsyncIterator[tuple[list[Incoming], list[Any]]]:
    offset = 0
    for events in batches:
        incoming = []
        for e in events:
            incoming.append(Incoming(e.user_id.encode(), encode(e), 0, offset))
            offset += 1
        yield incoming, [m.offset for m in incoming]
        if between is not None:
            await between.wait()


def test_run_acknowledges_each_batch_once_all_it_produced_is_delivered() -> None:
    store: dict[str, bytes] = {}
    pipeline = Pipeline(Settings(), None, store, "changelog", clock=lambda: 5)
    sink = _Sink()
    pipeline.connect(sink)
    acked: list[int] = []
    batches = [
        [Event("u1", "a", "view", T0), Event("u2", "b", "view", T0)],
        [Event("u1", "c", "buy", T0 + 1)],
    ]

    async def ack(offset: int) -> None:
        acked.append(offset)

    async def scenario() -> list[list[int]]:
        seen = []
        run = asyncio.ensure_future(pipeline.run(_batches(batches), ack))
        await asyncio.sleep(0.05)
        seen.append(list(acked))  # nothing delivered: nothing acked
        sink.deliver()
        await asyncio.sleep(0.05)
        sink.deliver()  # the recommendations, sent once the batch was finished
        await asyncio.sleep(0.05)
        seen.append(list(acked))
        await run
        return seen

    assert asyncio.run(scenario()) == [[], [0, 1, 2]]
    topics = [topic for topic, _, _, _ in sink.sent]
    assert topics.count("changelog") == 3 and topics.count("recommendations") == 3
    answers = [orjson.loads(v) for t, _, v, _ in sink.sent if t == "recommendations"]
    assert [(a["user_id"], a["item_id"]) for a in answers] == [
        ("u1", "a"),
        ("u2", "b"),
        ("u1", "c"),
    ]
    assert orjson.loads(store["u1"])["bought"] == ["c"]


def test_a_failed_delivery_stops_the_run() -> None:
    pipeline = Pipeline(Settings(), None, {}, "changelog")
    sink = _Sink()
    pipeline.connect(sink)

    async def ack(offset: int) -> None:
        pass

    async def scenario() -> None:
        gate = asyncio.Event()
        run = asyncio.ensure_future(
            pipeline.run(_batches([[Event("u1", "a", "view", T0)]] * 12, gate), ack)
        )
        await asyncio.sleep(0.05)
        sink.waiting[0].set_exception(RuntimeError("output refused 5 times"))
        gate.set()
        await run

    with pytest.raises(RuntimeError, match="refused 5 times"):
        asyncio.run(scenario())


class _GatedPending(Pending):
    """A batch whose index search runs until the gate opens."""

    gate = threading.Event()

    def search(self) -> Any:
        self.gate.wait(10)
        return None


def test_catalog_updates_are_taken_while_a_search_reads_the_index(tmp_path: Path) -> None:
    """The loop never waits for a search to take upserts: with a model, the graph takes them
    in the searcher thread after the search (tests/unit/training/test_catalog.py)."""
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(metrics_port=0)
    pipeline = Pipeline(settings, None, {})
    watcher = Watcher(settings, tmp_path, None)
    pipeline.connect(_Sink(), watcher)
    watcher._on_item(b"new-item", encode(Item("new-item", name="tent")))
    watcher._prepare()

    async def scenario() -> list[bool]:
        searcher = ThreadPoolExecutor(1)
        pending = _GatedPending([], pipeline.prepare([]).out, {}, [], None, None)
        found = pipeline._start_search(searcher, pending)
        pipeline.between_batches()  # a search runs: the upsert is taken all the same
        seen = [watcher.take() != (None, []), pipeline.live("new-item"), found.done()]
        pending.gate.set()
        await found
        searcher.shutdown()
        return seen

    assert asyncio.run(scenario()) == [False, True, False]
    assert not pipeline.searches


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

    from sessionrec.stream.faust_adapter import GC_YOUNG_THRESHOLD, tune_gc

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

    from sessionrec.stream.faust_adapter import keep_queued_on_resume

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


def test_another_faust_version_stops_the_worker_at_start() -> None:
    from sessionrec.stream.faust_adapter import (
        FAUST_VERSION,
        FaustVersionError,
        check_faust_version,
    )

    check_faust_version()  # the pinned one is installed
    with pytest.raises(
        FaustVersionError, match=f"faust-streaming is 0.16.0, expected {FAUST_VERSION}"
    ):
        check_faust_version("0.16.0")


def test_a_line_repeated_by_a_failing_reconnect_is_logged_once_per_window() -> None:
    import logging

    from sessionrec.stream.faust_adapter import RepeatFilter

    repeats = RepeatFilter(window_s=60.0)

    def record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)

    passed = [
        repeats.filter(record("aiokafka.conn", logging.ERROR, "Unable connect to %r", f"node{i}"))
        for i in range(100)
    ]
    assert passed == [True] + [False] * 99
    assert repeats.filter(record("aiokafka.client", logging.ERROR, "Other failure"))
    assert repeats.filter(
        record("sessionrec.stream.pipeline", logging.ERROR, "Unable connect to %r", "x")
    )
    assert all(repeats.filter(record("aiokafka.conn", logging.INFO, "connected")) for _ in range(3))
    since, count = repeats.seen[("aiokafka.conn", "Unable connect to %r")]
    repeats.seen[("aiokafka.conn", "Unable connect to %r")] = (since - 61.0, count)  # a minute on
    late = record("aiokafka.conn", logging.ERROR, "Unable connect to %r", "node")
    assert repeats.filter(late) and "(and 99 times more in the last 60 s)" in late.getMessage()
    # librdkafka's lines share one template: the same text (numbers aside) is one line.
    down = "[thrd:b:9092/bootstrap]: b:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: "
    lines = [
        record("librdkafka", logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", down + t)
        for t in (
            "Connection refused (after 0ms in state CONNECT)",
            "Connection refused (after 3ms in state CONNECT, 4 identical error(s) suppressed)",
        )
    ]
    other = record("librdkafka", logging.ERROR, "%s [%s] %s", "SSL", "rdkafka#consumer-2", "bad")
    assert [repeats.filter(line) for line in (*lines, lines[0], other)] == [True, True, False, True]


def test_refused_catalog_history_is_one_line_then_each_refusal_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    watcher = Watcher(Settings(metrics_port=0), tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="sessionrec.stream.watch"):
        for n in range(50):  # what a compacted topic hands every start
            watcher._on_item(b"k", b"{not json %d" % n)
        watcher._on_item(b"gone", None)  # a tombstone is a delete, not a refusal
        watcher._caught_up()
        watcher._on_item(b"k", b"[]")
        watcher._prepare()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("50 item upserts in items refused (first: item: payload is not")
    assert lines[1].startswith("refused item upsert: item: payload is JSON list")
    assert watcher.take()[1][0].items == [Item("gone", deleted=True)]


def test_the_watcher_starts_again_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionrec.stream import metrics, watch

    monkeypatch.setattr(watch, "RESTART_S", 0.01)
    watcher = Watcher(Settings(metrics_port=0), tmp_path, None)
    calls: list[int] = []

    def follow() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("the broker said something odd")
        watcher.stop()

    monkeypatch.setattr(watcher, "_follow", follow)
    errors = metrics.WATCHER_ERRORS._value.get()
    watcher.run()
    assert len(calls) == 3 and metrics.WATCHER_ERRORS._value.get() == errors + 2
    assert metrics.WATCHER_UP._value.get() == 1


def test_faust_gets_a_private_data_directory_of_its_own() -> None:
    import stat

    from sessionrec.stream.faust_adapter import _datadir

    first, second = _datadir("group/with:odd chars"), _datadir("group/with:odd chars")
    assert first != second and first.is_dir()
    assert stat.S_IMODE(first.stat().st_mode) == 0o700


def test_metrics_listen_on_the_address_they_are_given() -> None:
    import socket
    import urllib.request

    from sessionrec.stream import metrics
    from sessionrec.stream.broker import free_port

    port = free_port()
    metrics.serve(port, "127.0.0.1")
    assert b"sessionrec_" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
    other = [a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    for address in {a for a in other if not a.startswith("127.")}:
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
            pass
