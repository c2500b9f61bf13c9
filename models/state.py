"""A user's state, and the session table that holds every user's state encoded.

The table's values are the JSON its changelog stores: bytes, which Python's garbage collector
never walks; a state is decoded when its user's events arrive.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .codec import encode
from .session import Click, Session, SessionState

log = logging.getLogger(__name__)

MAX_BOUGHT = 200


@dataclass(slots=True)
class PastIntentState:
    vector: list[float]
    weight: float
    members: list[str]


@dataclass(slots=True)
class UserState:
    session: SessionState = field(default_factory=SessionState)
    past: tuple[PastIntentState, ...] = ()
    bought: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        s = self.session
        cur = s.current
        return {
            "current": None
            if cur is None
            else {
                "id": cur.session_id,
                "user": cur.user_id,
                "dropped": cur.dropped,
                "clicks": [[c.ts, c.seq, c.item_id, c.type] for c in cur.clicks],
            },
            "closed_until": s.closed_until,
            "seq": s.seq,
            "late": s.late,
            "past": [{"v": p.vector, "w": p.weight, "m": p.members} for p in self.past],
            "bought": list(self.bought),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> UserState:
        if not data:
            return cls()
        cur = data.get("current")
        current = None
        if cur:
            clicks = tuple(Click(int(t), int(q), str(i), str(k)) for t, q, i, k in cur["clicks"])
            current = Session(cur["id"], cur["user"], clicks, int(cur.get("dropped", 0)))
        session = SessionState(
            current, data.get("closed_until"), int(data.get("seq", 0)), int(data.get("late", 0))
        )
        past = tuple(
            PastIntentState([float(x) for x in p["v"]], float(p["w"]), [str(m) for m in p["m"]])
            for p in data.get("past", [])
        )
        return cls(session, past, tuple(data.get("bought", [])))


class UserTable:
    """Users' states over `store` (user -> encoded state, as the changelog holds them), with
    what the idle timer needs without decoding every state: each user's open session end and
    last event time, and the event-time watermark of each partition (a lagging partition's
    users are never closed by the progress of another one). Counts unreadable states in
    `counters["bad_state"]`."""

    def __init__(
        self, store: MutableMapping[str, bytes], gap_ms: int, ttl_ms: int, counters: Counter[str]
    ):
        self.store = store
        self.gap_ms = gap_ms
        self.ttl_ms = ttl_ms
        self.counters = counters
        # user -> (end of the open session or None, last event time or None, partition)
        self.ends: dict[str, tuple[int | None, int | None, int]] = {}
        self.unreadable: set[str] = set()  # reported as unreadable, not yet written again
        self.watermarks: dict[int, int] = {}
        self.owned: set[int] | None = None  # partitions this worker answers (None: all)

    def __len__(self) -> int:
        return len(self.store)

    def get(self, user_id: str) -> tuple[UserState, int]:
        """A user's state decoded, and the partition it was stored for. One that cannot be
        read is logged, counted and started afresh (the user's next events still get
        answers)."""
        raw = self.store.get(user_id)
        if not raw:
            return UserState(), 0
        try:
            data = orjson.loads(raw)
            return UserState.from_json(data), int(data.get("partition", 0))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Reported once, whether the idle index or the user's next event finds it first.
            if user_id not in self.unreadable:
                self.unreadable.add(user_id)
                self.counters["bad_state"] += 1
                log.warning("user %r: stored state unreadable (%s); starting afresh", user_id, exc)
            return UserState(), 0

    def put(self, user_id: str, state: UserState, partition: int) -> bytes:
        """Store a user's state; returns it encoded, for the changelog."""
        encoded = encode_state(state, partition)
        self.store[user_id] = encoded
        self.ends[user_id] = _ends(state, partition)
        if self.unreadable:
            self.unreadable.discard(user_id)
        return encoded

    def delete(self, user_id: str) -> None:
        del self.store[user_id]
        self.ends.pop(user_id, None)

    def saw(self, partition: int, ts: int) -> None:
        """Event time `ts` was seen on `partition`."""
        if self.owned is not None and partition not in self.owned:
            return  # taken away while its events were in hand
        if ts > self.watermarks.get(partition, 0):
            self.watermarks[partition] = ts

    def own(self, partitions: set[int]) -> None:
        """Only users of `partitions` are closed or expired from now on. The store may also
        hold other workers' users (standby copies, or partitions taken away): their owners
        close those, by their own watermarks."""
        self.owned = set(partitions)
        self.watermarks = {p: ts for p, ts in self.watermarks.items() if p in self.owned}

    def changed(self, users: list[str]) -> None:
        """These users' states were written to the store from outside this table (restored
        or copied from the changelog): they are read again at the next idle check."""
        for user in users:
            self.ends.pop(user, None)

    def idle_users(self) -> list[tuple[str, int]]:
        """(user, partition) of the open sessions that their partition's watermark has passed
        by more than the gap. Users the store gained without this table (restored from the
        changelog) are read once; users it lost (partitions taken away) are forgotten."""
        if len(self.ends) != len(self.store) or not self.ends.keys() <= self.store.keys():
            self._index()
        marks = self.watermarks
        return [
            (user, partition)
            for user, (end, _, partition) in self.ends.items()
            if end is not None and end + self.gap_ms < marks.get(partition, 0)
        ]

    def expired_users(self) -> list[tuple[str, int]]:
        """(user, partition) of the users with no open session whose last event is older than
        the time to live, by their partition's watermark."""
        marks = self.watermarks
        return [
            (user, partition)
            for user, (end, last, partition) in self.ends.items()
            if end is None and last is not None and last + self.ttl_ms < marks.get(partition, 0)
        ]

    def _index(self) -> None:
        for user in self.ends.keys() - self.store.keys():
            del self.ends[user]
            self.unreadable.discard(user)
        for user in self.store.keys() - self.ends.keys():
            state, partition = self.get(user)
            self.ends[user] = _ends(state, partition)


def _ends(state: UserState, partition: int) -> tuple[int | None, int | None, int]:
    """(end of the open session or None, last event time or None, partition)."""
    current = state.session.current
    if current is not None:
        return current.end, current.end, partition
    return None, state.session.closed_until, partition


def encode_state(state: UserState, partition: int) -> bytes:
    """A state as the table and its changelog hold it: JSON with the partition it is for."""
    data = state.to_json()
    data["partition"] = partition
    # A copy of orjson's output: its bytes keep the 4 KB buffer they were written in.
    return bytes(memoryview(encode(data)))
