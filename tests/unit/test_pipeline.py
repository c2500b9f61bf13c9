from __future__ import annotations

import asyncio
import itertools
import logging

import orjson
import pytest

from sessionrec.models.codec import encode
from sessionrec.models.config import Settings
from sessionrec.models.records import Event, Item
from sessionrec.models.serving import CatalogChange
from sessionrec.models.state import UserState, encode_state
from sessionrec.stream.pipeline import Incoming, Output, Pipeline


def _pipeline(store: dict[str, bytes] | None = None) -> Pipeline:
    return Pipeline(Settings(), None, store if store is not None else {}, clock=lambda: 5)


_OFFSETS = itertools.count()


def _incoming(events: list[Event]) -> list[Incoming]:
    """The events as read from partition 0, each at an offset not used before."""
    return _on_partition(events, 0)


def _on_partition(events: list[Event], partition: int) -> list[Incoming]:
    """The events as read from `partition`, each at an offset not used before."""
    return [Incoming(e.user_id.encode(), encode(e), partition, next(_OFFSETS)) for e in events]


def test_a_prepared_batch_has_its_states_before_its_recommendations() -> None:
    proc = _pipeline()
    t0 = 1_700_000_000_000
    batch = _incoming(
        [
            Event("u1", "a", "view", t0),
            Event("u2", "b", "buy", t0 + 1),
            Event("u1", "c", "cart", t0 + 2),
        ]
    )
    batch.append(Incoming(b"u3", b"{not json", 0, 3))
    pending = proc.prepare(batch)
    assert set(pending.out.states) == {"u1", "u2"} and len(pending.out.dlq) == 1
    assert set(proc.table.store) == {"u1", "u2"}  # written before the search starts
    assert pending.out.recommendations == [] and pending.search() is None  # no model: trending
    clicks = orjson.loads(pending.out.states["u1"][1])["current"]["clicks"]
    assert [c[2] for c in clicks] == ["a", "c"]

    messages = proc.finish(pending, pending.search())
    assert [key for _, key, _, _ in messages] == [b"u1", b"u1", b"u2"]
    assert [orjson.loads(value)["item_id"] for _, _, value, _ in messages] == ["a", "c", "b"]
    assert proc.counters["emitted"] == 3 and proc.counters["rejected"] == 1
    # The same batch handled at once gives the same messages.
    again = _pipeline().process(batch)
    assert again.recommendations == messages


def test_states_are_stored_encoded_and_an_unreadable_one_starts_afresh() -> None:
    table: dict[str, bytes] = {}
    proc = _pipeline(table)

    def run(events: list[Event]) -> None:
        proc.process(_incoming(events))

    t0 = 1_700_000_000_000
    run([Event("u1", "a", "view", t0)])
    run([Event("u1", "b", "view", t0 + 1)])
    assert all(isinstance(state, bytes) for state in table.values())
    assert [c[2] for c in orjson.loads(table["u1"])["current"]["clicks"]] == ["a", "b"]
    table["u1"] = b'{"current": 7'  # e.g. a damaged changelog record
    run([Event("u1", "c", "view", t0 + 2)])
    assert proc.counters["bad_state"] == 1
    assert [c[2] for c in orjson.loads(table["u1"])["current"]["clicks"]] == ["c"]


def test_an_unreadable_state_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    t0 = 1_700_000_000_000
    table = {"u1": b"not json", "u2": b"neither"}  # as restored from a damaged changelog
    proc = _pipeline(table)
    with caplog.at_level(logging.WARNING, logger="sessionrec.models.state"):
        assert proc.table.idle_users() == []  # the idle index reads both first
        for n, ts in enumerate((t0, t0 + 1)):
            event = Event("u1", "a", "view", ts)
            proc.process([Incoming(b"u1", encode(event), 0, n)])
    assert proc.counters["bad_state"] == 2
    reports = sorted(r.getMessage() for r in caplog.records if "unreadable" in r.getMessage())
    assert [line.split(":")[0] for line in reports] == ["user 'u1'", "user 'u2'"]
    # u1's state was written again: it is readable, and a new damage is a new report.
    assert [c[2] for c in orjson.loads(table["u1"])["current"]["clicks"]] == ["a", "a"]
    table["u1"] = b"{"
    proc.process([Incoming(b"u1", encode(Event("u1", "b", "view", t0 + 2)), 0, 2)])
    assert proc.counters["bad_state"] == 3


