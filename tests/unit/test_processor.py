from __future__ import annotations

import logging

import orjson
import pytest

from models.codec import encode
from models.config import Settings
from models.records import Event
from stream.processor import Incoming, Output, Processor


def _incoming(events: list[Event]) -> list[Incoming]:
    return [Incoming(e.user_id.encode(), encode(e), 0, n) for n, e in enumerate(events)]


def test_a_prepared_batch_has_its_states_before_its_recommendations() -> None:
    proc = Processor(Settings(), None, clock=lambda: 5)
    t0 = 1_700_000_000_000
    batch = _incoming(
        [
            Event("u1", "a", "view", t0),
            Event("u2", "b", "buy", t0 + 1),
            Event("u1", "c", "cart", t0 + 2),
        ]
    )
    batch.append(Incoming(b"u3", b"{not json", 0, 3))
    pending = proc.prepare(batch, lambda _user: None)
    assert set(pending.out.states) == {"u1", "u2"} and len(pending.out.dlq) == 1
    assert pending.out.recommendations == [] and pending.search() is None  # no model: trending
    clicks = orjson.loads(pending.out.states["u1"][1])["current"]["clicks"]
    assert [c[2] for c in clicks] == ["a", "c"]

    out = proc.complete(pending, pending.search())
    assert [user for user, _, _ in out.recommendations] == ["u1", "u1", "u2"]
    assert proc.counters["emitted"] == 3 and proc.counters["rejected"] == 1
    # The same batch handled at once gives the same messages.
    again = Processor(Settings(), None, clock=lambda: 5).process(batch, lambda _user: None)
    assert again.recommendations == out.recommendations


def test_states_are_stored_encoded_and_an_unreadable_one_starts_afresh() -> None:
    proc = Processor(Settings(), None, clock=lambda: 5)
    table: dict[str, bytes] = {}

    def run(events: list[Event]) -> None:
        out = proc.process(_incoming(events), table.get)
        table.update({user: state for user, (_, state) in out.states.items()})

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
    proc = Processor(Settings(), None, clock=lambda: 5)
    t0 = 1_700_000_000_000
    table = {"u1": b"not json", "u2": b"neither"}  # as restored from a damaged changelog
    with caplog.at_level(logging.WARNING, logger="stream.processor"):
        assert proc.idle_users(table) == []  # the idle index reads both first
        for ts in (t0, t0 + 1):
            out = proc.process(_incoming([Event("u1", "a", "view", ts)]), table.get)
            table.update({user: state for user, (_, state) in out.states.items()})
    assert proc.counters["bad_state"] == 2
    reports = sorted(r.getMessage() for r in caplog.records if "unreadable" in r.getMessage())
    assert [line.split(":")[0] for line in reports] == ["user 'u1'", "user 'u2'"]
    # u1's state was written again: it is readable, and a new damage is a new report.
    assert [c[2] for c in orjson.loads(table["u1"])["current"]["clicks"]] == ["a", "a"]
    table["u1"] = b"{"
    proc.process(_incoming([Event("u1", "b", "view", t0 + 2)]), table.get)
    assert proc.counters["bad_state"] == 3


def test_idle_users_come_from_the_processors_writes_and_from_a_restored_table() -> None:
    gap = Settings().session_gap_ms
    t0 = 1_700_000_000_000
    proc = Processor(Settings(), None, clock=lambda: 5)
    table: dict[str, bytes] = {}

    def run(events: list[Event], partition: int = 0) -> None:
        batch = [
            Incoming(e.user_id.encode(), encode(e), partition, n) for n, e in enumerate(events)
        ]
        out = proc.process(batch, table.get)
        table.update({user: state for user, (_, state) in out.states.items()})

    run([Event("early", "a", "view", t0), Event("late", "b", "view", t0 + gap)])
    run([Event("other", "c", "view", t0)], partition=1)
    assert proc.idle_users(table) == []
    run([Event("late", "d", "view", t0 + gap + 1)])  # partition 0's watermark passes early's gap
    assert proc.idle_users(table) == [("early", 0)]  # not "other": partition 1 has not moved

    # A worker that restored the same table from the changelog finds the same users.
    restored = Processor(Settings(), None)
    restored.watermarks = dict(proc.watermarks)
    assert restored.idle_users(table) == [("early", 0)]
    out = Output()
    restored.close_idle("early", table["early"], out, 0)
    assert orjson.loads(out.states["early"][1])["current"] is None
    assert len(out.sessions) == 1
    table.update({user: state for user, (_, state) in out.states.items()})
    assert restored.idle_users(table) == []

    del table["early"]  # its partition went to another worker
    assert proc.idle_users(table) == [] and "early" not in proc.ends


def test_a_stored_state_takes_its_size_in_memory() -> None:
    import tracemalloc

    from models.session import SessionConfig, SessionState, advance
    from stream.state import UserState

    proc = Processor(Settings(), None)
    state = SessionState()
    for j in range(5):
        event = Event("u1", f"item-{j}", "view", 1_700_000_000_000 + j * 1000)
        state = advance(state, event, SessionConfig()).state
    tracemalloc.start()
    try:
        stored = [proc.keep(f"u{i}", UserState(state), 0) for i in range(1000)]
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # About 300 bytes of JSON each, plus the index entry; not the 4 KB buffer orjson writes in.
    assert len(stored[0]) < 400 and used < 1000 * 1000


def test_bench_users_walk_whole_sessions_in_order() -> None:
    from stream.bench import Walkers

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
