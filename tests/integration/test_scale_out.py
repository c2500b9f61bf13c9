"""Several workers in one consumer group, under a steady load of real sessions: a worker
joins, a catalog item is upserted, a new model is made current, one worker stops cleanly and
one is killed -9. Nothing accepted is lost, no committed offset ever passed an event not yet
answered, no session is split or reset by a move, no bought item comes back, and the upsert and
the model reach every worker that ran then. How long each
partition waited for its answers is printed (run with -s to see it)."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from sessionrec.models.artifact import current_version, set_current
from sessionrec.models.codec import decode_recommendation, encode
from sessionrec.models.records import Event, Item
from sessionrec.models.session import SessionConfig, sessionize
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.launch import WorkerProcess
from sessionrec.stream.topics import create_topics, topic_specs
from sessionrec.training.data import read_events
from tests.integration.kafka_io import consume, produce_items, producer, unique_settings
from tests.integration.model_io import renamed_version
from tests.integration.test_worker import READY_S, _check_bought_never_return

PARTITIONS = 6
EVENTS = 3_000
RATE = 75.0  # events/s: 40 s of load
# Seconds into the load: a 4th worker joins, an item is upserted, users on every partition
# view it, a new model is made current, worker 0 stops cleanly, worker 1 is killed -9.
JOIN_S, UPSERT_S, VIEW_S, SWAP_S, STOP_S, KILL_S = 6.0, 8.0, 10.0, 12.0, 18.0, 28.0
NEW_ITEM = Item("scale-new-item", name="trail running shoe", category="1188", price=80.0)


@pytest.mark.slow
def test_workers_share_the_load_and_survive_each_other(
    broker: EmbeddedBroker,
    unique: str,
    retailrocket_model: Path,
    shared_data: Path,
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(retailrocket_model, model_dir)
    old = str(current_version(model_dir))
    settings = unique_settings(broker.bootstrap, unique, str(model_dir), partitions=PARTITIONS)
    create_topics(settings, topic_specs(settings))
    events, _, _ = read_events("retailrocket", shared_data / "retailrocket-events")
    events = events[:EVENTS]

    workers = [WorkerProcess(settings, tmp_path / f"worker-{i}.log") for i in range(4)]
    for w in workers[:3]:
        w.start()
    try:
        for w in workers[:3]:
            w.wait_ready(READY_S)
        # (user, event ts) -> (wall ms produced, partition, offset)
        produced: dict[tuple[str, int], tuple[float, int, int]] = {}
        load = threading.Thread(target=_steady_load, args=(settings, events, produced))
        commits: list[tuple[float, int, int]] = []  # (wall ms seen, partition, committed offset)
        watching = threading.Event()
        watcher = threading.Thread(target=_watch_commits, args=(settings, commits, watching))
        watcher.start()
        started = time.monotonic()
        load.start()
        changes = {}
        viewers: dict[str, int] = {}  # user -> partition, of the users who view NEW_ITEM
        view_ts = events[int(VIEW_S * RATE)].ts
        timeline = (
            (JOIN_S, "join"),
            (UPSERT_S, "upsert"),
            (VIEW_S, "view"),
            (SWAP_S, "swap"),
            (STOP_S, "stop"),
            (KILL_S, "kill"),
        )
        for at, change in timeline:
            time.sleep(max(0.0, started + at - time.monotonic()))
            changes[change] = time.time() * 1000
            if change == "join":
                workers[3].start()
            elif change == "upsert":
                produce_items(settings, [NEW_ITEM])
            elif change == "view":  # at the load's event time there, not to move the clocks
                viewers = _view_on_every_partition(settings, NEW_ITEM.item_id, view_ts)
            elif change == "swap":
                renamed_version(model_dir / old, "v-swapped", model_dir)
                set_current(model_dir, "v-swapped")
            elif change == "stop":
                workers[0].stop()
            else:
                workers[1].kill9()
        load.join()
        wanted = set(produced)

        def all_answered(values: list[bytes]) -> bool:
            got = {(m["user_id"], m["event_ts"]) for m in map(orjson.loads, values)}
            return wanted <= got and set(viewers) <= {user for user, _ in got}

        raw = consume(settings.bootstrap, settings.topics.recommendations, all_answered, idle_s=90)
        recs = [decode_recommendation(r) for r in raw]
    finally:
        watching.set()
        for w in workers:
            w.stop()

    answered: dict[tuple[str, int], float] = {}
    for r in recs:  # at least once: the first answer counts
        key = (r.user_id, r.event_ts)
        answered[key] = min(answered.get(key, float("inf")), float(r.emitted_ts))
    missing = wanted - set(answered)
    assert not missing, _unanswered(missing, len(wanted), produced, settings, workers)
    assert len(commits) > 100
    assert not (passed := _commits_past_unanswered(commits, produced, answered)), passed
    assert _check_bought_never_return(events, recs) > 0

    # No session split or reset by a move: every closed session is the one the data has.
    views = [Event(user, NEW_ITEM.item_id, "view", view_ts) for user in viewers]
    everything = sorted([*events, *views], key=lambda e: e.ts)
    offline, _ = sessionize(everything, SessionConfig(settings.session_gap_ms))
    expected = {s.session_id: [c.item_id for c in s.clicks] for s in offline}
    closed = consume(settings.bootstrap, settings.topics.sessions, lambda v: False, idle_s=8)
    assert len(closed) > 100
    for value in closed:
        data = orjson.loads(value)
        assert data["items"] == expected.get(data["session_id"]), data["session_id"]

    # The upsert reached every worker that ran then: each logged it, and each partition's owner
    # answered a view of the new item from its metadata (an unknown item gets trending items).
    assert set(viewers.values()) == set(range(PARTITIONS))
    for user in viewers:
        answer = next(r for r in recs if r.user_id == user)
        assert answer.reason == "session", (user, answer.reason)
        assert answer.intents[0].members == [NEW_ITEM.item_id]
    for i, w in enumerate(workers):
        # Applied to the model served then, or (taken while a new version loaded) with the
        # catalog that version took before it was served: the item is the whole catalog here.
        text = w.log_path.read_text()
        took = "1 of the catalog's 1 items go into its index before it is served" in text
        assert f"upserts applied ({NEW_ITEM.item_id})" in text or took, f"worker {i}"

    # The new model reached every worker that ran when it was made current.
    for i, w in enumerate(workers):
        assert "model v-swapped loaded" in w.log_path.read_text(), f"worker {i}"
    assert "v-swapped" in {r.model_version for r in recs}

    _print_waits(produced, answered, changes)


def _steady_load(
    settings: Any, events: list[Any], produced: dict[tuple[str, int], tuple[float, int, int]]
) -> None:
    p = producer(settings.bootstrap)
    start = time.monotonic()
    for i, e in enumerate(events):
        time.sleep(max(0.0, start + i / RATE - time.monotonic()))
        sent = time.time() * 1000

        def report(
            err: Any, msg: Any, key: tuple[str, int] = (e.user_id, e.ts), at: float = sent
        ) -> None:
            if err is None:
                produced.setdefault(key, (at, msg.partition(), msg.offset()))

        p.produce(
            settings.topics.events, key=e.user_id.encode(), value=encode(e), on_delivery=report
        )
        p.poll(0)
    assert p.flush(30) == 0


def _watch_commits(
    settings: Any, commits: list[tuple[float, int, int]], stop: threading.Event
) -> None:
    """Read the group's committed offsets of the events topic every 0.2 s until `stop`."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap, "group.id": settings.worker_group}
    )
    tps = [TopicPartition(settings.topics.events, p) for p in range(PARTITIONS)]
    try:
        while not stop.wait(0.2):
            try:
                found = consumer.committed(tps, timeout=5)
            except KafkaException:  # the coordinator may be moving: try again
                continue
            seen = time.time() * 1000  # after the commits were made, so after their answers
            commits.extend((seen, tp.partition, tp.offset) for tp in found if tp.offset >= 0)
    finally:
        consumer.close()


