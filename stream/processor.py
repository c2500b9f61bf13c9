"""The worker's logic, free of faust: a batch of raw events in, everything to publish out.

The faust agent is a thin adapter around `Processor.process`; tests drive it directly too.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from models.codec import DecodeError, decode_event, encode, encode_session
from models.config import Settings
from models.features import F32
from models.index import I64
from models.intent import cluster
from models.ranking import IntentOut, PastIntent, Plan, Request, Result, params_from
from models.records import SCHEMA_VERSION, Event, Intent
from models.session import Session, SessionConfig, advance, close_idle
from stream.serving import ServingModel
from stream.state import PastIntentState, UserState
from stream.trending import Trending

log = logging.getLogger(__name__)
MAX_PAST_INTENTS = 3
# Counters of events handled normally but worth a look (exported as sessionrec_oddities_total).
ODDITIES = ("late", "key_mismatch", "bad_state")
PAST_DECAY = 0.5


@dataclass(frozen=True, slots=True)
class Incoming:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    produced_ms: int | None = None


@dataclass
class Output:
    """What one batch produces. `states` maps user -> (partition, encoded JSON state) to
    persist."""

    recommendations: list[tuple[str, bytes, int | None]] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    sessions: list[tuple[str, bytes]] = field(default_factory=list)
    states: dict[str, tuple[int, bytes]] = field(default_factory=dict)


@dataclass
class _UserWork:
    partition: int
    state: UserState
    events: list[tuple[Event, Incoming]] = field(default_factory=list)
    params: dict[str, Any] | None = None


@dataclass
class Pending:
    """A prepared batch: its users' new states are in `out`; its recommendations wait for the
    index search. `serving` is the model it was planned with, kept until it completes."""

    out: Output
    work: dict[str, _UserWork]
    requests: list[Request]
    serving: ServingModel | None
    plan: Plan | None

    def search(self) -> tuple[I64, F32] | None:
        """The batch's index search (numpy and hnswlib only: may run in another thread)."""
        if self.serving is None or self.plan is None:
            return None
        return self.serving.recommender.search(self.plan)


def dlq_record(raw: bytes | None, reason: str, msg: Incoming) -> bytes:
    """The original bytes (UTF-8 text when they are, else base64) and the reason."""
    data = raw or b""
    try:
        original, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return encode(
        {
            "reason": reason,
            "original": original,
            "encoding": encoding,
            "partition": msg.partition,
            "offset": msg.offset,
        }
    )


