"""The faust-streaming worker: events -> sessions table -> recommendations.

Thin adapter around `stream.processor.Processor`. The session table keys users (JSON) and its
changelog partitions line up with those of `events`: each state is written with the partition
of the event that changed it, so a restarted worker restores exactly the users it serves.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.types import TP

from models.artifact import ArtifactError
from models.config import Settings
from stream import faust_patches, metrics
from stream.kafka import Outbox, OutMessage, producer_config
from stream.processor import ODDITIES, Incoming, Output, Pending, Processor
from stream.serving import ServingModel, load_current
from stream.take import Deduplicator, InOrderAcks, take_batches, unless_done
from stream.watch import Watcher

log = logging.getLogger(__name__)
BATCH_MAX = 500
# A batch waits up to this long for more events. Fewer, larger batches mean fewer, larger record
# batches for the outputs and the changelog: the embedded broker's cost of serving a reader grows
# with the number of record batches already in the partition (docs/operating.md).
BATCH_WITHIN_S = 0.02
QUIET_WITHIN_S = 0.005  # after a batch of a few events: light load, answer sooner
LINGER_MS = 5  # librdkafka's default: outputs of one batch go out as one request per partition
MAX_UNDELIVERED_BATCHES = 8
# Batches whose index search runs (in its thread) while the agent prepares the next ones.
SEARCHES_AHEAD = 2
IDLE_CHECK_S = 10.0
CLOSE_TIMEOUT_S = 30.0
DELIVERY_ATTEMPTS = 5
STATS_LOG_S = 10.0
LAG_EVERY_S = 1.0  # the consumer-lag gauge is updated at most this often
# Python's cyclic garbage collector, by default, runs after every 700 net allocations and from
# time to time walks every object; sessions are renewed on each event, so it kept scanning all
# users' states (about 15 % of a simulated worker's time). Objects alive at startup (model,
# libraries) are frozen out of its walks, and it runs far less often; reference counting still
# frees everything that is not in a cycle at once.
GC_YOUNG_THRESHOLD = 100_000


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


class BatchStats:
    """Rolling figures for the periodic log line: events, batches, compute and publish time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.events = self.batches = 0
        self.compute_s = self.publish_s = self.age_ms_sum = 0.0
        self.aged = 0
        self.since = time.monotonic()

    def ingest(self, batch: list[Incoming]) -> None:
        """How old events are when their batch starts (produced -> picked up)."""
        now_ms = time.time() * 1000
        ages = [now_ms - m.produced_ms for m in batch if m.produced_ms]
        if ages:
            self.age_ms_sum += sum(ages)
            self.aged += len(ages)

    def add(self, events: int, compute_s: float, publish_s: float) -> None:
        self.events += events
        self.batches += 1
        self.compute_s += compute_s
        self.publish_s += publish_s

    def line(self) -> str:
        span = max(time.monotonic() - self.since, 1e-9)
        b = max(self.batches, 1)
        return (
            f"{self.events / span:,.0f} events/s over {span:.0f}s: {self.batches} batches "
            f"(mean {self.events / b:.0f} events), compute {1000 * self.compute_s / b:.1f} "
            f"ms/batch, publish {1000 * self.publish_s / b:.1f} ms/batch, picked up "
            f"{self.age_ms_sum / max(self.aged, 1):.1f} ms after produce"
        )


