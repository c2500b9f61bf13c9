"""Hostile records through a live worker: what it takes without exiting, losing or leaking.

`hostile_events` draws bad event records of many kinds (any bytes, sizes up to the broker's
message limit, JSON of the wrong shape, out-of-range params, keys that are not the user)
between good events; `hostile_items` and `hostile_updates` do the same for the catalog and
model-updates topics. `fuzz` sends them to a running worker and reports what came back. The
integration tests run it at CI size; `sessionrec bench reliability` runs it larger, with
kill -9 runs and memory per user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from sessionrec.models.codec import encode
from sessionrec.models.config import Settings
from sessionrec.models.records import Event, Item

T0 = 1_767_300_000_000
BIG_BYTES = 900_000  # under the producers' default 1,000,000-byte message limit
BIG_SHARE = 0.05  # of the records drawn as large ones (1 in 16 bad records): 1 in 320
READ_IDLE_S = 30.0


@dataclass(frozen=True, slots=True)
class Record:
    """A record to produce: its key and value, and whether a worker must accept it."""

    key: bytes | None
    value: bytes | None
    good: bool
    user: str = ""
    ts: int = 0


def _junk_json(rng: np.random.Generator) -> Any:
    """A JSON value of a random shape."""
    kind = int(rng.integers(8))
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(2))
    if kind == 2:
        return int(rng.integers(-(2**62), 2**62))
    if kind == 3:
        return float(rng.normal()) * 10.0 ** int(rng.integers(-300, 300))
    if kind == 4:
        return "".join(chr(int(c)) for c in rng.integers(1, 0xD7FF, int(rng.integers(0, 40))))
    if kind == 5:
        return [int(x) for x in rng.integers(0, 9, int(rng.integers(0, 5)))]
    if kind == 6:
        return {"k": 1000, "diversity": 1, "max_intents": 99, "name_weight": -1}
    return {}


def _bad_event(rng: np.random.Generator, n: int) -> tuple[bytes | None, bytes | None]:
    user = f"h{n}"
    good: dict[str, Any] = {"user_id": user, "item_id": f"i{n % 97}", "type": "view", "ts": T0 + n}
    kind = int(rng.integers(16))
    if kind == 1 and rng.random() > BIG_SHARE:
        kind = 0  # large records are a few: each is up to a megabyte for the broker to keep
    if kind == 0:  # any bytes
        return b"k", rng.bytes(int(rng.integers(0, 3000)))
    if kind == 1:  # large, up to the message limit: control characters, non-UTF-8, text
        size = int(rng.integers(70_000, BIG_BYTES))
        filler = [b"\x01", b"\xff", b"\xc3\xa9"][int(rng.integers(3))]
        return b"k", b'{"user_id":"x","item_id":"' + filler * (size // len(filler)) + b'"}'
    if kind == 2:
        return b"k", None  # no value
    if kind == 3:  # a field of the wrong type or a missing field
        wrong: dict[str, list[Any]] = {
            "user_id": [None, True, 1.5, [], {}, "", " "],
            "item_id": [None, False, 2.5, ["i"], {"i": 1}, ""],
            "type": [None, "click", 1, "", "VIEW"],
            "ts": [None, True, "yesterday", [], 1.0, "2024-01-02T03:04:05"],
        }
        field = list(wrong)[int(rng.integers(4))]
        bad = dict(good)
        if rng.integers(2):
            bad[field] = wrong[field][int(rng.integers(len(wrong[field])))]
        else:
            del bad[field]
        return user.encode(), orjson.dumps(bad)
    if kind == 4:  # params out of range or unknown
        params = _junk_json(rng)
        key = ["k", "diversity", "max_intents", "evil"][int(rng.integers(4))]
        values: list[Any] = [10**9, -1, 1e308, "1", None, True]
        bad = {**good, "params": {key: values[int(rng.integers(len(values)))]}}
        if isinstance(params, dict) and params and rng.integers(2):
            bad["params"] = params
        return user.encode(), orjson.dumps(bad)
    if kind == 5:  # the key is another user's, or missing
        return [None, b"someone-else"][int(rng.integers(2))], orjson.dumps(good)
    if kind == 6:  # deeply nested
        depth = int(rng.integers(300, 3000))
        return b"k", b"[" * depth + b"]" * depth
    if kind == 7:  # a huge id or a time out of range
        bad = dict(good)
        if rng.integers(2):
            bad["item_id"] = "x" * int(rng.integers(257, 50_000))
        else:
            bad["ts"] = [1, -5, "yesterday", 1e20, 2**63 - 1][int(rng.integers(5))]
        return user.encode(), orjson.dumps(bad)
    if kind == 8:  # not an object
        return b"k", orjson.dumps(_junk_json(rng))
    if kind == 9:  # schema_version from the future
        return user.encode(), orjson.dumps({**good, "schema_version": 99})
    if kind == 10:  # an unknown event type
        return user.encode(), orjson.dumps({**good, "type": "<script>"})
    if kind == 11:  # truncated JSON
        raw = orjson.dumps(good)
        return user.encode(), raw[: int(rng.integers(1, len(raw) - 1))]
    if kind == 12:  # a lone surrogate, escaped
        return user.encode(), orjson.dumps(good)[:-1] + b',"context":"\\ud800"}'
    if kind == 13:  # an empty user
        return b"", orjson.dumps({**good, "user_id": ""})
    if kind == 14:  # NaN where JSON has none
        return user.encode(), orjson.dumps(good)[:-1] + b',"x":NaN}'
    return user.encode(), b"\xef\xbb\xbf" + orjson.dumps(good)  # a byte-order mark


def hostile_events(n: int, seed: int = 7, good_share: float = 0.3) -> list[Record]:
    """`n` event records: about `good_share` of them good events (of 200 users walking 97
    items), the rest bad records of 16 kinds, in a seeded random order."""
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    for i in range(n):
        if rng.random() < good_share:
            user, ts = f"fuzz-{int(rng.integers(200))}", T0 + 1000 * i
            event = Event(user, f"i{int(rng.integers(97))}", "view", ts)
            out.append(Record(user.encode(), encode(event), True, user, ts))
        else:
            key, value = _bad_event(rng, i)
            out.append(Record(key, value, False))
    return out


def hostile_items(n: int, seed: int = 8) -> list[Record]:
    """Catalog records: good upserts, deletes, tombstones, and bad records of every kind."""
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    for i in range(n):
        kind = int(rng.integers(6))
        item_id = f"i{int(rng.integers(97))}"
        if kind == 0:
            item = Item(item_id, name=f"item {i}", category="c", price=float(rng.random() * 100))
            out.append(Record(item_id.encode(), encode(item), True))
        elif kind == 1:
            out.append(Record(item_id.encode(), None, True))  # tombstone: a delete
        elif kind == 2:
            out.append(Record(b"k", rng.bytes(int(rng.integers(0, 2000))), False))
        elif kind == 3:
            bad = {"item_id": item_id, "price": _junk_json(rng), "name": _junk_json(rng)}
            out.append(Record(item_id.encode(), orjson.dumps(bad), False))
        elif kind == 4:
            out.append(Record(rng.bytes(int(rng.integers(0, 300))), None, False))
        else:
            name = "n" * int(rng.integers(2049, 200_000))
            out.append(Record(b"k", orjson.dumps({"item_id": item_id, "name": name}), False))
    return out


def hostile_updates(n: int, seed: int = 9) -> list[Record]:
    """model-updates records naming versions that do not exist, outside the directory, or
    nothing at all."""
    rng = np.random.default_rng(seed)
    names: list[Any] = ["../evil", "/etc", "", "v-missing", "a/b", None, 7, "..", "x" * 500]
    out: list[Record] = []
    for _ in range(n):
        if rng.integers(3):
            value = orjson.dumps({"version": names[int(rng.integers(len(names)))]})
        else:
            value = rng.bytes(int(rng.integers(0, 500)))
        out.append(Record(None, value, False))
    return out


@dataclass(frozen=True, slots=True)
class FuzzResult:
    events: int
    bad_events: int
    items: int
    updates: int
    dlq: int
    dlq_missing_reason: int
    good: int
    good_answered: int
    seconds: float


def produce_records(settings: Settings, topic: str, records: list[Record]) -> None:
    """Produce the records in order; fails unless the broker took every one."""
    from confluent_kafka import Producer

    from sessionrec.stream.kafka import producer_config

    producer = Producer(producer_config(settings, **{"linger.ms": 5}))
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for r in records:
        while True:
            try:
                producer.produce(topic, key=r.key, value=r.value, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) != 0 or errors:
        raise RuntimeError(f"{len(errors)} records refused by the broker: {errors[:3]}")


def read_until(
    settings: Settings, topic: str, done: Callable[[list[bytes]], bool], idle_s: float
) -> list[bytes]:
    """Values of `topic` from its beginning until `done(values)` or nothing came for idle_s."""
    from confluent_kafka import Consumer

    from sessionrec.stream.kafka import consumer_config

    group = f"fuzz-read-{time.time_ns()}"
    consumer = Consumer(consumer_config(settings, group, **{"enable.auto.commit": False}))
    consumer.subscribe([topic])
    values: list[bytes] = []
    last = time.monotonic()
    try:
        while not done(values) and time.monotonic() - last < idle_s:
            for msg in consumer.consume(2000, 0.5):
                value = msg.value()
                if not msg.error() and value is not None:
                    values.append(value)
                    last = time.monotonic()
    finally:
        consumer.close()
    return values


def fuzz(settings: Settings, events: int, items: int, updates: int, seed: int = 7) -> FuzzResult:
    """Send hostile items and model-updates, then hostile events, to a running worker;
    read back the DLQ and the recommendations."""
    t = settings.topics
    started = time.monotonic()
    produce_records(settings, t.items, hostile_items(items, seed + 1))
    produce_records(settings, t.model_updates, hostile_updates(updates, seed + 2))
    records = hostile_events(events, seed)
    produce_records(settings, t.events, records)
    good = {(r.user, r.ts) for r in records if r.good}
    bad = sum(not r.good for r in records)

    def answered(values: list[bytes]) -> set[tuple[str, int]]:
        found = set()
        for v in values:
            rec = orjson.loads(v)
            found.add((rec["user_id"], rec["event_ts"]))
        return found

    recs = read_until(settings, t.recommendations, lambda v: good <= answered(v), READ_IDLE_S)
    dlq = read_until(settings, t.dlq, lambda v: len(v) >= bad, READ_IDLE_S)
    positions = {(d["partition"], d["offset"]) for d in map(orjson.loads, dlq)}
    return FuzzResult(
        events=events,
        bad_events=bad,
        items=items,
        updates=updates,
        dlq=len(positions),
        dlq_missing_reason=sum(not orjson.loads(v).get("reason") for v in dlq),
        good=len(good),
        good_answered=len(good & answered(recs)),
        seconds=time.monotonic() - started,
    )


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MB."""
    for line in open(f"/proc/{pid}/status"):  # noqa: SIM115  # a few lines, read at once
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memory_per_user(settings: Settings, pid: int, users: int, batch: int = 5000) -> dict[str, Any]:
    """RSS of the worker before and after `users` new users send one event each (answered):
    the memory a live user costs, everything the worker keeps for it included."""
    before = rss_mb(pid)
    t = settings.topics
    sent = 0
    for start in range(0, users, batch):
        records = []
        for u in range(start, min(users, start + batch)):
            user = f"mem-{u}"
            event = Event(user, f"i{u % 97}", "view", T0 + u)
            records.append(Record(user.encode(), encode(event), True, user, T0 + u))
        produce_records(settings, t.events, records)
        sent += len(records)
        _read_count(settings, sent)
    after = rss_mb(pid)
    return {
        "users": users,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "bytes_per_user": round((after - before) * 2**20 / users),
    }