class Processor:
    def __init__(
        self,
        settings: Settings,
        serving: ServingModel | None,
        clock: Callable[[], int] | None = None,
    ):
        self.settings = settings
        self.serving = serving
        self.trending = Trending()
        self.gap = SessionConfig(settings.session_gap_ms, settings.max_session_len)
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.counters: Counter[str] = Counter()
        # user -> (end of the open session or None, partition), for every user in the table:
        # the idle timer finds idle sessions here without decoding every state.
        self.ends: dict[str, tuple[int | None, int]] = {}
        # Users whose stored state was reported unreadable and not yet written again.
        self.unreadable: set[str] = set()
        # Event-time watermark per partition: users of a lagging partition are never closed
        # by the progress of another one.
        self.watermarks: dict[int, int] = {}
        if serving is not None:
            self._seed_trending(serving)

    def _seed_trending(self, serving: ServingModel) -> None:
        pop = serving.model.popularity
        if pop.size:
            top = np.argsort(-pop)[:500]
            self.trending.seed(
                [serving.model.item_ids[i] for i in top], [float(pop[i]) for i in top], 0
            )

    def swap(self, serving: ServingModel) -> None:
        """Serve a new model from the next batch on (called between batches)."""
        self.serving = serving
        self.counters["model_swaps"] += 1

    def _decode(self, msg: Incoming) -> Event | str:
        if msg.value is None:
            return "event: message has no value"
        try:
            event = decode_event(msg.value)
            if event.params:
                params_from(self.settings.query, event.params)
        except DecodeError as exc:
            return str(exc)
        except ValueError as exc:
            return f"event: {exc}"
        if msg.key is not None and msg.key != event.user_id.encode():
            self.counters["key_mismatch"] += 1
        return event

    def process(self, batch: list[Incoming], load: Callable[[str], bytes | None]) -> Output:
        """Handle a batch at once: `prepare`, search, `complete`."""
        pending = self.prepare(batch, load)
        return self.complete(pending, pending.search())

    def prepare(self, batch: list[Incoming], load: Callable[[str], bytes | None]) -> Pending:
        """Decode the batch, advance its users' sessions (their new states, closed sessions
        and rejected events are in `.out` at once) and plan its index search. `load` gives a
        user's stored state (encoded JSON) or None."""
        out = Output()
        work: dict[str, _UserWork] = {}
        for msg in batch:
            decoded = self._decode(msg)
            if isinstance(decoded, str):
                self.counters["rejected"] += 1
                out.dlq.append((msg.key, dlq_record(msg.value, decoded, msg)))
                continue
            self.counters["accepted"] += 1
            user = work.get(decoded.user_id)
            if user is None:
                user = work[decoded.user_id] = _UserWork(
                    msg.partition, self._state(decoded.user_id, load(decoded.user_id))
                )
            user.events.append((decoded, msg))
            user.params = decoded.params or user.params
        for user_id, w in work.items():
            self._advance(user_id, w, out)
            last = max(e.ts for e, _ in w.events)
            self.watermarks[w.partition] = max(self.watermarks.get(w.partition, 0), last)
        requests = [self._request(w) for w in work.values()]
        plan = None
        if self.serving is not None and requests:
            plan = self.serving.recommender.plan(requests)
        return Pending(out, work, requests, self.serving, plan)

    def complete(self, pending: Pending, found: tuple[I64, F32] | None) -> Output:
        """The batch's recommendations, from `pending.search()`'s result."""
        out, work, serving = pending.out, pending.work, pending.serving
        results: list[Result | None] = [None] * len(work)
        if serving is not None and pending.plan is not None and found is not None:
            results = list(serving.recommender.finish(pending.plan, *found))
        version = serving.version if serving is not None else "none"
        emitted = self.clock()
        for (user_id, w), req, result in zip(work.items(), pending.requests, results, strict=True):
            items, intents, reason = self._explain(serving, req, result)
            current = w.state.session.current
            session_id = current.session_id if current is not None else "none"
            # One computation per user per batch; each of its events still gets its message.
            shared = encode(
                {
                    "items": items,
                    "intents": intents,
                    "reason": reason,
                    "model_version": version,
                    "session_id": session_id,
                    "schema_version": SCHEMA_VERSION,
                }
            )[1:-1]
            for event, _ in w.events:
                head = encode(
                    {
                        "user_id": user_id,
                        "item_id": event.item_id,
                        "type": event.type,
                        "event_ts": event.ts,
                        "emitted_ts": emitted,
                    }
                )[:-1]
                out.recommendations.append((user_id, head + b"," + shared + b"}", w.partition))
                self.counters["emitted"] += 1
        return out

    def _advance(self, user_id: str, w: _UserWork, out: Output) -> None:
        state = w.state
        for event, _ in w.events:
            self.trending.add(event.item_id, self.settings.weights.of(event.type), event.ts)
            if self.serving is None or event.item_id not in self.serving.index.labels:
                self.counters["unknown_item"] += 1
            step = advance(state.session, event, self.gap)
            if step.late:
                self.counters["late"] += 1
            state = UserState(step.state, state.past, state.bought)
            for closed in step.closed:
                state = self._retire(user_id, closed, state, out)
            if event.type == "buy" and event.item_id not in state.bought:
                state = UserState(state.session, state.past, (*state.bought, event.item_id)[-200:])
        w.state = state
        out.states[user_id] = (w.partition, self.keep(user_id, state, w.partition))

    def _state(self, user_id: str, raw: bytes | None) -> UserState:
        return self._stored(user_id, raw)[0]

    def _stored(self, user_id: str, raw: bytes | None) -> tuple[UserState, int]:
        """A stored state decoded, and the partition it was stored for. One that cannot be read
        is logged, counted and started afresh (the user's next events still get
        recommendations)."""
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

    def keep(self, user_id: str, state: UserState, partition: int) -> bytes:
        """The state as stored: encoded JSON, so that the table holds bytes, not the many small
        objects Python's garbage collector would walk again and again."""
        data = state.to_json()
        data["partition"] = partition
        current = state.session.current
        self.ends[user_id] = (current.end if current is not None else None, partition)
        if self.unreadable:
            self.unreadable.discard(user_id)
        # A copy of orjson's output: its bytes keep the 4 KB buffer they were written in.
        return bytes(memoryview(encode(data)))

    def idle_users(self, table: Mapping[str, bytes]) -> list[tuple[str, int]]:
        """(user, partition) of the sessions that their partition's event-time watermark has
        passed by more than the gap. `table` holds every user's stored state; users it gained
        without this processor (restored from the changelog) are read once, users it lost
        (partitions taken away) are forgotten."""
        if len(self.ends) != len(table) or not self.ends.keys() <= table.keys():
            self._index(table)
        gap, marks = self.gap.gap_ms, self.watermarks
        return [
            (user, partition)
            for user, (end, partition) in self.ends.items()
            if end is not None and end + gap < marks.get(partition, 0)
        ]

    def _index(self, table: Mapping[str, bytes]) -> None:
        for user in self.ends.keys() - table.keys():
            del self.ends[user]
            self.unreadable.discard(user)
        for user in table.keys() - self.ends.keys():
            state, partition = self._stored(user, table[user])
            current = state.session.current
            self.ends[user] = (current.end if current is not None else None, partition)

    def _retire(self, user_id: str, closed: Session, state: UserState, out: Output) -> UserState:
        """A closed session goes to `sessions`; its intents become the user's past intents."""
        out.sessions.append((user_id, encode_session(closed)))
        self.counters["sessions_closed"] += 1
        past = [PastIntentState(p.vector, p.weight * PAST_DECAY, p.members) for p in state.past]
        if self.serving is not None:
            rec = self.serving.recommender
            ids, labels, weights, _ = rec.session_items(
                [(c.item_id, c.type) for c in closed.clicks]
            )
            if ids:
                vectors = rec.index.vectors[labels]
                clusters = cluster(vectors, weights, self.settings.query.max_intents)
                total = sum(c.weight for c in clusters) or 1.0
                fresh = [
                    PastIntentState(
                        [round(float(x), 4) for x in c.vector],
                        c.weight / total,
                        [ids[m] for m in c.members][:10],
                    )
                    for c in clusters
                    if c.weight > 0
                ]
                past = fresh + past
        return UserState(state.session, tuple(past[:MAX_PAST_INTENTS]), state.bought)

    def close_idle(self, user_id: str, raw: bytes | None, out: Output, partition: int) -> None:
        """Close the user's session if the event-time watermark is past its end + gap."""
        state = self._state(user_id, raw)
        step = close_idle(state.session, self.watermarks.get(partition, 0), self.gap)
        if not step.closed:
            return
        state = UserState(step.state, state.past, state.bought)
        for closed in step.closed:
            state = self._retire(user_id, closed, state, out)
        out.states[user_id] = (partition, self.keep(user_id, state, partition))

    def _request(self, w: _UserWork) -> Request:
        current = w.state.session.current
        clicks = [(c.item_id, c.type) for c in current.clicks] if current is not None else []
        past = [
            PastIntent(np.asarray(p.vector, dtype=np.float32), p.weight, tuple(p.members))
            for p in w.state.past
        ]
        return Request(
            clicks, frozenset(w.state.bought), past, params_from(self.settings.query, w.params)
        )

    def _explain(
        self, serving: ServingModel | None, req: Request, result: Result | None
    ) -> tuple[list[dict[str, Any]], list[Intent], str]:
        if result is None or not result.items:
            top = self.trending.top(req.params.k, set(req.bought))
            return (
                [{"item_id": i, "score": round(s, 5), "intent": -1} for i, s in top],
                [],
                "trending",
            )
        items = [{"item_id": i, "score": s, "intent": n} for i, s, n in result.items]
        assert serving is not None  # a result comes from a model
        return items, [_intent(serving, it) for it in result.intents], "session"


def _intent(serving: ServingModel, it: IntentOut) -> Intent:
    known = serving.index.labels
    labels = [known[m] for m in it.members if m in known]
    categories, brands = serving.categories, serving.brands
    return Intent(
        id=it.id,
        members=list(it.members),
        weight=round(it.weight, 4),
        category=_dominant([categories.get(label) for label in labels]),
        brand=_dominant([brands.get(label) for label in labels]),
        past=it.past,
    )


def _dominant(values: list[str | None]) -> str | None:
    """The most frequent value that is set; the first seen of equally frequent ones."""
    if len(values) == 1:
        return values[0] or None
    counts: dict[str, int] = {}
    for value in values:
        if value:
            counts[value] = counts.get(value, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None