class Runtime:
    """The worker's state outside faust: processor, watcher and counters."""

    def __init__(self, settings: Settings, model_dir: Path):
        self.settings = settings
        self.model_dir = model_dir
        serving: ServingModel | None = None
        try:
            serving = load_current(model_dir, settings.weights, ef=settings.index_ef)
        except ArtifactError as exc:
            log.error("current model unusable, serving trending items until one loads: %s", exc)
        if serving is None:
            log.warning("no model in %s yet: answering with trending items", model_dir)
        self.processor = Processor(settings, serving)
        self.stats = BatchStats()
        self.watcher = Watcher(settings, model_dir, serving.version if serving else None)
        self.outbox: Outbox | None = None
        self.searches: set[asyncio.Future[Any]] = set()  # index searches running in their thread
        self.counted = self.processor.counters.copy()  # counters as the metrics last saw them
        self._publish_model()

    def _publish_model(self) -> None:
        serving = self.processor.serving
        metrics.MODEL.info({"version": serving.version if serving else "none"})
        metrics.INDEX_SIZE.set(len(serving.index) if serving else 0)

    def between_batches(self) -> None:
        """Swap in a loaded model and apply catalog upserts, unless a batch's search is reading
        the index (then they wait for a later call)."""
        if self.searches:
            return
        model, items = self.watcher.take()
        if model is not None:
            old = self.processor.serving.version if self.processor.serving else "none"
            self.processor.swap(model)
            metrics.MODEL_SWAPS.inc()
            log.info("swapped model %s -> %s between batches", old, model.version)
        if items and self.processor.serving is not None:
            metrics.ITEMS.inc(self.processor.serving.apply_items(items))
        if model is not None or items:
            self._publish_model()

    async def searches_done(self) -> None:
        """Wait until no batch's search is running."""
        if self.searches:
            await asyncio.wait(set(self.searches))

    def search(self, searcher: ThreadPoolExecutor, pending: Pending) -> asyncio.Future[Any]:
        """Start the batch's index search in the `searcher` thread."""
        found = asyncio.get_running_loop().run_in_executor(searcher, pending.search)
        self.searches.add(found)
        found.add_done_callback(self.searches.discard)
        return found

    def count(self) -> None:
        """Add what the processor's counters gained since the last call to the metrics."""
        now, last = self.processor.counters, self.counted
        for outcome in ("accepted", "rejected"):
            metrics.EVENTS.labels(outcome).inc(now[outcome] - last[outcome])
        metrics.EMITTED.inc(now["emitted"] - last["emitted"])
        metrics.UNKNOWN.inc(now["unknown_item"] - last["unknown_item"])
        metrics.SESSIONS.inc(now["sessions_closed"] - last["sessions_closed"])
        for kind in ODDITIES:
            metrics.ODDITIES.labels(kind).inc(now[kind] - last[kind])
        self.counted = now.copy()


@dataclass
class _Searching:
    """A prepared batch whose index search runs; `sent` resolves once its states are
    delivered. A batch with no fresh events has no `pending`."""

    batch: list[Any]
    sent: asyncio.Future[Any]
    pending: Pending | None = None
    found: asyncio.Future[Any] | None = None
    incoming: list[Incoming] = field(default_factory=list)
    prepare_s: float = 0.0


