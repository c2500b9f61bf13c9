"""Everything the worker needs from faust-streaming beyond its public API, in one place.

faust runs the consumer group, restores the session table from its changelog and runs the
timers; `stream.pipeline` does the rest. Each item below says what it replaces, why, and what
happens on Apache Kafka. They are written against faust-streaming FAUST_VERSION:
`check_faust_version` stops the worker at start-up on any other version, so that an upgrade
fails loudly instead of silently skipping a patch.

1. `take_batches` replaces `Stream.take_events`, using `Stream` internals
   (`_enable_passive`, `_processors`, `current_event`). faust's own batching can lose
   events: while the agent handles a batch, its reader wakes and clears the *current* batch
   future, which may already belong to the next batch, and events added then are acked
   without ever being handed out. Here a batch is swapped out of the buffer before it is
   handed out. Broker-independent.
2. `session_store` hands the pipeline the table's in-memory dict (`Table.data`) to write
   states into directly, bypassing faust's per-write changelog producer: the pipeline sends
   the changelog messages itself, with the outputs, through librdkafka (far cheaper per
   message), keyed and partitioned as faust would, so faust restores from them.
   Broker-independent.
3. `short_fetch_wait` caps aiokafka's `fetch_max_wait_ms`, which faust hard-codes to 1500:
   the embedded broker (Tansu) holds a fetch for its full wait when no data is ready, which
   made that wait the latency floor. On Apache Kafka a fetch returns as soon as data arrives;
   the cap only makes idle polls more frequent.
4. `true_changelog_ends` wraps `Recovery._build_highwaters`: the embedded broker reports a
   high watermark of the last record batch's base offset + 1 (short of the end when that
   batch holds several records), so faust would restore part of the sessions. Each reported
   high watermark is checked by reading from it - 1 to the end (for an active partition;
   a standby's end need only be past the records held, see 12). On Apache Kafka that read
   finds exactly the reported value.
5. `keep_queued_on_resume` makes `FlowControlEvent.resume` empty the stream queues only when
   flow was suspended. faust resumes flow a second time after a table restore, while it
   seeks the event partitions; events fetched in between were dropped from the queue while
   later ones of their partition were acked, so their offsets were committed unanswered.
   Broker-independent.
6. `no_event_sensors` takes faust's Monitor out of the per-event sensor calls: it times
   every message in Python, and nothing reads it (faust's statistics pages are off; the
   worker serves its own Prometheus metrics). Broker-independent.
7. `tune_gc` changes process-wide garbage-collector settings: objects alive at start-up
   (model, libraries) are frozen out of its walks and it runs after GC_YOUNG_THRESHOLD
   allocations instead of 700, since the session table renews objects on every event.
   Reference counting still frees everything not in a cycle at once. Broker-independent.
8. `RepeatFilter` (installed by `on_start` on the root logger's handlers): aiokafka, faust and
   librdkafka log every failed reconnect while the broker is down, many lines a second; an identical
   line (same logger and message template) is logged once, then at most once per
   REPEAT_WINDOW_S with the number of repeats. Broker-independent.
9. `highwater` reads a partition's high watermark from faust's consumer for the lag gauge
   (`app.consumer`, not part of faust's documented API). On the embedded broker the value
   counts record batches (see 4), so the gauge reads low there.
10. `broker_credentials` maps the `[kafka]` table's TLS and SASL properties (librdkafka's
   names, which the confluent-kafka clients take as they are) to faust's credentials
   (SSL, SASL PLAIN and SCRAM-SHA-256/512, over TLS or not), and refuses at start any
   `ssl.*`/`sasl.*` property that faust's aiokafka client cannot honour. Broker-independent.
11. `no_commits_while_rebalancing` makes faust's periodic offset commit skip its turn while
   the group rebalances. A commit sent then waits behind the JoinGroup request on the
   coordinator's connection and is answered after the join with an old generation; aiokafka
   then forgets the generation it has just joined and joins again (one more rebalance, seconds
   for every partition). The commit is made at the first turn after the rebalance.
   Broker-independent: Apache Kafka answers such a commit the same way.
12. `keep_standbys` makes faust's standby replicas useful with the in-memory store: faust's
   memory store says it has no offset for any partition (so a standby promoted to active
   restores the partition from its first record anyway) and drops every key of a standby
   partition after each recovery. Here the store remembers the last changelog offset it
   holds for each partition it keeps (applied from the changelog, or written by this worker),
   restores from there, and keeps the standby partitions' keys. This also spares a worker
   from reading again the partitions it keeps through a rebalance. Broker-independent.
13. `partition_owners` reads which worker's URL owns each partition of a topic from faust's
   router (`external_topics_metadata`: the assignor's record of the group's assignment, each
   member's URL included). The query API routes a user's request by it. faust's own
   `topic_route` forwards without a timeout or the request's token, and back again when two
   workers disagree during a rebalance; `stream.api` forwards once, with both. `recovered`
   reads whether the table manager's recovery has completed once (`app.tables.recovery`, not
   in faust's types), for the API's readiness. Broker-independent.
14. `commits_follow_answers` makes a committed offset of the events topic never pass an event
   that was not answered. faust's `_new_offset` lets the head of a partition stay unanswered
   (`min(acked) - committed > 1`, and no check at all while nothing is committed), its
   `_add_gap` counts the message after a hole as answered before it is handled, its
   `perform_seek` leaves the read offset one past what was read (so a hole at the committed
   offset is never seen), and offsets counted twice (a gap and an ack) split the answered run,
   so that commits crawled one run per commit interval after a rebalance. Here a partition's
   commit is the end of the consecutive run of answered offsets (and holes the fetcher saw)
   starting at its committed offset, or at the first offset read since it was assigned.
   Records fetched before their partition was moved (a seek or a new assignment: aiokafka
   resets the position, but faust's fetch thread may already hold records read at the old
   one, which it would hand out after the seek as a "gap" and then drop the re-read copies)
   are dropped: the partition is read again from where it was moved to. Broker-independent.
15. `restarts_survive_rebalances` turns any failure inside faust's table-restore steps
   (`Recovery._wait`) into a restart of the restore when a new rebalance has begun meanwhile
   (faust's `_restart_recovery` otherwise crashes the worker: a seek to a partition no longer
   assigned, or to the `None` offset of a partition assigned since the offsets were built), and
   never seeks to `None` (such a partition is read from its start). Broker-independent.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import re
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import TP

from ..models.config import Settings
from .kafka import consumer_config
from .pipeline import Incoming

log = logging.getLogger(__name__)
FAUST_VERSION = "0.15.3"
FETCH_MAX_WAIT_MS = 10
REBALANCE_TIMEOUT_S = 6.0
HEARTBEATS_PER_SESSION = 3  # heartbeats within one session timeout (Kafka's advice: at least 3)
PROBE_TIMEOUT_S = 10.0
GC_YOUNG_THRESHOLD = 100_000
QUIET_BATCH = 4  # a batch smaller than this means light load (see take_batches)
_applied: set[str] = set()


class FaustVersionError(RuntimeError):
    """The installed faust-streaming is not the version these workarounds were written for."""


def check_faust_version(installed: str | None = None) -> None:
    found = installed if installed is not None else str(faust.__version__)
    if found != FAUST_VERSION:
        raise FaustVersionError(
            f"faust-streaming is {found}, expected {FAUST_VERSION}: stream/faust_adapter.py "
            "reaches into its internals; check each item there against the new version, "
            "then change FAUST_VERSION"
        )


def make_app(
    settings: Settings, linger_ms: int, web_port: int, web_url: str, web_options: dict[str, Any]
) -> faust.App:
    """The faust app, with every workaround applied that must precede its consumer. Its web
    server serves the query API on `web_port`, announced to the group as `web_url`, with
    aiohttp's `web_options`; faust's own pages (router, tables, statistics) are off."""
    check_faust_version()
    kafka = dict(settings.kafka)
    credentials = broker_credentials(kafka)  # refuses what faust's client cannot honour
    short_fetch_wait()
    true_changelog_ends(settings)
    no_commits_while_rebalancing()
    commits_follow_answers()
    restarts_survive_rebalances()
    brokers = [f"kafka://{b.strip()}" for b in settings.bootstrap.split(",") if b.strip()]
    app = faust.App(
        settings.worker_group,
        broker=brokers,
        store="memory://",
        # Tables live in memory (the changelog is the durable copy); faust still wants a
        # data directory, which would otherwise appear wherever the worker started.
        datadir=_datadir(settings.worker_group),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topic_layout.replication_factor,  # the changelog too
        table_standby_replicas=settings.standby_replicas,
        web_enabled=True,
        web_bind=settings.api.address,
        web_port=web_port,
        canonical_url=web_url,
        web_application_options=web_options,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        # A worker killed without leaving is noticed after the session timeout; heartbeats
        # come from aiokafka's own thread, so a busy event loop does not miss them.
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / HEARTBEATS_PER_SESSION),
        broker_max_poll_interval=300.0,
        broker_rebalance_timeout=REBALANCE_TIMEOUT_S,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_commit_interval=1.0,
        producer_linger_ms=linger_ms,
        broker_credentials=credentials,
        broker_client_id=kafka.get("client.id", "sessionrec-worker"),
    )
    keep_queued_on_resume(app)
    return app


def _datadir(group: str) -> Path:
    """A directory of this process's own (mode 0700), removed when it exits."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in group)[:60]
    path = Path(tempfile.mkdtemp(prefix=f"sessionrec-faust-{safe}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def on_start(app: faust.App) -> None:
    """What is applied once the app runs: the sensors are registered, the model is loaded,
    faust has set up logging."""
    no_event_sensors(app)
    tune_gc()
    quiet_repeats()


# -- 1. Batches -------------------------------------------------------------------------------


async def take_batches(
    stream: Any, max_events: int, within_s: float, quiet_within_s: float | None = None
) -> AsyncIterator[tuple[list[Incoming], list[Any]]]:
    """Yield (events as `Incoming`, their faust events to acknowledge) of up to `max_events`:
    as soon as that many are buffered, or `within_s` after the last batch. With
    `quiet_within_s`, a batch after one of fewer than QUIET_BATCH events waits only that long:
    under light load an event is not held back for a batch that will not come. Nothing is
    acked here: the caller acks each faust event once its outputs are delivered."""
    pending: list[Any] = []
    full = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def add(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("stream has no current event to buffer")
        pending.append(event)
        if len(pending) >= max_events:
            full.set()
            room.clear()
            await stream.wait(room)  # backpressure: stop reading until the batch is taken
        return value

    acks_were = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))
    wait_s = within_s if quiet_within_s is None else quiet_within_s
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(full, timeout=wait_s)
            full.clear()
            if not pending:
                continue
            if quiet_within_s is not None:
                wait_s = within_s if len(pending) >= QUIET_BATCH else quiet_within_s
            batch = pending[:]
            pending.clear()
            room.set()
            yield [_incoming(e) for e in batch], batch
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(add)


def _incoming(event: Any) -> Incoming:
    msg = event.message
    produced_ms = int(msg.timestamp * 1000) if msg.timestamp else None
    return Incoming(event.key, event.value, msg.partition, msg.offset, produced_ms)


# -- 2. The session table ---------------------------------------------------------------------


def session_store(table: Any) -> tuple[MutableMapping[str, bytes], str]:
    """The table's in-memory data, to write states into without faust's changelog producer,
    and the changelog topic the caller must send each written state to."""
    return table.data, str(table.changelog_topic.get_topic_name())


# -- 3. Fetch wait ----------------------------------------------------------------------------


def short_fetch_wait() -> None:
    import aiokafka

    if "short_fetch_wait" in _applied:
        return
    original = aiokafka.AIOKafkaConsumer

    class ShortWaitConsumer(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = min(
                kwargs.get("fetch_max_wait_ms", 500), FETCH_MAX_WAIT_MS
            )
            super().__init__(*args, **kwargs)

    aiokafka.AIOKafkaConsumer = ShortWaitConsumer
    _applied.add("short_fetch_wait")


# -- 4. Changelog ends ------------------------------------------------------------------------


def true_changelog_ends(settings: Settings) -> None:
    """Restore tables up to the real end of their changelog partitions."""
    from faust.tables.recovery import Recovery

    if "true_changelog_ends" in _applied:
        return
    original = Recovery._build_highwaters

    async def _build_highwaters(
        self: Any, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        if title == "standby":
            # Standbys read on without an end; faust only checks that the end is past what
            # the store holds, so that is taken as the end instead of reading for it.
            held = {tp: self.tp_to_table[tp].persisted_offset(tp) for tp in tps}
            ends = cast(Any, _AtLeastHeld(consumer, held))
        else:
            ends = cast(Any, _TrueEnds(consumer, settings))
        await original(self, ends, tps, destination, title)

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
    _applied.add("true_changelog_ends")


class _TrueEnds:
    """A faust consumer whose `highwaters` are the partitions' real log ends."""

    def __init__(self, consumer: Any, settings: Settings):
        self.consumer = consumer
        self.settings = settings

    async def highwaters(self, *tps: Any) -> dict[Any, int | None]:
        reported = dict(await self.consumer.highwaters(*tps))
        return await asyncio.to_thread(log_ends, self.settings, reported)


class _AtLeastHeld:
    """A faust consumer whose `highwaters` are at least past the records the store holds."""

    def __init__(self, consumer: Any, held: dict[Any, int | None]):
        self.consumer = consumer
        self.held = held

    async def highwaters(self, *tps: Any) -> dict[Any, int | None]:
        reported = dict(await self.consumer.highwaters(*tps))
        for tp, offset in self.held.items():
            if offset is not None:
                reported[tp] = max(reported.get(tp) or 0, offset + 1)
        return reported


def log_ends(
    settings: Settings, reported: dict[Any, int | None], timeout_s: float = PROBE_TIMEOUT_S
) -> dict[Any, int | None]:
    """The offset after the last record of each partition, reading from `reported` - 1.
    `reported` maps faust TPs (topic, partition) to the broker's high watermarks."""
    from confluent_kafka import Consumer, TopicPartition

    probe = {tp: high for tp, high in reported.items() if high}
    if not probe:
        return reported
    consumer = Consumer(
        consumer_config(
            settings,
            "sessionrec-log-ends",
            **{"enable.auto.commit": False, "fetch.wait.max.ms": 10},
        )
    )
    ends = dict(reported)
    found: dict[tuple[str, int], int] = {}
    try:
        consumer.assign(
            [TopicPartition(tp.topic, tp.partition, high - 1) for tp, high in probe.items()]
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            messages = consumer.consume(1000, 0.2)
            for msg in messages:
                if msg.error() is None:
                    key = (str(msg.topic()), int(msg.partition() or 0))
                    found[key] = max(found.get(key, -1), int(msg.offset() or 0) + 1)
            if not messages and len(found) == len(probe):
                break
    finally:
        consumer.close()
    for tp, high in probe.items():
        end = found.get((tp.topic, tp.partition))
        if end is None:
            log.warning("could not read the end of %s[%d]: restoring up to %d", *tp, high)
        elif end > high:
            log.info("%s[%d] ends at %d (broker reported %d)", tp.topic, tp.partition, end, high)
            ends[tp] = end
    return ends


# -- 5. Flow control --------------------------------------------------------------------------


def keep_queued_on_resume(app: Any) -> None:
    """Make `app.flow_control.resume()` empty the queues it manages only when flow was
    suspended: what is queued while flow is active was read since the last rebalance and is
    still wanted (the streams drop anything read in an earlier generation)."""
    flow = app.flow_control
    resume = flow.resume

    def resume_keeping_queued() -> None:
        if flow.is_active():
            return
        resume()

    flow.resume = resume_keeping_queued


# -- 6. Sensors -------------------------------------------------------------------------------


def no_event_sensors(app: Any) -> None:
    """Take faust's Monitor out of the sensors called for every message (after the app added
    it at start-up)."""
    if app.monitor in set(app.sensors):
        app.sensors.remove(app.monitor)
        log.info("faust's per-event monitor sensor is off")


# -- 7. Garbage collector ---------------------------------------------------------------------


def tune_gc() -> None:
    """Freeze what exists now (the model, the libraries) out of the collector's walks and let it
    run less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    log.info(
        "garbage collector: %d startup objects frozen, runs after %d allocations",
        gc.get_freeze_count(),
        GC_YOUNG_THRESHOLD,
    )


# -- 8. Repeated log lines --------------------------------------------------------------------


class RepeatFilter(logging.Filter):
    """Lets the first of identical WARNING+ lines of the `loggers` through, then one per
    `window_s` saying how often it was repeated. Lines are the same when their template is
    (librdkafka's, whose template is always "%s [%s] %s": when their text is, numbers aside)."""

    def __init__(
        self,
        loggers: tuple[str, ...] = ("aiokafka", "faust", "mode", "librdkafka"),
        window_s: float = 60.0,
    ):
        super().__init__()
        self.loggers = loggers
        self.window_s = window_s
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.loggers):
            return True
        key = (record.name, str(record.msg))
        if record.name == "librdkafka":
            key = (record.name, _NUMBERS.sub("#", record.getMessage()))
        now = time.monotonic()
        since, repeats = self.seen.get(key, (-self.window_s - 1, 0))
        if now - since <= self.window_s:
            self.seen[key] = (since, repeats + 1)
            return False
        self.seen[key] = (now, 0)
        if repeats:
            record.msg = (
                f"{record.msg} (and {repeats} times more in the last {self.window_s:.0f} s)"
            )
        return True


REPEAT_WINDOW_S = 60.0
_NUMBERS = re.compile(r"\d+")


def quiet_repeats() -> None:
    repeats = RepeatFilter(window_s=REPEAT_WINDOW_S)
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)


# -- 9. High watermarks -----------------------------------------------------------------------


def highwater(app: faust.App, topic: str) -> Callable[[int], int | None]:
    """A partition of `topic` -> its high watermark as faust's consumer knows it (None while
    the consumer cannot say, e.g. during a rebalance)."""

    def of(partition: int) -> int | None:
        try:
            high = app.consumer.highwater(TP(topic, partition))
        except Exception:  # the consumer may be rebalancing; lag is best effort
            return None
        return None if high is None else int(high)

    return of


# -- 10. Secured clusters ---------------------------------------------------------------------

# [kafka] properties the worker's faust (aiokafka) client honours, besides the confluent-kafka
# clients; any other `ssl.*`/`sasl.*`/`security.*` property is refused at start (the worker
# would otherwise connect without it), and other properties apply to confluent-kafka only.
FAUST_PROPERTIES = frozenset(
    {
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "ssl.endpoint.identification.algorithm",
        "client.id",
    }
)
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


def broker_credentials(kafka: dict[str, str]) -> Any:
    """faust's credentials for the [kafka] table's security properties (None: plaintext);
    ValueError naming a property the worker's faust client cannot honour."""
    refused = [
        name
        for name in kafka
        if name.startswith(("ssl.", "sasl.", "security.")) and name not in FAUST_PROPERTIES
    ]
    if refused:
        raise ValueError(
            f"setting 'kafka.{refused[0]}' cannot be honoured by the worker's Kafka client "
            "(faust/aiokafka); see docs/kafka.md for what it takes"
        )
    protocol = kafka.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"setting 'kafka.security.protocol' is {protocol!r}, expected one of {PROTOCOLS}"
        )
    context = _ssl_context(kafka) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = kafka.get("sasl.mechanism", kafka.get("sasl.mechanisms", "PLAIN")).upper()
    if mechanism not in SASL_MECHANISMS:
        raise ValueError(
            f"setting 'kafka.sasl.mechanism' is {mechanism!r}: the worker's Kafka client takes "
            f"{', '.join(SASL_MECHANISMS)}"
        )
    return faust.SASLCredentials(
        username=kafka.get("sasl.username"),
        password=kafka.get("sasl.password"),
        ssl_context=context,
        mechanism=mechanism,
    )


def _ssl_context(kafka: dict[str, str]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=kafka.get("ssl.ca.location"))
        if "ssl.certificate.location" in kafka:
            context.load_cert_chain(
                kafka["ssl.certificate.location"],
                kafka.get("ssl.key.location"),
                kafka.get("ssl.key.password"),
            )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"setting 'kafka.ssl.*': cannot load the TLS files ({exc})") from None
    if kafka.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    return context


# -- 11. Commits during a rebalance -----------------------------------------------------------


def no_commits_while_rebalancing() -> None:
    from faust.transport.consumer import Consumer

    if "no_commits_while_rebalancing" in _applied:
        return
    original = Consumer.commit

    async def commit(self: Any, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self.app.rebalancing:
            return False  # the acked offsets stay pending: the next turn commits them
        return bool(await original(self, topics, start_new_transaction=start_new_transaction))

    Consumer.commit = commit  # type: ignore[method-assign]
    _applied.add("no_commits_while_rebalancing")


# -- 12. Standby replicas ---------------------------------------------------------------------


def keep_standbys(table: Any, changed: Callable[[list[Any]], None]) -> Callable[[int, int], None]:
    """Make the table's in-memory store restore each partition from the last changelog offset
    it holds, and keep the keys of the partitions it is a standby for; `changed` is called
    with the keys of each batch applied from the changelog. Returns the function to call
    with (partition, offset) for each changelog message this worker wrote (the pipeline
    writes states into the store itself, then sends their changelog messages)."""
    store = table.data
    ends: dict[int, int] = {}  # changelog partition -> last offset whose record is in memory
    kept: set[int] | None = None  # partitions active or standby here (None: before the first)
    apply_batch = store.apply_changelog_batch

    def held(partition: int, offset: int) -> None:
        if kept is not None and partition not in kept:
            return  # a late delivery for a partition given away: its keys are gone
        if offset > ends.get(partition, -1):
            ends[partition] = offset

    def apply_changelog_batch(batch: Any, to_key: Any, to_value: Any) -> None:
        batch = list(batch)
        apply_batch(batch, to_key, to_value)
        for event in batch:
            held(event.message.partition, event.message.offset)
        changed([to_key(event.key) for event in batch])

    def persisted_offset(tp: TP) -> int | None:
        return ends.get(tp.partition)

    async def on_recovery_completed(active_tps: set[TP], standby_tps: set[TP]) -> None:
        nonlocal kept
        kept = {tp.partition for tp in active_tps | standby_tps}
        for key, partition in list(store._key_partition.items()):
            if partition not in kept:
                store.data.pop(key, None)
                del store._key_partition[key]
        for partition in list(ends):
            if partition not in kept:  # its keys are gone: restore it from the start
                del ends[partition]

    store.apply_changelog_batch = apply_changelog_batch
    store.persisted_offset = persisted_offset
    store.on_recovery_completed = on_recovery_completed
    return held


# -- 13. Who owns a partition -------------------------------------------------------------------


def recovered(app: faust.App) -> bool:
    """Whether the session table has been restored from its changelog at least once."""
    return bool(cast(Any, app.tables).recovery.completed.is_set())


def partition_owners(app: faust.App, topic: str) -> dict[int, str]:
    """Partition of `topic` -> the URL of the worker it is assigned to, as the group's last
    assignment says (empty before the first, or if faust's router cannot say)."""
    try:
        hosts = app.router.external_topics_metadata()
    except Exception:  # before the first assignment the assignor may hold nothing
        return {}
    return {
        partition: str(url) for url, topics in hosts.items() for partition in topics.get(topic, ())
    }


# -- 14. Commits follow the answers -----------------------------------------------------------


def commits_follow_answers() -> None:
    from aiokafka.consumer.fetcher import Fetcher
    from aiokafka.consumer.subscription_state import SubscriptionState
    from faust.transport.consumer import Consumer

    if "commits_follow_answers" in _applied:
        return

    # aiokafka side: count each move of a partition's read position, and stamp each batch of
    # fetched records with the counts when it was taken from the fetcher.
    seek, assign = SubscriptionState.seek, SubscriptionState.assign_from_subscribed
    reset, fetched = Fetcher.request_offset_reset, Fetcher.fetched_records

    def seek_counted(self: Any, tp: Any, offset: int) -> None:
        _moved(self, [tp])
        seek(self, tp, offset)

    def assign_counted(self: Any, assignment: Any) -> None:
        _moved(self, assignment)
        assign(self, assignment)

    def reset_counted(self: Any, tps: Any, strategy: Any) -> Any:
        _moved(self._subscriptions, tps)
        return reset(self, tps, strategy)

    async def fetched_stamped(self: Any, *args: Any, **kwargs: Any) -> _Fetched:
        return _Fetched(await fetched(self, *args, **kwargs), _moves(self._subscriptions))

    SubscriptionState.seek = seek_counted
    SubscriptionState.assign_from_subscribed = assign_counted
    Fetcher.request_offset_reset = reset_counted
    Fetcher.fetched_records = fetched_stamped

    # faust side: hand out no record fetched before its partition moved, read on from one
    # before the committed offset, and commit only runs of answers.
    wait_next, getmany, perform_seek = (
        Consumer._wait_next_records,
        Consumer.getmany,
        Consumer.perform_seek,
    )

    async def wait_next_records(self: Any, timeout: float) -> Any:
        records, active = await wait_next(self, timeout)
        self._sessionrec_fetched = records
        return records, active

    async def getmany_current(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        stale: dict[TP, int] = {}
        async for tp, message in getmany(self, timeout):
            fetched = getattr(self, "_sessionrec_fetched", None)
            if isinstance(fetched, _Fetched) and fetched.moved_since(tp):
                stale[tp] = stale.get(tp, 0) + 1
                continue
            if self._committed_offset.get(tp) is None:
                _heads(self).setdefault(tp, message.offset)
            yield tp, message
        for tp, count in stale.items():
            log.info(
                "%d records of %s[%d] fetched before it was moved are dropped: read again",
                count,
                tp.topic,
                tp.partition,
            )

    async def perform_seek_before(self: Any) -> None:
        await perform_seek(self)
        _heads(self).clear()
        for tp, offset in list(self._read_offset.items()):
            if offset:  # the last offset read is the one before the committed one
                self._read_offset[tp] = offset - 1

    Consumer._wait_next_records = wait_next_records  # type: ignore[method-assign]
    Consumer.getmany = getmany_current  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek_before  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    _applied.add("commits_follow_answers")


def _moves(subscriptions: Any) -> dict[tuple[str, int], int]:
    moves: dict[tuple[str, int], int] = subscriptions.__dict__.setdefault("_sessionrec_moves", {})
    return moves


def _moved(subscriptions: Any, tps: Any) -> None:
    moves = _moves(subscriptions)
    for tp in tps:
        key = (tp.topic, tp.partition)
        moves[key] = moves.get(key, 0) + 1


class _Fetched(dict):  # type: ignore[type-arg]
    """Fetched records (TP -> records) with the move counts of their partitions then."""

    def __init__(self, records: Any, moves: dict[tuple[str, int], int]):
        super().__init__(records)
        self.moves = moves  # live: counts on as partitions move
        self.taken = {
            (tp.topic, tp.partition): moves.get((tp.topic, tp.partition), 0) for tp in records
        }

    def moved_since(self, tp: Any) -> bool:
        key = (tp.topic, tp.partition)
        return self.moves.get(key, 0) != self.taken.get(key, 0)


def _heads(consumer: Any) -> dict[TP, int]:
    """The first offset read since the last seek of each partition of `consumer` that has no
    committed offset: its commits start there."""
    heads: dict[TP, int] = consumer.__dict__.setdefault("_sessionrec_heads", {})
    return heads


def _new_offset(self: Any, tp: TP) -> int | None:
    """The offset to commit for `tp`: the end of the consecutive run of answered offsets (or
    holes the fetcher saw) that starts at the committed offset; None when the offset there is
    not answered yet."""
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    top = max(acked)
    gaps = self._gap[tp]
    if gaps:  # offsets that hold no record, seen as holes between two records read
        for hole in gaps.overlap(0, top + 1):
            acked.extend(range(hole.begin, min(hole.end, top + 1)))
        gaps.chop(0, top + 1)
    committed = self._committed_offset[tp]
    head = committed if committed is not None else _heads(self).get(tp)
    answered = sorted({offset for offset in acked if head is None or offset >= head})
    if not answered or (head is not None and answered[0] != head):
        acked[:] = answered
        self._acked_index[tp] = set(answered)
        return None
    end = 1
    while end < len(answered) and answered[end] == answered[end - 1] + 1:
        end += 1
    acked[:] = answered[end:]
    self._acked_index[tp] = set(acked)
    return answered[end - 1] + 1


async def _add_gap(self: Any, tp: TP, offset_from: int, offset_to: int) -> None:
    """Record the offsets from `offset_from` up to (not including) `offset_to`, the record just
    read, as a hole: the broker holds no record there (a transaction marker, a compacted or
    aborted record)."""
    committed = self._committed_offset[tp]
    if committed is not None:
        offset_from = max(offset_from, committed)
    if offset_from < offset_to:
        gaps = self._gap[tp]
        gaps.addi(offset_from, offset_to)
        gaps.merge_overlaps()


# -- 15. Restores survive rebalances ----------------------------------------------------------


def restarts_survive_rebalances() -> None:
    from faust.tables.recovery import RebalanceAgain, Recovery, ServiceStopped

    if "restarts_survive_rebalances" in _applied:
        return
    wait, seek_offsets = Recovery._wait, Recovery._seek_offsets

    async def wait_or_restart(self: Any, coro: Any, timeout: Any = None) -> None:
        generation = self.app.consumer_generation_id
        try:
            await wait(self, coro, timeout=timeout)
        except (RebalanceAgain, ServiceStopped):
            raise
        except Exception as exc:
            if self.signal_recovery_start.is_set() or (
                self.app.consumer_generation_id != generation
            ):
                log.info("a rebalance arrived during the table restore (%r): restarting it", exc)
                raise RebalanceAgain() from exc
            raise

    async def seek_known_offsets(
        self: Any, consumer: Any, tps: Any, offsets: Any, title: str
    ) -> None:
        if self.signal_recovery_start.is_set():
            raise RebalanceAgain()  # offsets of partitions assigned since may be unknown
        for tp in tps:
            if offsets.get(tp) is None:
                log.warning("no %s offset known for %s[%d]: reading it from its start", title, *tp)
                offsets[tp] = -1
        await seek_offsets(self, consumer, tps, offsets, title)

    Recovery._wait = wait_or_restart  # type: ignore[method-assign]
    Recovery._seek_offsets = seek_known_offsets  # type: ignore[method-assign]
    _applied.add("restarts_survive_rebalances")