def flood(settings: Settings, pid: int, rounds: int, per_round: int) -> list[dict[str, Any]]:
    """Rounds of `per_round` one-event users, each round an hour of event time later: with a
    state time to live of under an hour, the worker's memory should stop growing."""
    t = settings.topics
    rows = []
    sent = 0
    for r in range(rounds):
        ts = T0 + r * 3_600_000
        records = []
        for u in range(per_round):
            user = f"flood-{r}-{u}"
            event = Event(user, f"i{u % 97}", "view", ts + u)
            records.append(Record(user.encode(), encode(event), True, user, ts + u))
        produce_records(settings, t.events, records)
        sent += per_round
        _read_count(settings, sent)
        time.sleep(11)  # the idle timer (every 10 s) closes and expires what it can
        rows.append({"round": r + 1, "users_sent": sent, "rss_mb": round(rss_mb(pid), 1)})
    return rows


def _read_count(settings: Settings, count: int) -> None:
    """Wait until the recommendations topic holds `count` answers."""

    def enough(values: list[bytes]) -> bool:
        return len(values) >= count

    read_until(settings, settings.topics.recommendations, enough, 60)


def kill9_run(
    settings: Settings, log_path: Any, users: int = 300, events: int = 6000
) -> dict[str, Any]:
    """Events for `users` users, the worker killed with -9 once answers flow, a new worker
    started: how many events were never answered, and whether sessions went on."""
    from sessionrec.stream.launch import WorkerProcess

    t = settings.topics
    first = WorkerProcess(settings, log_path).start()
    first.wait_ready()
    records = []
    for i in range(events):
        user, ts = f"k9-{i % users}", T0 + 1000 * i
        records.append(
            Record(user.encode(), encode(Event(user, f"i{i % 97}", "view", ts)), True, user, ts)
        )
    produce_records(settings, t.events, records)
    read_until(settings, t.recommendations, lambda v: len(v) >= events // 10, 60)
    first.kill9()
    second = WorkerProcess(settings, log_path).start()
    try:
        second.wait_ready()
        wanted = {(r.user, r.ts) for r in records}

        def answered(values: list[bytes]) -> set[tuple[str, int]]:
            return {(m["user_id"], m["event_ts"]) for m in map(orjson.loads, values)}

        values = read_until(
            settings, t.recommendations, lambda v: wanted <= answered(v), READ_IDLE_S
        )
    finally:
        second.stop()
    sessions: dict[str, set[str]] = {}
    for m in map(orjson.loads, values):
        sessions.setdefault(m["user_id"], set()).add(m["session_id"])
    return {
        "events": events,
        "lost": len(wanted - answered(values)),
        "users_with_split_sessions": sum(len(s) > 1 for s in sessions.values()),
    }