def build_app(settings: Settings, model_dir: Path) -> tuple[faust.App, Runtime]:
    faust_patches.short_fetch_wait()
    faust_patches.true_changelog_ends(settings.bootstrap)
    brokers = [f"kafka://{b.strip()}" for b in settings.bootstrap.split(",") if b.strip()]
    app = faust.App(
        settings.worker_group,
        broker=brokers,
        store="memory://",
        # The tables live in memory (their changelog is the durable copy); faust still wants a
        # data directory, which would otherwise appear as `<group>-data` wherever it started.
        datadir=_faust_datadir(settings.worker_group),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        web_enabled=False,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_max_poll_interval=300.0,
        broker_rebalance_timeout=6.0,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_commit_interval=1.0,
        producer_linger_ms=LINGER_MS,
    )
    faust_patches.keep_queued_on_resume(app)
    runtime = Runtime(settings, model_dir)
    t = settings.topics
    events = _raw_topic(app, t.events, settings.partitions)
    # States are stored as the encoded JSON the changelog holds (value_type bytes: faust reads
    # the changelog's values raw; keys stay JSON): bytes, which Python's garbage collector never
    # walks. Decoded, 20,000 users' states were about 335,000 more objects for it to walk.
    table = app.Table("user-sessions", partitions=settings.partitions, value_type=bytes)

    # Outputs and the session table's changelog go through librdkafka, far cheaper per message
    # than faust's pure-Python producer; faust restores the table from that changelog (JSON
    # keys and values, as the table's schema reads them).
    outbox = Outbox(
        producer_config(settings.bootstrap, **{"linger.ms": LINGER_MS}), DELIVERY_ATTEMPTS
    )
    runtime.outbox = outbox
    changelog = table.changelog_topic.get_topic_name()

    searcher = ThreadPoolExecutor(1, thread_name_prefix="search")

    def recommendation_messages(out: Output) -> list[OutMessage]:
        return [(t.recommendations, k.encode(), v, None) for k, v, _ in out.recommendations]

    def publish(out: Output) -> asyncio.Future[None]:
        """Write the states, send them and the outputs; the future resolves once all are
        delivered."""
        # States first and with no await before: the agent and the idle timer each read and
        # write a user's state without yielding in between, so neither overwrites the other.
        messages: list[OutMessage] = []
        for user, (partition, state) in out.states.items():
            table.data[user] = state
            messages.append((changelog, orjson.dumps(user), state, partition))
        messages.extend(recommendation_messages(out))
        messages.extend((t.dlq, dk, dv, None) for dk, dv in out.dlq)
        messages.extend((t.sessions, sk.encode(), sv, None) for sk, sv in out.sessions)
        return outbox.send(messages)

    @app.agent(events)
    async def handle(stream: Any) -> None:
        dedup = Deduplicator()
        # A batch's events are acked once its outputs are delivered (at-least-once), while
        # the next batches are already being handled.
        acks = InOrderAcks(stream, MAX_UNDELIVERED_BATCHES)
        try:
            await _handle_batches(stream, dedup, acks)
        finally:
            acks.close()

    async def _handle_batches(stream: Any, dedup: Deduplicator, acks: InOrderAcks) -> None:
        """Prepare each batch and start its index search; `_finish_batches` completes the
        batches in order while the next ones are prepared."""
        proc = runtime.processor
        searching: asyncio.Queue[_Searching] = asyncio.Queue(SEARCHES_AHEAD)
        finisher = asyncio.ensure_future(_finish_batches(searching, acks))
        try:
            async for batch in take_batches(stream, BATCH_MAX, BATCH_WITHIN_S, QUIET_WITHIN_S):
                if runtime.watcher.waiting():  # a new model or upserts: let the searches end
                    await unless_done(finisher, runtime.searches_done())
                runtime.between_batches()
                incoming = [
                    Incoming(
                        e.key,
                        e.value,
                        e.message.partition,
                        e.message.offset,
                        int(e.message.timestamp * 1000) if e.message.timestamp else None,
                    )
                    for e in batch
                    if dedup.fresh(e.message.partition, e.message.offset)
                ]
                metrics.DUPLICATES.inc(dedup.take_dropped())
                metrics.REDELIVERED.inc(outbox.take_retried())
                for partition, offset, highest in dedup.take_out_of_order():
                    log.warning(
                        "events partition %d handed out offset %d after offset %d: processed "
                        "(a message delivered out of order is new, not a repeat)",
                        partition,
                        offset,
                        highest,
                    )
                if not incoming:  # acked in turn, after the batches before it
                    await unless_done(finisher, searching.put(_Searching(batch, outbox.send([]))))
                    continue
                runtime.stats.ingest(incoming)
                t0 = time.perf_counter()
                pending = proc.prepare(incoming, table.data.get)
                # The batch's new states (and closed sessions, rejects) are written and sent
                # before its search starts: the idle timer, which may run meanwhile, finds them.
                sent = publish(pending.out)
                # The search runs in a thread (hnswlib releases the GIL) while the event loop
                # reads and prepares the next batches; nothing changes the index meanwhile
                # (see `Runtime.between_batches`).
                found = runtime.search(searcher, pending)
                prepared = _Searching(
                    batch, sent, pending, found, incoming, time.perf_counter() - t0
                )
                await unless_done(finisher, searching.put(prepared))
        finally:
            finisher.cancel()

    async def _finish_batches(searching: asyncio.Queue[_Searching], acks: InOrderAcks) -> None:
        proc = runtime.processor
        lag_due = 0.0
        while True:
            s = await searching.get()
            if s.pending is None or s.found is None:
                await acks.add(s.sent, s.batch)
                continue
            found = await s.found
            t0 = time.perf_counter()
            out = proc.complete(s.pending, found)
            t1 = time.perf_counter()
            # `out` is the batch's published Output, now with its recommendations: only those
            # are left to send.
            recommendations = outbox.send(recommendation_messages(out))
            await acks.add(asyncio.gather(s.sent, recommendations), s.batch)
            runtime.stats.add(len(s.batch), s.prepare_s + t1 - t0, time.perf_counter() - t1)
            runtime.count()
            _observe(s.incoming)
            if time.monotonic() >= lag_due:  # the gauge asks faust per partition: 1/s
                lag_due = time.monotonic() + LAG_EVERY_S
                _observe_lag(app, t.events, s.incoming)

    @app.timer(interval=IDLE_CHECK_S)
    async def close_idle_sessions() -> None:
        proc = runtime.processor
        out = Output()
        for user, partition in proc.idle_users(table.data):
            proc.close_idle(user, table.data.get(user), out, partition)
        if out.states:
            await publish(out)
            runtime.count()

    @app.timer(interval=1.0)
    async def follow_updates() -> None:
        runtime.between_batches()

    @app.timer(interval=STATS_LOG_S)
    async def log_stats() -> None:
        if runtime.stats.events:
            log.info("%s", runtime.stats.line())
        runtime.stats.reset()

    @app.task
    async def start_watcher() -> None:
        runtime.watcher.start()
        faust_patches.no_event_sensors(app)
        tune_gc()  # the app and model are built by now

    return app, runtime


