"""The sessionizer: a pure function of (state, event) -> (state, closed sessions).

Sessions are cut on event time by an inactivity gap (20 minutes by default). Events that arrive
out of order but within the gap of the open session are merged in time order. An event older
than what the state can still change (before the open session by more than the gap, or not
after the end of the last closed session) starts nothing and is reported as late.
"""

from __future__ import annotations

import hashlib
from bisect import insort
from dataclasses import dataclass, replace

from .records import Event

DEFAULT_GAP_MS = 20 * 60 * 1000
DEFAULT_MAX_LEN = 50


@dataclass(slots=True)
class Click:
    """One event as a session keeps it, ordered by (ts, seq) so merges are deterministic."""

    ts: int
    seq: int
    item_id: str
    type: str


@dataclass(slots=True)
class Session:
    """A run of one user's events with no gap above the limit, in event-time order."""

    session_id: str
    user_id: str
    clicks: tuple[Click, ...]
    dropped: int = 0

    @property
    def start(self) -> int:
        return self.clicks[0].ts

    @property
    def end(self) -> int:
        return self.clicks[-1].ts


@dataclass(slots=True)
class SessionState:
    """What the sessionizer keeps for one user between events."""

    current: Session | None = None
    closed_until: int | None = None
    seq: int = 0
    late: int = 0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    gap_ms: int = DEFAULT_GAP_MS
    max_len: int = DEFAULT_MAX_LEN


@dataclass(slots=True)
class Step:
    """The result of one event: the new state, sessions it closed, and whether it was late."""

    state: SessionState
    closed: tuple[Session, ...]
    late: bool = False


def session_id_for(user_id: str, start_ts: int) -> str:
    """A stable id: the same user and first event time always give the same id."""
    digest = hashlib.blake2b(f"{user_id}\x00{start_ts}".encode(), digest_size=8).hexdigest()
    return f"s-{digest}"


def _open(user_id: str, click: Click) -> Session:
    return Session(session_id_for(user_id, click.ts), user_id, (click,))


def _merge(session: Session, click: Click, max_len: int) -> Session:
    last = session.clicks[-1]
    if (click.ts, click.seq) >= (last.ts, last.seq):  # the usual case: in order, at the end
        clicks = [*session.clicks, click]
    else:
        clicks = list(session.clicks)
        insort(clicks, click, key=lambda c: (c.ts, c.seq))
    overflow = max(0, len(clicks) - max_len)
    # (Constructors, not dataclasses.replace: this runs for every event.)
    return Session(
        session.session_id, session.user_id, tuple(clicks[overflow:]), session.dropped + overflow
    )


def advance(state: SessionState, event: Event, config: SessionConfig) -> Step:
    """Apply one event to a user's session state.

    Args:
        state: the user's state (a fresh `SessionState()` for a new user).
        event: the event; only its event time `ts` matters, never the wall clock.
        config: gap and length cap.

    Returns:
        A `Step` with the new state, the sessions this event closed (at most one), and
        `late=True` when the event was too old to place (it is then not in any session).
    """
    click = Click(event.ts, state.seq, event.item_id, event.type)
    seq = state.seq + 1
    current = state.current
    if (
        state.closed_until is not None
        and event.ts <= state.closed_until
        and (current is None or event.ts < current.start)
    ):
        return Step(replace(state, seq=seq, late=state.late + 1), (), late=True)
    if current is None:
        opened = _open(event.user_id, click)
        return Step(SessionState(opened, state.closed_until, seq, state.late), ())
    if event.ts > current.end + config.gap_ms:
        new_state = SessionState(_open(event.user_id, click), current.end, seq, state.late)
        return Step(new_state, (current,))
    if event.ts < current.start - config.gap_ms:
        return Step(replace(state, seq=seq, late=state.late + 1), (), late=True)
    if any(
        c.ts == click.ts and c.item_id == click.item_id and c.type == click.type
        for c in current.clicks
    ):
        return Step(state, ())  # a replayed event (at-least-once delivery) changes nothing
    merged = _merge(current, click, config.max_len)
    return Step(SessionState(merged, state.closed_until, seq, state.late), ())


def close_idle(state: SessionState, now_ts: int, config: SessionConfig) -> Step:
    """Close the open session if event time `now_ts` is past its end plus the gap."""
    current = state.current
    if current is None or now_ts <= current.end + config.gap_ms:
        return Step(state, ())
    return Step(replace(state, current=None, closed_until=current.end), (current,))


def sessionize(events: list[Event], config: SessionConfig) -> tuple[list[Session], list[Event]]:
    """Run the sessionizer over a batch of events (any users), closing everything at the end.

    Returns the sessions in order of closing, and the events reported late.
    """
    states: dict[str, SessionState] = {}
    sessions: list[Session] = []
    late: list[Event] = []
    for event in events:
        step = advance(states.get(event.user_id, SessionState()), event, config)
        states[event.user_id] = step.state
        sessions.extend(step.closed)
        if step.late:
            late.append(event)
    sessions.extend(s.current for s in states.values() if s.current is not None)
    return sessions, late
