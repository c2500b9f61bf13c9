"""`sessionrec bench stream`: a broker, a worker, a load generator in its own process, and a
consumer timing event-produced -> recommendation-consumed for each fixed rate.

All on this machine: the broker, the worker, the generator and the consumer share its cores.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sessionrec.models.codec import encode
from sessionrec.models.config import Settings
from sessionrec.models.records import Event
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.kafka import consumer_config, produce, producer_config, ready_messages
from sessionrec.stream.launch import WorkerProcess, on_local_broker

JOIN_TIMEOUT_S = 60.0
CONNECT_S = 30.0
DRAIN_S = 90.0
DRAIN_IDLE_S = 10.0
LOADGEN_LINGER_MS = 5
LOADGEN_ROUND_S = LOADGEN_LINGER_MS / 1000  # the generator produces what is due once per linger


@dataclass(frozen=True, slots=True)
class RateResult:
    rate: float
    sent: int
    received: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    # CPU the worker and the broker used while the rate ran (and drained), in % of one core.
    worker_cpu_pct: float = 0.0
    broker_cpu_pct: float = 0.0
    partitions: int = 0  # of each topic (the worker reads all of them)
    # The same CPU per recommendation received, in microseconds.
    worker_us_per_event: float = 0.0
    broker_us_per_event: float = 0.0
    # "sessionrec", or "echo": the faust floor (`benchmarks.floor`), the worker with a pipeline
    # that only echoes each event's time
    pipeline: str = "sessionrec"
    workers: int = 1  # worker processes in the consumer group; CPU figures add them up
    # CPU of the workers together with no events, before the rate ran (0: not measured)
    idle_worker_cpu_pct: float = 0.0

    def row(self) -> str:
        return (
            f"{self.target():>8} {self.sent:>8} {self.received:>9} {self.throughput:>10,.0f} "
            f"{self.p50_ms:>8.1f} {self.p95_ms:>8.1f} {self.p99_ms:>8.1f} {self.max_ms:>8.1f} "
            f"{self.worker_cpu_pct:>7.0f}% {self.broker_cpu_pct:>7.0f}% {self.partitions:>10} "
            f"{self.worker_us_per_event:>9.0f} {self.broker_us_per_event:>9.0f} "
            f"{self.pipeline:>10} {self.workers:>7}"
        )

    def target(self) -> str:
        return "max" if self.rate <= 0 else f"{self.rate:,.0f}"

    def label(self) -> str:
        """The run in words, as plots and raw latencies name it."""
        rate = "max rate" if self.rate <= 0 else f"{self.target()} events/s"
        label = f"{rate}, {self.partitions} partition{'s' if self.partitions != 1 else ''}"
        if self.workers > 1:
            label += f", {self.workers} workers"
        return label if self.pipeline == "sessionrec" else f"{label}, {self.pipeline} pipeline"


HEADER = (
    f"{'rate/s':>8} {'sent':>8} {'received':>9} {'recs/s':>10} {'p50 ms':>8} "
    f"{'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'worker':>8} {'broker':>8} {'partitions':>10} "
    f"{'worker us':>9} {'broker us':>9} {'pipeline':>10} {'workers':>7}"
)


class Walkers:
    """Users walking through real sessions, one event at a time: each event is the next click
    of a user drawn at random, who starts another session when theirs ends."""

    def __init__(self, sessions: list[list[str]], users: int, seed: int):
        self.sessions = sessions
        self.rng = np.random.default_rng(seed)
        self.cursors = [(int(self.rng.integers(len(sessions))), 0) for _ in range(users)]

    def next(self, ts_ms: int) -> Event:
        u = int(self.rng.integers(len(self.cursors)))
        s, pos = self.cursors[u]
        if pos >= len(self.sessions[s]):
            s, pos = int(self.rng.integers(len(self.sessions))), 0
        self.cursors[u] = (s, pos + 1)
        return Event(f"bench-{u}", self.sessions[s][pos], "view", ts_ms)


def generate(
    settings: Settings,
    topic: str,
    sessions: list[list[str]],
    rate: float,
    seconds: float,
    users: int,
    seed: int,
    sent: Any,  # a multiprocessing.Value("i") shared with the parent
) -> None:
    """Load generator (own process): users walk through real sessions; ts = produce time."""
    from confluent_kafka import Producer

    # A shop's producer as librdkafka configures it by default (linger 5 ms): events of a few
    # milliseconds go out together, not one request each.
    producer = Producer(producer_config(settings, **{"linger.ms": LOADGEN_LINGER_MS}))
    # Connected before the clock starts: the first events would otherwise wait in the
    # producer for its connection and metadata, time that no shop's running producer pays.
    producer.list_topics(topic, timeout=CONNECT_S)
    walkers = Walkers(sessions, users, seed)
    start = time.perf_counter()
    n = 0
    event: Event | None = None
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) + 1 if rate > 0 else n + 500
        while n < due:
            event = event or walkers.next(int(time.time() * 1000))
            try:
                producer.produce(topic, key=event.user_id.encode(), value=encode(event))
            except BufferError:  # the producer's queue is full: the same event once it has room
                producer.poll(0.01)
                continue
            event = None
            n += 1
        producer.poll(0)
        if rate > 0:
            time.sleep(LOADGEN_ROUND_S)
    producer.flush(30)
    sent.value = n


def _consume(
    settings: Settings,
    topic: str,
    stop: threading.Event,
    out: list[tuple[float, int]],
    since_ms: float,
    assigned: threading.Event,
) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        consumer_config(
            settings,
            f"bench-{time.time_ns()}",
            **{"auto.offset.reset": "earliest", "fetch.wait.max.ms": 5},
        )
    )
    consumer.subscribe([topic], on_assign=lambda _c, _p: assigned.set())
    while not stop.is_set():
        for msg in ready_messages(consumer, 0.05):
            value = msg.value()
            if msg.error() or value is None:
                continue
            now = time.time() * 1000
            event_ts = orjson.loads(value)["event_ts"]
            if event_ts >= since_ms:  # earlier rates' messages are not this run's
                out.append((now - event_ts, int(now)))
    consumer.close()


def run_rate(
    settings: Settings,
    sessions: list[list[str]],
    rate: float,
    seconds: float,
    users: int,
    with_load: Callable[[], None] | None = None,
    received: list[tuple[float, int]] | None = None,
) -> tuple[RateResult, list[float]]:
    """`rate` events/s for `seconds` from the generator; `with_load` is called as it starts
    (another load to run alongside, e.g. the API benchmark's requests). `received`, if given,
    gets each answer's (latency ms, time received in Unix ms)."""
    received = [] if received is None else received
    stop = threading.Event()
    assigned = threading.Event()
    started = time.time() * 1000
    reader = threading.Thread(
        target=_consume,
        args=(
            settings,
            settings.topics.recommendations,
            stop,
            received,
            started,
            assigned,
        ),
        daemon=True,
    )
    reader.start()
    # Produce only once the reader has its partitions: otherwise the first events' latency
    # would include the reader's own group join (seconds on the embedded broker).
    if not assigned.wait(JOIN_TIMEOUT_S):
        raise RuntimeError(f"benchmark reader got no partitions in {JOIN_TIMEOUT_S:.0f}s")
    producing_ms = time.time() * 1000
    ctx = mp.get_context("spawn")
    sent = ctx.Value("i", 0)
    gen = ctx.Process(
        target=generate,
        args=(settings, settings.topics.events, sessions, rate, seconds, users, 7, sent),
    )
    gen.start()
    if with_load is not None:
        with_load()
    gen.join()
    # Wait for the backlog to drain, so that the next rate starts on an idle worker.
    wait_for(received, lambda: len(received) >= sent.value, DRAIN_IDLE_S, DRAIN_S)
    stop.set()
    reader.join()
    latencies = np.array([lat for lat, _ in received], dtype=np.float64)
    done = [ts for _, ts in received]
    span_s = max((max(done) - producing_ms) / 1000.0, 1e-9) if done else 1.0
    pct = np.percentile(latencies, [50, 95, 99]) if len(latencies) else np.zeros(3)
    result = RateResult(
        rate,
        int(sent.value),
        len(received),
        len(received) / span_s,
        float(pct[0]),
        float(pct[1]),
        float(pct[2]),
        float(latencies.max()) if len(latencies) else 0.0,
    )
    return result, latencies.tolist()


def wait_for(
    received: list[Any], done: Callable[[], bool], idle_s: float, within_s: float = math.inf
) -> None:
    """Until `done()`, or nothing new has arrived in `received` for `idle_s`, or `within_s`
    has passed."""
    deadline = time.monotonic() + within_s
    count, moved = -1, time.monotonic()
    while not done() and time.monotonic() < deadline:
        if len(received) != count:
            count, moved = len(received), time.monotonic()
        elif time.monotonic() - moved > idle_s:
            return
        time.sleep(0.1)


def srgnn_sessions(data: Path, limit: int = 20000) -> list[list[str]]:
    """Whole test sessions of an SR-GNN split, to walk through as real users would.

    test.tsv lists each session's prefixes longest first, so a line whose prefix is not
    shorter than the previous one starts a new session.
    """
    sessions: list[list[str]] = []
    previous = 0
    for line in (data / "test.tsv").read_text().splitlines():
        prefix, _, target = line.partition("\t")
        items = prefix.split()
        if len(items) >= previous or not sessions:
            sessions.append([*items, target.strip()])
        previous = len(items)
    return sessions[:limit]


def bench_stream(
    settings: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    rates: Sequence[float],
    seconds: float,
    users: int,
    log_dir: Path,
    one_broker: bool = False,
    echo: bool = False,
    workers: int = 1,
    idle_s: float = 0.0,
) -> tuple[list[RateResult], dict[str, list[float]], str]:
    """Run each rate on a broker and worker of its own (started, warmed up, stopped), or all
    rates on one with `one_broker`; return results and raw latencies (by `RateResult.label`).
    The embedded broker serves a reader more slowly as a partition fills with record batches
    (`broker_cost_as_log_fills`), so on one broker each rate would also pay for the logs of the
    rates before it. With `echo`, the worker is the faust floor (`benchmarks.floor`) instead.
    With several `workers`, they share the partitions as one consumer group; their CPU is
    added up. With `idle_s`, their CPU with no events is measured that long before each rate."""
    from sessionrec.benchmarks import floor

    results: list[RateResult] = []
    raw: dict[str, list[float]] = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    groups = [list(rates)] if one_broker else [[rate] for rate in rates]
    tail = ""
    for group in groups:
        with EmbeddedBroker(port=0) as broker:
            on_broker = on_local_broker(settings, broker.bootstrap, model_dir)
            command = floor.command(on_broker, log_dir / "floor-settings") if echo else None
            group_of = [
                WorkerProcess(on_broker, log_dir / f"bench-worker-{i}.log", command).start()
                for i in range(workers)
            ]
            try:
                for worker in group_of:
                    worker.wait_ready()
                # Warm up; with several workers, also past the rebalance the last join began.
                run_rate(on_broker, sessions, 200, 3.0 + 4.0 * (workers - 1), users)
                for rate in group:
                    idle_pct = _idle_cpu_pct(group_of, idle_s) if idle_s else 0.0
                    worker_s = sum(w.cpu_seconds() for w in group_of)
                    broker_s = broker.cpu_seconds()
                    started = time.monotonic()
                    result, lat = run_rate(on_broker, sessions, rate, seconds, users)
                    wall = max(time.monotonic() - started, 1e-9)
                    worker_s = sum(w.cpu_seconds() for w in group_of) - worker_s
                    broker_s = broker.cpu_seconds() - broker_s
                    per_event = 1e6 / max(result.received, 1)
                    result = replace(
                        result,
                        worker_cpu_pct=100 * worker_s / wall,
                        broker_cpu_pct=100 * broker_s / wall,
                        partitions=on_broker.partitions,
                        worker_us_per_event=worker_s * per_event,
                        broker_us_per_event=broker_s * per_event,
                        pipeline="echo" if echo else "sessionrec",
                        workers=workers,
                        idle_worker_cpu_pct=idle_pct,
                    )
                    print(result.row(), flush=True)
                    results.append(result)
                    raw[result.label()] = lat
            finally:
                for worker in group_of:
                    worker.stop()
            tail = group_of[0].tail_log(3)
    return results, raw, tail


def _idle_cpu_pct(workers: list[WorkerProcess], seconds: float) -> float:
    """The CPU the workers use together while no events arrive, in % of one core."""
    before, started = sum(w.cpu_seconds() for w in workers), time.monotonic()
    time.sleep(seconds)
    used = sum(w.cpu_seconds() for w in workers) - before
    return 100 * used / (time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class WorkerCost:
    """CPU per event of the worker's own code, in microseconds, at a batch size."""

    query: str  # the query parameters: the defaults, or a peer's
    batch: int
    events: int
    queries_per_event: float
    prepare_us: float
    search_us: float
    finish_us: float
    total_us: float
    events_per_core_second: float


COST_ROUNDS = 3  # runs of each setting per batch size, alternating; the median is reported
NO_RESCORING = "defaults, no re-scoring"


def worker_cost(
    settings: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    users: int,
    batches: Sequence[int],
    events: int = 30_000,
    warm: int = 2_000,
    seed: int = 7,
) -> list[WorkerCost]:
    """What the `Pipeline` costs per event with no broker and no faust around it, at each batch
    size: the events the load generator would send, in batches of that size, through prepare
    (admit, sessionize, plan), the index search (one thread, as the worker's) and finish
    (merge, explain, encode), on the worker's model, with user states kept as the
    worker's table keeps them. CPU time of this thread, after `warm` events that are not
    counted. The model is loaded once; each run starts from no users.

    Beside the defaults, the same without re-scoring (`transition_weight` and `return_weight`
    0: no transitions, no returns, and the search only as deep as the list): COST_ROUNDS runs
    of each, alternating, and the run of median total reported for each."""
    from sessionrec.models.serving import load_current

    serving = load_current(model_dir, settings.weights, ef=settings.index_ef)
    if serving is None:
        raise ValueError(f"no model in {model_dir}")
    plain = replace(
        settings, query=replace(settings.query, transition_weight=0.0, return_weight=0.0)
    )
    out: list[WorkerCost] = []
    for batch in batches:
        runs: dict[str, list[WorkerCost]] = {"defaults": [], NO_RESCORING: []}
        for _ in range(COST_ROUNDS):
            for name, run_settings in (("defaults", settings), (NO_RESCORING, plain)):
                walkers = Walkers(sessions, users, seed)
                cost = _cost(run_settings, serving, walkers, batch, events, warm)
                runs[name].append(replace(cost, query=name))
        for costs in runs.values():
            out.append(sorted(costs, key=lambda c: c.total_us)[len(costs) // 2])
    return out


def _cost(
    settings: Settings, serving: Any, walkers: Walkers, batch: int, events: int, warm: int
) -> WorkerCost:
    from sessionrec.stream.pipeline import Incoming, Pipeline

    pipeline = Pipeline(settings, serving, {})
    spent = [0.0, 0.0, 0.0]
    queries = counted = 0
    offset = 0
    while counted < events:
        incoming = []
        for _ in range(batch):
            event = walkers.next(int(time.time() * 1000))
            incoming.append(Incoming(event.user_id.encode(), encode(event), 0, offset))
            offset += 1
        t0 = time.thread_time()
        pending = pipeline.prepare(incoming)
        t1 = time.thread_time()
        found = pending.search()
        t2 = time.thread_time()
        pipeline.finish(pending, found)
        t3 = time.thread_time()
        if offset <= warm:
            continue
        counted += batch
        queries += len(pending.plan.queries) if pending.plan is not None else 0
        for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3))):
            spent[i] += b - a
    prepare, search, finish = (1e6 * x / counted for x in spent)
    total = prepare + search + finish
    return WorkerCost(
        "",
        batch,
        counted,
        queries / counted,
        prepare,
        search,
        finish,
        total,
        1e6 / max(total, 1e-9),
    )


def serve_prefixes(
    settings: Settings,
    model_dir: Path,
    prefixes: list[list[str]],
    log_dir: Path,
    timeout_s: float = 300.0,
) -> list[list[str]]:
    """Replay each prefix as a new user's session through a real broker and worker; return, per
    prefix, the item ids of the recommendation the worker published for its last event."""
    from confluent_kafka import Consumer, Producer

    t0 = 1_700_000_000_000
    last_ts = {f"case-{i}": t0 + 1000 * (len(p) - 1) for i, p in enumerate(prefixes)}
    answers: dict[str, list[str]] = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(port=0) as broker:
        settings = on_local_broker(settings, broker.bootstrap, model_dir, "bench-quality")
        worker = WorkerProcess(settings, log_dir / "quality-worker.log").start()
        try:
            worker.wait_ready()
            producer = Producer(producer_config(settings))
            for i, prefix in enumerate(prefixes):
                for j, item in enumerate(prefix):
                    event = Event(f"case-{i}", item, "view", t0 + 1000 * j)
                    produce(producer, settings.topics.events, event.user_id.encode(), encode(event))
                producer.poll(0)
            producer.flush(60)
            consumer = Consumer(consumer_config(settings, "bench-quality-reader"))
            consumer.subscribe([settings.topics.recommendations])
            deadline = time.monotonic() + timeout_s
            while len(answers) < len(prefixes) and time.monotonic() < deadline:
                for msg in consumer.consume(2000, 0.5):
                    value = msg.value()
                    if msg.error() or value is None:
                        continue
                    rec = orjson.loads(value)
                    if rec["event_ts"] == last_ts.get(rec["user_id"]):
                        answers[rec["user_id"]] = [r["item_id"] for r in rec["items"]]
            consumer.close()
        finally:
            worker.stop()
    return [answers.get(f"case-{i}", []) for i in range(len(prefixes))]


@dataclass(frozen=True, slots=True)
class BrokerCost:
    batches_in_log: int
    produce_requests_per_s: float
    broker_cpu_percent: float


def broker_cost_as_log_fills(
    fills: Sequence[int] = (0, 4000, 12000), partitions: int = 4, seconds: float = 5.0
) -> list[BrokerCost]:
    """The embedded broker's CPU for a steady trickle of one-record produce requests (under 100
    a second) that a reader follows at the head of the log, as the log fills with one-record
    batches: the broker's cost grows with the batches already in the partition."""
    from confluent_kafka import Consumer, Producer

    from sessionrec.stream.topics import TopicSpec, create_topics

    rows = []
    with EmbeddedBroker(port=0) as broker:
        cpu = broker.cpu_seconds
        local = Settings(bootstrap=broker.bootstrap)
        create_topics(local, [TopicSpec("cost", partitions)])
        producer = Producer(producer_config(local, **{"linger.ms": 0}))
        # A reader following the head of the log, as the worker follows `events`.
        consumer = Consumer(
            consumer_config(
                local,
                "cost-reader",
                **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 10},
            )
        )
        consumer.subscribe(["cost"])
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                consumer.consume(1000, 0.05)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        filled = 0
        for fill in fills:
            for i in range(fill - filled):  # one record per batch: a flush after each round
                producer.produce("cost", value=b"x" * 200, partition=i % partitions)
                if i % partitions == partitions - 1:
                    producer.flush(30)
            producer.flush(30)
            filled = max(filled, fill)
            time.sleep(1.0)
            before, started, n = cpu(), time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                producer.produce("cost", value=b"y" * 200, partition=n % partitions)
                producer.flush(30)
                n += 1
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
            rows.append(
                BrokerCost(filled, round(n / elapsed, 1), round(100 * (cpu() - before) / elapsed))
            )
            print(
                f"{filled:>8} one-record batches in the log: {rows[-1].produce_requests_per_s:.0f} "
                f"produce requests/s took {rows[-1].broker_cpu_percent:.0f} % of a core",
                flush=True,
            )
        stop.set()
        reader.join()
        consumer.close()
    return rows
