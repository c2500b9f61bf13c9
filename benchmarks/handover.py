"""How long a killed worker's users wait: three workers share the partitions of `events` as one
consumer group under a steady load, one is killed with -9, and each event's wait
(produced -> recommendation read) is timed.

Before the load, `live_sessions` users each send one event, so the session table holds that
many open sessions: the worker that takes over a killed worker's partitions must have their
sessions before it answers (restored from the changelog, or kept up to date as a standby).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from sessionrec.benchmarks.stream import generate, wait_for
from sessionrec.models.codec import encode
from sessionrec.models.config import Settings
from sessionrec.models.records import Event
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.kafka import consumer_config, produce, producer_config, ready_messages
from sessionrec.stream.launch import WorkerProcess, on_local_broker

WORKERS = 3
AFTER_KILL_S = 10.0  # events sent this long after the kill count towards the hand-over
PRELOAD_TIMEOUT_S = 600.0
DRAIN_IDLE_S = 30.0
SETTLED_CORES = 0.2
SETTLE_TIMEOUT_S = 120.0


class Answer(NamedTuple):
    partition: int
    user: str
    sent_ms: float  # the event's time: when the load generator produced it
    read_ms: float

    @property
    def wait_ms(self) -> float:
        return self.read_ms - self.sent_ms


@dataclass(frozen=True, slots=True)
class HandOver:
    """One run: the waits of every event, and of the events sent in the AFTER_KILL_S after
    the kill (`handover_s`: the longest of these; the killed worker's partitions wait longest)."""

    standby_replicas: int
    session_timeout_s: float
    live_sessions: int
    rate: float
    seconds: float
    sent: int
    answered: int
    p50_ms: float
    p99_ms: float
    longest_ms: float
    handover_s: float
    worker_us_per_event: float  # CPU of all workers during the load, per event answered
    # (partition, longest wait in seconds of an event sent in the AFTER_KILL_S after the kill)
    partitions: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    # (partition, offset, user, ts) of the load's events in `events` that got no answer
    unanswered: list[tuple[int, int, str, int]] = dataclasses.field(default_factory=list)

    def row(self) -> str:
        return (
            f"{self.standby_replicas:>8} {self.session_timeout_s:>9.0f} "
            f"{self.live_sessions:>13,} {self.rate:>7,.0f} "
            f"{self.sent:>7} {self.answered:>8} {self.p50_ms:>8.0f} {self.p99_ms:>8.0f} "
            f"{self.longest_ms:>10.0f} {self.handover_s:>10.1f} {self.worker_us_per_event:>9.0f}"
        )


HEADER = (
    f"{'standbys':>8} {'timeout s':>9} {'live sessions':>13} {'rate/s':>7} {'sent':>7} "
    f"{'answered':>8} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'longest ms':>10} {'handover s':>10} {'worker us':>9}"
)


def handover(
    settings: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    log_dir: Path,
    *,
    rate: float,
    seconds: float,
    kill_at_s: float,
    live_sessions: int,
    standby_replicas: int,
) -> HandOver:
    """One run on a fresh embedded broker (see the module's text)."""

    log_dir.mkdir(parents=True, exist_ok=True)
    layout = dataclasses.replace(settings, standby_replicas=standby_replicas)
    with EmbeddedBroker(port=0) as broker:
        local = on_local_broker(layout, broker.bootstrap, model_dir, "bench-handover")
        workers = [
            WorkerProcess(local, log_dir / f"handover-{standby_replicas}-{i}.log")
            for i in range(WORKERS)
        ]
        for w in workers:
            w.start()
        received: list[Answer] = []
        produced: list[tuple[int, int, str, int]] = []  # events read back: partition, offset, ...
        stop = threading.Event()
        assigned = threading.Event()
        reader = threading.Thread(
            target=_read, args=(local, stop, received, produced, assigned), daemon=True
        )
        try:
            for w in workers:
                w.wait_ready()
            reader.start()
            if not assigned.wait(60):
                raise RuntimeError("the benchmark's reader got no partitions in 60s")
            users = max(live_sessions, 1000)
            if live_sessions:
                _preload(local, sessions, live_sessions, received)
            _settle(workers)  # e.g. until the standbys have read the preload's changelog
            received.clear()  # only the load's answers from here on
            sent = mp.get_context("spawn").Value("i", 0)
            gen = mp.get_context("spawn").Process(
                target=generate,
                args=(local, local.topics.events, sessions, rate, seconds, users, 11, sent),
            )
            cpu_before = sum(w.cpu_seconds() for w in workers)
            started_ms = time.time() * 1000
            gen.start()
            time.sleep(kill_at_s)
            killed_ms = time.time() * 1000
            cpu_killed = workers[0].cpu_seconds()
            workers[0].kill9()
            gen.join()

            def all_answered() -> bool:  # answers come at least once: count each event once
                load = {(a.user, a.sent_ms) for a in received if a.sent_ms >= started_ms}
                return len(load) >= int(sent.value)

            wait_for(received, all_answered, DRAIN_IDLE_S)
            cpu = cpu_killed + sum(w.cpu_seconds() for w in workers[1:]) - cpu_before
        finally:
            stop.set()
            for w in workers:
                w.stop()
    first: dict[tuple[str, float], Answer] = {}  # at least once: the first answer counts
    for a in received:
        if a.sent_ms >= started_ms and (a.user, a.sent_ms) not in first:
            first[(a.user, a.sent_ms)] = a
    waits = np.array([a.wait_ms for a in first.values()]) if first else np.zeros(1)
    after: dict[int, float] = {}
    for a in first.values():
        if 0 <= a.sent_ms - killed_ms < AFTER_KILL_S * 1000:
            after[a.partition] = max(after.get(a.partition, 0.0), a.wait_ms / 1000)
    return HandOver(
        standby_replicas,
        settings.session_timeout_s,
        live_sessions,
        rate,
        seconds,
        int(sent.value),
        len(first),
        float(np.percentile(waits, 50)),
        float(np.percentile(waits, 99)),
        float(waits.max()),
        max(after.values(), default=0.0),
        1e6 * cpu / max(len(first), 1),
        sorted(after.items()),
        sorted(e for e in produced if e[3] >= started_ms and (e[2], e[3]) not in first),
    )


def _preload(
    settings: Settings,
    sessions: list[list[str]],
    users: int,
    received: list[Answer],
) -> None:
    """One event for each of `users` users (`bench-<n>`, as the load's), as fast as the
    workers take them; returns once each has its answer, so every session is in the table."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    start = len(received)
    for u in range(users):
        event = Event(f"bench-{u}", sessions[u % len(sessions)][0], "view", int(time.time() * 1000))
        produce(producer, settings.topics.events, event.user_id.encode(), encode(event))
        if u % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    wait_for(received, lambda: len(received) - start >= users, PRELOAD_TIMEOUT_S)


def _settle(workers: list[WorkerProcess]) -> None:
    """Until the workers together use less than SETTLED_CORES for a second."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        before = sum(w.cpu_seconds() for w in workers)
        time.sleep(1.0)
        if sum(w.cpu_seconds() for w in workers) - before < SETTLED_CORES:
            return


def _read(
    settings: Settings,
    stop: threading.Event,
    out: list[Answer],
    events: list[tuple[int, int, str, int]],
    assigned: threading.Event,
) -> None:
    """The answers into `out`, and the events themselves as the topic holds them into
    `events`."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        consumer_config(settings, f"bench-{time.time_ns()}", **{"fetch.wait.max.ms": 5})
    )
    topics = settings.topics
    consumer.subscribe([topics.recommendations, topics.events], on_assign=lambda *_: assigned.set())
    while not stop.is_set():
        for msg in ready_messages(consumer, 0.05):
            value = msg.value()
            if msg.error() or value is None:
                continue
            data = orjson.loads(value)
            if msg.topic() == topics.events:
                events.append((msg.partition(), msg.offset(), data["user_id"], data["ts"]))
                continue
            out.append(
                Answer(msg.partition(), data["user_id"], data["event_ts"], time.time() * 1000)
            )
    consumer.close()
