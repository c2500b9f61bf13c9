"""A user's state in the session table, as plain JSON (the changelog stores it as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.session import Click, Session, SessionState

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
