from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sessionrec.models.records import Event
from sessionrec.models.session import (
    SessionConfig,
    SessionState,
    advance,
    close_idle,
    session_id_for,
    sessionize,
)

GAP = 20 * 60_000
CONFIG = SessionConfig(gap_ms=GAP, max_len=10_000)
T0 = 1_700_000_000_000


def ev(ts: int, user: str = "u", item: str = "i") -> Event:
    return Event(user, item, "view", T0 + ts)


def test_gap_over_limit_splits_and_within_does_not() -> None:
    events = [ev(0), ev(GAP), ev(2 * GAP + 1)]
    sessions, late = sessionize(events, CONFIG)
    assert [len(s.clicks) for s in sessions] == [2, 1]
    assert late == []


def test_out_of_order_within_gap_is_merged_in_time_order() -> None:
    events = [ev(0, item="a"), ev(60_000, item="c"), ev(30_000, item="b")]
    sessions, _ = sessionize(events, CONFIG)
    assert [c.item_id for c in sessions[0].clicks] == ["a", "b", "c"]


def test_event_older_than_closed_session_is_reported_late() -> None:
    state = SessionState()
    for e in [ev(0), ev(3 * GAP)]:
        state = advance(state, e, CONFIG).state
    step = advance(state, ev(1000), CONFIG)
    assert step.late and step.closed == ()
    assert step.state.current is not None and len(step.state.current.clicks) == 1


def test_length_cap_drops_oldest_and_counts() -> None:
    config = SessionConfig(gap_ms=GAP, max_len=3)
    sessions, _ = sessionize([ev(i * 1000, item=str(i)) for i in range(5)], config)
    assert [c.item_id for c in sessions[0].clicks] == ["2", "3", "4"]
    assert sessions[0].dropped == 2


def test_close_idle_uses_event_time() -> None:
    state = advance(SessionState(), ev(0), CONFIG).state
    assert close_idle(state, T0 + GAP, CONFIG).closed == ()
    step = close_idle(state, T0 + GAP + 1, CONFIG)
    assert len(step.closed) == 1 and step.state.current is None


def test_session_id_is_stable() -> None:
    assert session_id_for("u", 5) == session_id_for("u", 5) != session_id_for("u", 6)


offsets = st.lists(st.integers(0, 6 * GAP), min_size=1, max_size=40)


@settings(max_examples=200)
@given(offsets, st.lists(st.sampled_from(["u1", "u2", "u3"]), min_size=40, max_size=40))
def test_sessions_partition_the_events(times: list[int], users: list[str]) -> None:
    events = [ev(t, user=users[i], item=f"x{i}") for i, t in enumerate(times)]
    sessions, late = sessionize(events, CONFIG)
    placed = sorted(c.item_id for s in sessions for c in s.clicks)
    assert sorted(placed + [e.item_id for e in late]) == sorted(e.item_id for e in events)
    assert len(set(placed)) == len(placed)


@settings(max_examples=200)
@given(offsets)
def test_sorted_input_any_gap_over_limit_splits(times: list[int]) -> None:
    events = [ev(t, item=f"x{i}") for i, t in enumerate(sorted(times))]
    sessions, late = sessionize(events, CONFIG)
    assert late == []
    for s in sessions:
        assert all(b.ts - a.ts <= GAP for a, b in zip(s.clicks, s.clicks[1:], strict=False))
    ordered = sorted(sessions, key=lambda s: s.start)
    assert all(b.start - a.end > GAP for a, b in itertools.pairwise(ordered))


@settings(max_examples=200)
@given(offsets)
def test_replay_gives_the_same_sessions(times: list[int]) -> None:
    events = [ev(t, item=f"x{i}") for i, t in enumerate(times)]
    assert sessionize(events, CONFIG) == sessionize(list(events), CONFIG)