def _commits_past_unanswered(
    commits: list[tuple[float, int, int]],
    produced: dict[tuple[str, int], tuple[float, int, int]],
    answered: dict[tuple[str, int], float],
) -> str:
    """Each committed offset seen that had passed an event whose first answer came only after
    that commit was seen (empty if none)."""
    offsets: dict[int, list[tuple[int, float]]] = defaultdict(list)  # partition -> (offset, answer)
    for key, (_, partition, offset) in produced.items():
        offsets[partition].append((offset, answered.get(key, float("inf"))))
    passed = []
    for seen, partition, committed in commits:
        late = [o for o, answer in offsets[partition] if o < committed and answer > seen]
        if late:
            passed.append(
                f"partition {partition} committed {committed} at {seen:.0f} before offsets "
                f"{late[:5]} were answered"
            )
    return "\n".join(passed[:20])


def _view_on_every_partition(settings: Any, item_id: str, ts: int) -> dict[str, int]:
    """New users view `item_id` at `ts` until each partition has one: user -> partition."""
    p = producer(settings.bootstrap)
    viewers: dict[str, int] = {}
    for n in range(200):
        user = f"viewer-{n}"

        def report(err: Any, msg: Any, user: str = user) -> None:
            if err is None:
                viewers[user] = msg.partition()

        event = Event(user, item_id, "view", ts)
        p.produce(
            settings.topics.events, key=user.encode(), value=encode(event), on_delivery=report
        )
        assert p.flush(30) == 0
        if len(set(viewers.values())) == PARTITIONS:
            break
    return viewers