def test_idle_users_come_from_the_pipelines_writes_and_from_a_restored_table() -> None:
    gap = Settings().session_gap_ms
    t0 = 1_700_000_000_000
    table: dict[str, bytes] = {}
    proc = _pipeline(table)

    def run(events: list[Event], partition: int = 0) -> None:
        proc.process(_on_partition(events, partition))

    run([Event("early", "a", "view", t0), Event("late", "b", "view", t0 + gap)])
    run([Event("other", "c", "view", t0)], partition=1)
    assert proc.table.idle_users() == []
    run([Event("late", "d", "view", t0 + gap + 1)])  # partition 0's watermark passes early's gap
    assert proc.table.idle_users() == [("early", 0)]  # not "other": partition 1 has not moved

    # A worker that restored the same table from the changelog finds the same users.
    restored = Pipeline(Settings(), None, table)
    restored.table.watermarks = dict(proc.table.watermarks)
    assert restored.table.idle_users() == [("early", 0)]
    out = restored.close_idle()
    assert orjson.loads(out.states["early"][1])["current"] is None
    assert orjson.loads(table["early"])["current"] is None
    assert len(out.sessions) == 1
    assert restored.table.idle_users() == []

    del table["early"]  # its partition went to another worker
    assert proc.table.idle_users() == [] and "early" not in proc.table.ends


def test_only_owned_partitions_close_and_states_copied_from_the_changelog_are_read_again() -> None:
    gap = Settings().session_gap_ms
    t0 = 1_700_000_000_000
    table: dict[str, bytes] = {}
    proc = _pipeline(table)

    def run(events: list[Event], partition: int) -> None:
        proc.process(_on_partition(events, partition))

    run([Event("a", "x", "view", t0)], partition=0)
    run([Event("b", "x", "view", t0)], partition=1)
    run([Event("a2", "x", "view", t0 + gap + 1)], partition=0)
    run([Event("b2", "x", "view", t0 + gap + 1)], partition=1)
    assert sorted(proc.table.idle_users()) == [("a", 0), ("b", 1)]
    # Partition 1 went to another worker; this one may keep a standby copy of its users,
    # whose sessions their owner closes.
    proc.table.own({0})
    assert proc.table.idle_users() == [("a", 0)]
    run([Event("b3", "x", "view", t0 + 3 * gap)], partition=1)  # still in hand when taken
    assert proc.table.idle_users() == [("a", 0)]

    # A standby copy of "a2" arrives from the changelog: a later event, the session open.
    later = _pipeline()
    later.process([Incoming(b"a2", encode(Event("a2", "y", "view", t0 + 2 * gap)), 0, 0)])
    table["a2"] = later.table.store["a2"]
    proc.table.changed(["a2"])
    run([Event("a3", "x", "view", t0 + 2 * gap + 5)], partition=0)
    assert sorted(proc.table.idle_users()) == [("a", 0)]  # a2 is read again: open at 2 gaps
    run([Event("a4", "x", "view", t0 + 3 * gap + 2)], partition=0)
    assert ("a2", 0) in proc.table.idle_users()


def test_a_stored_state_takes_its_size_in_memory() -> None:
    import tracemalloc

    from sessionrec.models.session import SessionConfig, SessionState, advance
    from sessionrec.models.state import UserState

    state = SessionState()
    for j in range(5):
        event = Event("u1", f"item-{j}", "view", 1_700_000_000_000 + j * 1000)
        state = advance(state, event, SessionConfig()).state
    tracemalloc.start()
    try:
        stored = [encode_state(UserState(state), 0) for _ in range(1000)]
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # About 300 bytes of JSON each; not the 4 KB buffer orjson writes in.
    assert len(stored[0]) < 400 and used < 1000 * 1000


def test_bench_users_walk_whole_sessions_in_order() -> None:
    from sessionrec.benchmarks.stream import Walkers

    sessions = [["a", "b", "c"], ["x", "y"], ["p"]]
    walk = Walkers(sessions, users=1, seed=3)
    clicks = [walk.next(0).item_id for _ in range(40)]
    at = 0
    while at < len(clicks):  # back to back, each session from its first click to its last
        session = next(s for s in sessions if s[0] == clicks[at])
        assert clicks[at : at + len(session)] == session[: len(clicks) - at]
        at += len(session)
    assert {e.user_id for e in (Walkers(sessions, 5, 3).next(0) for _ in range(50))} <= {
        f"bench-{u}" for u in range(5)
    }