def tune_gc() -> None:
    """Freeze what exists now (the model, the libraries) out of the collector's walks and let it
    run less often (see GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    log.info(
        "garbage collector: %d startup objects frozen, runs after %d allocations",
        gc.get_freeze_count(),
        GC_YOUNG_THRESHOLD,
    )


def _faust_datadir(group: str) -> Path:
    path = Path(tempfile.gettempdir()) / "sessionrec-faust" / group
    path.mkdir(parents=True, exist_ok=True)
    return path


def _observe_lag(app: faust.App, topic: str, batch: list[Incoming]) -> None:
    """Consumer lag per partition: the partition's high watermark minus what was processed."""
    last: dict[int, int] = {}
    for msg in batch:
        last[msg.partition] = max(last.get(msg.partition, -1), msg.offset)
    for partition, offset in last.items():
        try:
            high = app.consumer.highwater(TP(topic, partition))
        except Exception:  # the consumer may be rebalancing; lag is best effort
            continue
        if high is not None:
            metrics.LAG.labels(str(partition)).set(max(0, int(high) - offset - 1))


def _observe(batch: list[Incoming]) -> None:
    now = time.time()
    metrics.BATCH.observe(len(batch))
    for msg in batch:
        if msg.produced_ms:
            metrics.LATENCY.observe(max(0.0, now - msg.produced_ms / 1000.0))


def run_worker(
    settings: Settings,
    model_dir: Path,
    loglevel: str = "info",
    logging_config: dict[str, Any] | None = None,
) -> None:
    """Run one worker until SIGINT/SIGTERM. `logging_config` (dictConfig) replaces faust's
    default console logging, e.g. for JSON lines."""
    metrics.serve(settings.metrics_port)
    app, runtime = build_app(settings, model_dir)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, logging_config=logging_config)
    try:
        worker.execute_from_commandline()
    finally:
        runtime.watcher.stop()
        if runtime.outbox is not None:
            left = runtime.outbox.close(CLOSE_TIMEOUT_S)
            if left:
                log.warning(
                    "%d output messages undelivered at shutdown (their events are read again)", left
                )