HELD = re.compile(r"^\[(\S+ \S+)\].*events partitions held now: \[([\d, ]*)\]")


def _unanswered(
    missing: set[tuple[str, int]],
    wanted: int,
    produced: dict[tuple[str, int], tuple[float, int, int]],
    settings: Any,
    workers: list[WorkerProcess],
) -> str:
    """What is known of each event never answered: its partition and offset, the group's
    committed offset there, which worker held the partition when it was produced (from the
    workers' logs), and how each worker ended."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap, "group.id": settings.worker_group}
    )
    try:
        tps = [TopicPartition(settings.topics.events, p) for p in range(PARTITIONS)]
        committed = {
            tp.partition: tp.offset if tp.offset >= 0 else "none"
            for tp in consumer.committed(tps, timeout=10)
        }
    finally:
        consumer.close()
    held = []  # (time, worker, partitions)
    for i, w in enumerate(workers):
        text = w.log_path.read_text() if w.log_path.exists() else ""
        for line in text.splitlines():
            found = HELD.match(line)
            if found:
                at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                parts = {int(p) for p in found.group(2).split(",") if p.strip()}
                held.append((at * 1000, i, parts))
    held.sort()

    def owner(partition: int, at_ms: float) -> str:
        latest: dict[int, set[int]] = {}
        for when, worker, parts in held:
            if when <= at_ms:
                latest[worker] = parts
        owners = [f"worker {w}" for w, parts in latest.items() if partition in parts]
        return " and ".join(owners) or "no worker"

    exits = ", ".join(
        f"worker {i}: {w.proc.poll() if w.proc is not None else 'never started'}"
        for i, w in enumerate(workers)
    )
    lines = [f"{len(missing)} of {wanted} accepted events never answered (exit codes: {exits})"]
    for key in sorted(missing, key=lambda k: produced[k][1:])[:20]:
        at, partition, offset = produced[key]
        lines.append(
            f"  {key[0]} ts {key[1]}: partition {partition} offset {offset}, committed "
            f"{committed.get(partition)}, held by {owner(partition, at)} when produced"
        )
    return "\n".join(lines)


def _print_waits(
    produced: dict[tuple[str, int], tuple[float, int, int]],
    answered: dict[tuple[str, int], float],
    changes: dict[str, float],
) -> None:
    waits: dict[int, list[tuple[float, float]]] = defaultdict(list)  # partition -> (sent, wait)
    for key, (sent, partition, _) in produced.items():
        waits[partition].append((sent, answered[key] - sent))
    everything = np.array([w for rows in waits.values() for _, w in rows])
    print(
        f"\n{len(everything)} events: wait p50 {np.percentile(everything, 50):.0f} ms, "
        f"p99 {np.percentile(everything, 99):.0f} ms, longest {everything.max():.0f} ms"
    )
    names = sorted(changes, key=changes.__getitem__)
    for partition in sorted(waits):
        row = []
        for name in names:
            after = [w for sent, w in waits[partition] if 0 <= sent - changes[name] < 10_000]
            row.append(f"{name} {max(after, default=0) / 1000:.1f}s")
        print(f"partition {partition}: longest wait within 10 s after " + ", ".join(row))