def test_a_dlq_record_of_any_size_keeps_a_stated_part_its_size_and_hash() -> None:
    import hashlib

    from sessionrec.stream.pipeline import DLQ_ORIGINAL_BYTES

    proc = _pipeline()
    control = b'{"user_id":"x","item_id":"' + b"\x01" * 200_000 + b'","type":"view"}'
    not_utf8 = b"\xff" * 800_000
    text = b'"' + "\u00e9".encode() * 500_000 + b'"'  # 1 MB of two-byte characters
    out = proc.process(
        [Incoming(b"k" * 5000, raw, 0, next(_OFFSETS)) for raw in (control, not_utf8, text)]
    )
    records = [orjson.loads(value) for _, value in out.dlq]
    assert [r["size"] for r in records] == [len(control), len(not_utf8), len(text)]
    assert [r["sha256"] for r in records] == [
        hashlib.sha256(raw).hexdigest() for raw in (control, not_utf8, text)
    ]
    assert [r["encoding"] for r in records] == ["utf-8", "base64", "utf-8"]
    assert all(r["truncated"] for r in records)
    assert all("expected at most" in r["reason"] for r in records)
    assert all(len(value) < 8 * DLQ_ORIGINAL_BYTES for _, value in out.dlq)
    assert all(key is not None and len(key) <= 1024 for key, _ in out.dlq)
    assert records[2]["original"] == '"' + "\u00e9" * ((DLQ_ORIGINAL_BYTES - 1) // 2)


class _Catalog:
    """Catalog upserts as the watcher hands them over (no model here)."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def take(self) -> tuple[None, list[CatalogChange]]:
        items, self.items = self.items, []
        return None, [CatalogChange.unserved(items)]

    def waiting(self) -> bool:
        return bool(self.items)


def test_trending_serves_only_live_catalog_items() -> None:
    proc = _pipeline()
    t0 = 1_700_000_000_000
    catalog = [Item(f"i{n}", name=f"item {n}") for n in range(5)]
    proc.connect(outbox=None, updates=_Catalog(catalog))  # type: ignore[arg-type]
    proc.between_batches()
    events = [Event(f"fan{u}", "i1", "view", t0 + u) for u in range(3)]
    events += [Event(f"buyer{u}", "EVIL<script>", "buy", t0 + u) for u in range(60)]
    events += [Event(f"buyer{u}", "i4", "buy", t0 + 100 + u) for u in range(10)]
    proc.process(_incoming(events))
    assert proc.trending.top(10) == proc.trending.top(10, live=proc.live)  # nothing else counted
    proc.updates = _Catalog([Item("i4", deleted=True)])
    proc.between_batches()
    out = proc.process(_incoming([Event("newcomer", "i9", "view", t0 + 500)]))
    answer = orjson.loads(out.recommendations[0][2])
    assert answer["reason"] == "trending"
    assert [i["item_id"] for i in answer["items"]] == ["i1"]
    assert proc.counters["unknown_item"] == 60 + 1


def test_idle_users_states_expire_after_their_time_to_live() -> None:
    import dataclasses

    day = 86_400_000
    settings = dataclasses.replace(Settings(), state_ttl_days=2.0)
    table: dict[str, bytes] = {}
    proc = Pipeline(settings, None, table, clock=lambda: 5)
    t0 = 1_700_000_000_000
    proc.process(_incoming([Event("old", "a", "view", t0), Event("recent", "b", "view", t0)]))
    proc.process(_incoming([Event("recent", "c", "view", t0 + day)]))
    out = proc.close_idle()  # both sessions close (the gap has passed); nobody expires yet
    assert len(out.sessions) == 1 and out.expired == [] and set(table) == {"old", "recent"}
    proc.process(_incoming([Event("recent", "d", "view", t0 + 2 * day + 60_000)]))
    out = proc.close_idle()
    assert out.expired == [("old", 0)] and set(table) == {"recent"}
    assert proc.counters["expired"] == 1 and "old" not in proc.table.ends
    proc.connect(_Sink())
    sent = asyncio.run(_publish(proc, out))
    assert (proc.changelog, b'"old"', None, 0) in sent
    from sessionrec.stream import metrics

    expired = metrics.EXPIRED._value.get()
    proc.count()  # as the idle timer does after publishing
    assert metrics.EXPIRED._value.get() == expired + 1 and metrics.USERS._value.get() == 1


class _Sink:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, messages: list) -> asyncio.Future[None]:
        self.sent.extend(messages)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def take_retried(self) -> int:
        return 0

    def take_dropped(self) -> dict[str, int]:
        return {}


async def _publish(proc: Pipeline, out: Output) -> list:
    await proc.publish(out)
    assert isinstance(proc.outbox, _Sink)
    return proc.outbox.sent


def test_memory_stays_flat_under_a_flood_of_one_event_users() -> None:
    """With a time to live, the users a flood leaves behind are let go."""
    import dataclasses

    settings = dataclasses.replace(Settings(), state_ttl_days=0.01)  # 14.4 minutes
    table: dict[str, bytes] = {}
    proc = Pipeline(settings, None, table, clock=lambda: 5)
    t0 = 1_700_000_000_000
    held = []
    for minute in range(0, 240, 2):
        ts = t0 + minute * 60_000
        proc.process(_incoming([Event(f"u{minute}-{n}", "a", "view", ts + n) for n in range(50)]))
        proc.close_idle()
        held.append(len(table))
    assert max(held[60:]) == max(held[20:40])  # flat once the first users expire
    assert max(held) < 50 * 30


def test_dlq_reasons_are_counted_by_a_few_fixed_kinds() -> None:
    proc = _pipeline()
    good = orjson.dumps({"user_id": "u", "item_id": "i", "type": "view", "ts": 1_700_000_000_000})
    raws = [
        b"not json",
        b"\xff\xfe",
        b"[1]",
        orjson.dumps({"user_id": "u", "item_id": "i", "type": "like", "ts": 1_700_000_000_000}),
        orjson.dumps({"user_id": "u", "item_id": "i", "type": "view", "ts": "soon"}),
        orjson.dumps(
            {
                "user_id": "u",
                "item_id": "i",
                "type": "view",
                "ts": 1_700_000_000_000,
                "params": {"k": 0},
            }
        ),
        good,
    ]
    keys = [b"u"] * (len(raws) - 1) + [b"someone else"]
    proc.process([Incoming(k, raw, 0, next(_OFFSETS)) for k, raw in zip(keys, raws, strict=True)])
    assert dict(proc.dlq_kinds) == {
        "not_json": 1,
        "not_utf8": 1,
        "not_an_object": 1,
        "field_type": 1,
        "field_ts": 1,
        "bad_params": 1,
        "wrong_key": 1,
    }


def test_gauges_follow_idle_and_revoked_partitions_and_restored_users() -> None:
    from prometheus_client import REGISTRY

    from sessionrec.stream import metrics

    def lag(partition: int) -> float | None:
        return REGISTRY.get_sample_value("sessionrec_consumer_lag", {"partition": str(partition)})

    store = {"restored": encode_state(UserState(), 0)}  # read from the changelog
    proc = _pipeline(store)
    highs = {0: 0, 1: 0}
    proc.connect(_Sink(), highwater=highs.get)
    proc.refresh_gauges()
    assert REGISTRY.get_sample_value("sessionrec_users_in_memory") == 1  # before any event
    t0 = 1_700_000_000_000
    zero = _on_partition([Event("a", "i1", "view", t0)], 0)
    one = _on_partition([Event("b", "i1", "view", t0)], 1)
    highs.update({0: zero[0].offset + 400, 1: one[0].offset + 165})  # a backlog behind each
    proc._observe(zero)
    proc._observe(one)
    proc.refresh_gauges()
    assert (lag(0), lag(1)) == (399, 164)
    highs[0] = zero[0].offset + 1  # the backlog answered meanwhile, partition 0 idle since
    proc.assigned({0})  # partition 1 given away
    proc.refresh_gauges()
    assert (lag(0), lag(1)) == (0, None)
    metrics.forget_lag({0})
