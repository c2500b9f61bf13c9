"""The worker's batch path, one step after another, free of faust and of any broker.

    admit        decode each message, drop repeats, send bad ones to the DLQ with the reason
    sessionize   advance each user's session on event time; closed sessions become past intents
    plan         every user's index queries (whole session, intents, past intents), stacked
    search       one index search for the batch, in a thread, while the next batch is admitted
    finish       merge, rank and explain each user's answer; one message per event
    publish      states to the table and its changelog, outputs to their topics
    acknowledge  a batch's events, once everything it produced is delivered (at-least-once)

`Pipeline.run` is the loop, and the one place where a batch's search overlaps the next batch.
The faust adapter (`stream.faust_adapter`) hands it batches and acknowledges their events;
tests and benchmarks call the steps, or `process`, directly.

The HTTP API (`stream.api`) asks `for_user`, `similar` and `for_session`: one request each,
planned, searched and explained by the same code as a batch's, and changing nothing. Requests are
answered on the event loop, their searches held off while a catalog slice is linked; those
that need no user's state can be served apart, by `sessionrec serve` (`stream.serve`).
Catalog upserts and new models come in through `stream.catalog`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson

from ..models.codec import (
    DecodeError,
    answer_shared,
    decode_event,
    encode,
    encode_answer,
    encode_answers,
    encode_session,
)
from ..models.config import QueryDefaults, Settings
from ..models.features import F32, I64
from ..models.filters import NO_FILTERS, Filters
from ..models.intent import cluster
from ..models.ranking import PastIntent, Plan, Request, Result, params_from
from ..models.records import Event, Intent, Item, Recommendation, RecommendedItem
from ..models.serving import CatalogChange, ServingModel
from ..models.session import Session, SessionConfig, advance, close_idle
from ..models.state import MAX_BOUGHT, PastIntentState, UserState, UserTable
from ..models.trending import Trending
from . import metrics
from .catalog import CatalogFeed
from .delivery import Deduplicator, InOrderAcks, unless_done
from .kafka import OutMessage

log = logging.getLogger(__name__)
MAX_PAST_INTENTS = 3
PAST_DECAY = 0.5  # each closed session halves the weight of the intents before it
# Events handled normally but worth a look (exported as sessionrec_oddities_total).
ODDITIES = ("late", "bad_state")
LAG_EVERY_S = 1.0  # the consumer-lag gauge is updated at most this often
# A DLQ record keeps this much of the original (and its size and hash): the whole of a
# hostile message, escaped, could exceed the broker's message size.
DLQ_ORIGINAL_BYTES = 4096
DLQ_REASON_CHARS = 1000
DLQ_KEY_BYTES = 1024
SEARCHES_AHEAD = 2  # batches whose search runs while the next ones are admitted


@dataclass(slots=True)
class Incoming:
    """One message of `events` as read: `produced_ms` is its Kafka timestamp, if any."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    produced_ms: int | None = None


@dataclass
class Output:
    """What a batch (or the idle timer) publishes. `states` maps user -> (partition, encoded
    state): the changelog messages of the states already written to the table."""

    recommendations: list[OutMessage] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    sessions: list[tuple[str, bytes]] = field(default_factory=list)
    states: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    expired: list[tuple[str, int]] = field(default_factory=list)  # (user, partition)


@dataclass
class _UserWork:
    """One user's share of a batch: the events, and the state they lead to."""

    partition: int
    state: UserState
    events: list[Event] = field(default_factory=list)
    params: dict[str, Any] | None = None


@dataclass
class Pending:
    """A batch between `plan` and `finish`. `serving` is the model it was planned with, kept
    until it is finished; `found` is its running search; `handles` are what the adapter
    acknowledges once `sent` (its states, DLQ and sessions) and its recommendations are
    delivered."""

    incoming: list[Incoming]
    out: Output
    work: dict[str, _UserWork]
    requests: list[Request]
    serving: ServingModel | None
    plan: Plan | None
    handles: list[Any] = field(default_factory=list)
    sent: asyncio.Future[None] | None = None
    found: asyncio.Future[Any] | None = None
    prepare_s: float = 0.0
    catalog: int = 0  # `Pipeline.catalog` when it was planned

    def search(self) -> tuple[I64, F32] | None:
        """The batch's index search (numpy and hnswlib only: may run in another thread)."""
        if self.serving is None or self.plan is None:
            return None
        return self.serving.recommender.search(self.plan)


class Sink(Protocol):
    """Where outputs go (`stream.kafka.Outbox`): the future resolves once all are delivered."""

    def send(self, messages: list[OutMessage]) -> asyncio.Future[None]: ...

    def take_retried(self) -> int: ...

    def take_dropped(self) -> dict[str, int]: ...


class Updates(Protocol):
    """New models and catalog upserts prepared for them (`stream.watch.Watcher`)."""

    def take(self) -> tuple[ServingModel | None, list[CatalogChange]]: ...


# What a DLQ reason is about, in a few words fit for a metric's label (`dlq_kind`).
_DLQ_KINDS = (
    ("message has no value", "no_value"),
    ("not valid UTF-8", "not_utf8"),
    ("not JSON", "not_json"),
    ("payload is JSON", "not_an_object"),
    ("message key is", "wrong_key"),
    ("params:", "bad_params"),
)
_EVENT_FIELDS = frozenset(f.name for f in dataclasses.fields(Event))


def dlq_kind(reason: str) -> str:
    """The kind of a DLQ reason, one of a few fixed words, so that the metric's labels stay
    few however varied the reasons: `field_<name>` for a bad event field, `no_value`,
    `not_utf8`, `not_json`, `not_an_object`, `wrong_key`, `bad_params`, else `other`."""
    for words, kind in _DLQ_KINDS:
        if words in reason:
            return kind
    field_name = reason.partition("field '")[2].partition("'")[0]
    return f"field_{field_name}" if field_name in _EVENT_FIELDS else "other"


def dlq_record(raw: bytes | None, reason: str, msg: Incoming) -> bytes:
    """The reason, and the original: its first DLQ_ORIGINAL_BYTES bytes (UTF-8 text when the
    original is, else base64), its size and sha256, so that a record of any size fits in a
    DLQ message and can still be matched with the original."""
    data = raw or b""
    kept = data[:DLQ_ORIGINAL_BYTES]
    try:
        data.decode("utf-8")
        original, encoding = kept.decode("utf-8", "ignore"), "utf-8"  # cut at a character
    except UnicodeDecodeError:
        original, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return encode(
        {
            "reason": reason[:DLQ_REASON_CHARS],
            "original": original,
            "encoding": encoding,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "truncated": len(kept) < len(data),
            "partition": msg.partition,
            "offset": msg.offset,
        }
    )


class Pipeline:
    """The worker's batch path over a session table (`store`: user -> encoded state, whose
    changelog topic is `changelog`) and an output `outbox`."""

    def __init__(
        self,
        settings: Settings,
        serving: ServingModel | None,
        store: MutableMapping[str, bytes],
        changelog: str = "",
        clock: Callable[[], int] | None = None,
    ):
        self.settings = settings
        self.topics = settings.topics
        self.serving = serving
        self.changelog = changelog
        self.gap = SessionConfig(settings.session_gap_ms, settings.max_session_len)
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.trending = Trending()
        self.upserted: set[str] = set()  # catalog items upserted and not deleted since start
        self.dedup = Deduplicator()
        self.counters: Counter[str] = Counter()
        self.dlq_kinds: Counter[str] = Counter()  # rejected events by `dlq_kind`, not yet counted
        ttl_ms = int(settings.state_ttl_days * 86_400_000)
        self.table = UserTable(store, settings.session_gap_ms, ttl_ms, self.counters)
        self.outbox: Sink | None = None
        self.updates: Updates | None = None
        self.highwater: Callable[[int], int | None] | None = None
        self.searches: set[asyncio.Future[Any]] = set()  # running in the searcher thread
        # The thread that runs index searches and links catalog upserts into the graph (its
        # thread starts with the first of them), and the catalog on its way into the index.
        self.searcher = ThreadPoolExecutor(1, thread_name_prefix="search")
        self.feed = CatalogFeed(self.swap, self.searcher)
        self.stats = metrics.BatchStats()
        # Each user's latest answer with the default parameters, for the query API: (the
        # encoded state it answers, the catalog it was ranked over, event_ts, emitted_ts, the
        # answer's shared part), least recently answered first.
        self.answers: OrderedDict[str, tuple[bytes, int, int, int, bytes]] = OrderedDict()
        self._counted = self.counters.copy()
        self._lag_due = 0.0
        self.positions: dict[int, int] = {}  # partition -> the offset after the last answered
        if serving is not None:
            self._seed_trending(serving)

    def connect(
        self,
        outbox: Sink,
        updates: Updates | None = None,
        highwater: Callable[[int], int | None] | None = None,
    ) -> None:
        """Where outputs go, where models and upserts come from, and the partitions' high
        watermarks (for the lag gauge)."""
        self.outbox, self.updates, self.highwater = outbox, updates, highwater

    # -- The loop -------------------------------------------------------------------------

    async def run(
        self,
        batches: AsyncIterator[tuple[list[Incoming], list[Any]]],
        acknowledge: Callable[[Any], Awaitable[Any]],
    ) -> None:
        """Handle batches until `batches` ends: each is prepared (admit, sessionize, plan),
        its states published and its search started; a second task finishes the batches in
        the order they came as their searches end, publishes their recommendations and, once
        all is delivered, acknowledges each of their handles. At most SEARCHES_AHEAD batches
        search at a time. Returns once every batch is acknowledged."""
        acks = InOrderAcks(acknowledge)
        searching: asyncio.Queue[Pending] = asyncio.Queue(SEARCHES_AHEAD)
        finisher = asyncio.ensure_future(self._finish_in_order(searching, acks))
        try:
            async for incoming, handles in batches:
                self.between_batches()
                pending = self.prepare(incoming, handles)
                if pending.plan is not None:
                    pending.found = self._start_search(self.searcher, pending)
                await unless_done(finisher, searching.put(pending))
            await unless_done(finisher, searching.join())  # the batches ended: drain
            await acks.drain()
        finally:
            finisher.cancel()
            acks.close()

    def prepare(self, incoming: list[Incoming], handles: list[Any] | None = None) -> Pending:
        """admit -> sessionize -> plan, and publish what is known before the search: the new
        states (already in the store), closed sessions and rejects."""
        started = time.perf_counter()
        self.stats.ingest(incoming)
        out = Output()
        work = self.sessionize(self.admit(incoming, out), out)
        pending = self.plan(incoming, work, out)
        pending.handles = handles or []
        if self.outbox is not None:
            pending.sent = self.publish(out)
        pending.prepare_s = time.perf_counter() - started
        return pending

    async def _finish_in_order(self, searching: asyncio.Queue[Pending], acks: InOrderAcks) -> None:
        while True:
            pending = await searching.get()
            found = await pending.found if pending.found is not None else None
            started = time.perf_counter()
            recommendations = self.finish(pending, found)
            finished = time.perf_counter()
            assert self.outbox is not None and pending.sent is not None  # set by `connect`
            delivered = asyncio.gather(pending.sent, self.outbox.send(recommendations))
            await acks.add(delivered, pending.handles)
            searching.task_done()
            compute_s = pending.prepare_s + finished - started
            self.stats.add(len(pending.handles), compute_s, time.perf_counter() - finished)
            self._observe(pending.incoming)

    def process(self, incoming: list[Incoming]) -> Output:
        """Every step but publish and acknowledge, at once (tests, benchmarks)."""
        pending = self.prepare(incoming)
        pending.out.recommendations = self.finish(pending, pending.search())
        return pending.out

    # -- The steps, in the order they run --------------------------------------------------

    def admit(self, batch: list[Incoming], out: Output) -> list[tuple[Event, Incoming]]:
        """The batch's events, decoded; repeats of a delivered message are dropped, messages
        that are not valid events go to the DLQ with the reason."""
        admitted: list[tuple[Event, Incoming]] = []
        for msg in batch:
            if not self.dedup.fresh(msg.partition, msg.offset):
                continue
            decoded = self._decode(msg)
            if isinstance(decoded, str):
                self.counters["rejected"] += 1
                self.dlq_kinds[dlq_kind(decoded)] += 1
                key = msg.key[:DLQ_KEY_BYTES] if msg.key is not None else None
                out.dlq.append((key, dlq_record(msg.value, decoded, msg)))
                continue
            self.counters["accepted"] += 1
            admitted.append((decoded, msg))
        return admitted

    def _decode(self, msg: Incoming) -> Event | str:
        if msg.value is None:
            return "event: message has no value"
        try:
            event = decode_event(msg.value)
            if event.params:
                params_from(self.settings.query, event.params, self.settings.limits)
        except DecodeError as exc:
            return str(exc)
        except ValueError as exc:
            return f"event: {exc}"
        if msg.key != event.user_id.encode():
            # Another key may put the user's events on another partition (and worker), which
            # would split the user's session state: such an event is refused, not re-keyed.
            key = "none" if msg.key is None else repr(msg.key[:60])
            return (
                f"event: message key is {key}, expected the event's user_id "
                f"{event.user_id[:60]!r} (events are keyed by user)"
            )
        return event

    def sessionize(
        self, admitted: list[tuple[Event, Incoming]], out: Output
    ) -> dict[str, _UserWork]:
        """Each user's events applied to the user's stored state, in one go per user; the new
        states are written to the store at once (their changelog messages are in `out`)."""
        work: dict[str, _UserWork] = {}
        for event, msg in admitted:
            user = work.get(event.user_id)
            if user is None:
                state = self.table.get(event.user_id)[0]
                user = work[event.user_id] = _UserWork(msg.partition, state)
            user.events.append(event)
            user.params = event.params or user.params
        for user_id, w in work.items():
            w.state = self._advance(user_id, w, out)
            self.put_state(user_id, w.state, w.partition, out)
            self.table.saw(w.partition, max(e.ts for e in w.events))
        return work

    def _advance(self, user_id: str, w: _UserWork, out: Output) -> UserState:
        state = w.state
        for event in w.events:
            if self.live(event.item_id):
                self.trending.add(event.item_id, self.settings.weights.of(event.type), event.ts)
            else:
                self.counters["unknown_item"] += 1
            step = advance(state.session, event, self.gap)
            if step.late:
                self.counters["late"] += 1
            state = UserState(step.state, state.past, state.bought)
            for closed in step.closed:
                state = self._retire(user_id, closed, state, out)
            if event.type == "buy" and event.item_id not in state.bought:
                bought = (*state.bought, event.item_id)[-MAX_BOUGHT:]
                state = UserState(state.session, state.past, bought)
        return state

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
                clusters = cluster(
                    rec.index.vectors[labels], weights, self.settings.query.max_intents
                )
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

    def plan(self, incoming: list[Incoming], work: dict[str, _UserWork], out: Output) -> Pending:
        """Each user's request (session clicks, past intents, bought items, params) and the
        batch's index queries, stacked for one search."""
        requests = [self._request(w) for w in work.values()]
        plan = None
        if self.serving is not None and requests:
            depth = self.settings.limits.max_search_depth
            plan = self.serving.recommender.plan(requests, max_fetch=depth)
        return Pending(incoming, out, work, requests, self.serving, plan, catalog=self.catalog)

    def _request(self, w: _UserWork) -> Request:
        return Request(
            self._clicks(w.state),
            frozenset(w.state.bought),
            self._past(w.state),
            params_from(self.settings.query, w.params, self.settings.limits),
            current=w.events[-1].item_id,
        )

    @staticmethod
    def _clicks(state: UserState) -> list[tuple[str, str]]:
        """The open session's (item, event type), in time order."""
        current = state.session.current
        return [(c.item_id, c.type) for c in current.clicks] if current is not None else []

    @staticmethod
    def _past(state: UserState) -> list[PastIntent]:
        return [
            PastIntent(np.asarray(p.vector, dtype=np.float32), p.weight, tuple(p.members))
            for p in state.past
        ]

    def _start_search(self, searcher: ThreadPoolExecutor, pending: Pending) -> asyncio.Future[Any]:
        """Start the batch's index search in the searcher thread (hnswlib releases the GIL);
        catalog upserts reach the graph in the same thread (`stream.catalog`), so none changes
        it while it is searched."""
        found = asyncio.get_running_loop().run_in_executor(searcher, pending.search)
        self.searches.add(found)
        found.add_done_callback(self.searches.discard)
        return found

    def finish(self, pending: Pending, found: tuple[I64, F32] | None) -> list[OutMessage]:
        """The batch's recommendation messages: one answer per user, sent for each of the
        user's events (trending items when the session gives none)."""
        serving = pending.serving
        results: list[Result | None] = [None] * len(pending.work)
        if serving is not None and pending.plan is not None and found is not None:
            results = list(serving.recommender.finish(pending.plan, *found))
        version = serving.version if serving is not None else "none"
        emitted = self.clock()
        topic = self.topics.recommendations
        messages: list[OutMessage] = []
        for (user_id, w), req, result in zip(
            pending.work.items(), pending.requests, results, strict=True
        ):
            items, intents, reason = self._explain(serving, req, result)
            current = w.state.session.current
            session_id = current.session_id if current is not None else "none"
            answer = Recommendation(
                user_id=user_id,
                session_id=session_id,
                items=items,
                intents=intents,
                model_version=version,
                event_ts=w.events[-1].ts,
                emitted_ts=emitted,
                reason=reason,
            )
            key = user_id.encode()
            shared = answer_shared(answer)
            for value in encode_answers(answer, w.events, shared):
                messages.append((topic, key, value, None))
            if w.params is None and self.settings.api.cached_answers:
                state = pending.out.states[user_id][1]
                self._keep(user_id, (state, pending.catalog, answer.event_ts, emitted, shared))
            self.counters["emitted"] += len(w.events)
        return messages

    def _keep(self, user_id: str, kept: tuple[bytes, int, int, int, bytes]) -> None:
        answers = self.answers
        answers.pop(user_id, None)
        answers[user_id] = kept
        if len(answers) > self.settings.api.cached_answers:
            answers.popitem(last=False)

    def _explain(
        self, serving: ServingModel | None, req: Request, result: Result | None
    ) -> tuple[list[RecommendedItem], list[Intent], str]:
        if result is None or not result.items:
            top = self.trending.top(
                req.params.k, set(req.bought | req.filters.exclude), self._allowed(req.filters)
            )
            items: list[RecommendedItem] = [
                {"item_id": i, "score": round(s, 5), "intent": -1} for i, s in top
            ]
            return items, [], "filtered" if result is not None and result.narrow else "trending"
        assert serving is not None  # a result comes from a model
        return result.items, [serving.intent(it) for it in result.intents], "session"

    def _allowed(self, filters: Filters) -> Callable[[str], bool]:
        """Whether a trending item may be shown: live, and passing the filters."""
        if not filters.narrows() or self.serving is None:
            return self.live
        labels, metadata = self.serving.index.labels, self.serving.metadata

        def allowed(item_id: str) -> bool:
            return self.live(item_id) and filters.passes(labels[item_id], metadata)

        return allowed

    def publish(self, out: Output) -> asyncio.Future[None]:
        """Send the states' changelog messages and the outputs; the future resolves once all
        are delivered."""
        assert self.outbox is not None  # set by `connect`
        t = self.topics
        messages: list[OutMessage] = [
            (self.changelog, orjson.dumps(user), state, partition)
            for user, (partition, state) in out.states.items()
        ]
        messages.extend(
            (self.changelog, orjson.dumps(user), None, partition) for user, partition in out.expired
        )
        messages.extend(out.recommendations)
        messages.extend((t.dlq, key, value, None) for key, value in out.dlq)
        messages.extend((t.sessions, user.encode(), value, None) for user, value in out.sessions)
        return self.outbox.send(messages)

    # -- Between batches and on timers -----------------------------------------------------

    def between_batches(self) -> None:
        """Take what the watcher has ready (a loaded model, catalog upserts it prepared) and go
        on putting it into the index (`stream.catalog`); cheap, whatever the watcher sent."""
        if self.updates is None:
            return
        model, changes = self.updates.take()
        for change in changes:
            if not change.whole:
                self._note_live(change.items)
        self.feed.take(model, changes, self.serving)

    def _note_live(self, items: list[Item]) -> None:
        for item in items:
            if item.deleted:
                self.upserted.discard(item.item_id)
                self.trending.forget(item.item_id)
            else:
                self.upserted.add(item.item_id)

    @property
    def catalog(self) -> int:
        """Changes with each model swap and catalog slice (answers kept from before are stale)."""
        return self.feed.steps

    def live(self, item_id: str) -> bool:
        """Whether an item is in the catalog now: known to the served model's index and not
        deleted (without a model: upserted and not deleted)."""
        if self.serving is None:
            return item_id in self.upserted
        index = self.serving.index
        label = index.labels.get(item_id)
        return label is not None and label not in index.deleted

    def swap(self, serving: ServingModel) -> None:
        """Serve a new model from the next batch on (a batch planned before finishes with the
        model it was planned with)."""
        old = self.serving.version if self.serving is not None else "none"
        self.serving = serving
        metrics.observe_model(serving)
        self.counters["model_swaps"] += 1
        metrics.MODEL_SWAPS.inc()
        log.info("swapped model %s -> %s between batches", old, serving.version)

    def close_idle(self) -> Output:
        """Close the sessions whose partition's event-time watermark is past their end + gap
        (the new states are in the store, their changelog messages in the output), and expire
        the states of users idle for longer than `state_ttl_days` (deleted from the store;
        tombstones for the changelog in the output)."""
        out = Output()
        for user, partition in self.table.idle_users():
            state = self.table.get(user)[0]
            step = close_idle(state.session, self.table.watermarks.get(partition, 0), self.gap)
            if not step.closed:
                continue
            state = UserState(step.state, state.past, state.bought)
            for closed in step.closed:
                state = self._retire(user, closed, state, out)
            self.put_state(user, state, partition, out)
        for user, partition in self.table.expired_users():
            self.table.delete(user)
            out.expired.append((user, partition))
        self.counters["expired"] += len(out.expired)
        return out

    def put_state(self, user_id: str, state: UserState, partition: int, out: Output) -> None:
        """Store the state, and its changelog message in `out`."""
        out.states[user_id] = (partition, self.table.put(user_id, state, partition))

    # -- Queries (the HTTP API) --------------------------------------------------------------

    def latest_answer(self, user_id: str) -> bytes | None:
        """The user's answer as the stream last sent it (the query API's, encoded), if it was
        ranked with the default parameters over the catalog served now and the user's state
        has not changed since (None: ask `for_user`)."""
        kept = self.answers.get(user_id)
        if kept is None:
            return None
        state, catalog, event_ts, emitted_ts, shared = kept
        if catalog != self.catalog or self.table.store.get(user_id) is not state:
            del self.answers[user_id]
            return None
        return encode_answer(user_id, event_ts, emitted_ts, shared)

    def for_user(
        self, user_id: str, params: QueryDefaults, filters: Filters = NO_FILTERS
    ) -> Recommendation:
        """What the user's next answer would be now: the stored session, past intents and
        bought items, asked with `params` (an unknown user gets trending items)."""
        state = self.table.get(user_id)[0]
        current = state.session.current
        clicks = self._clicks(state)
        # The item in hand: that of the event that arrived last, as the stream's answer has it.
        in_hand = max(current.clicks, key=lambda c: c.seq).item_id if current else None
        request = Request(
            clicks, frozenset(state.bought), self._past(state), params, filters, in_hand
        )
        answer = self._answer(request, user_id)
        answer.session_id = current.session_id if current is not None else "none"
        answer.event_ts = current.end if current is not None else 0
        return answer

    def similar(
        self, item_id: str, params: QueryDefaults, filters: Filters = NO_FILTERS
    ) -> Recommendation | None:
        """Items like `item_id`, itself excluded (None: the item is not in the catalog)."""
        if self.serving is None or not self.live(item_id):
            return None
        filters = dataclasses.replace(filters, exclude=filters.exclude | {item_id})
        return self._answer(Request([(item_id, "view")], params=params, filters=filters), "")

    def for_session(
        self, clicks: list[tuple[str, str]], params: QueryDefaults, filters: Filters = NO_FILTERS
    ) -> Recommendation:
        """An anonymous session's answer: (item_id, event type) in time order; nothing is
        stored."""
        in_hand = clicks[-1][0] if clicks else None
        return self._answer(Request(clicks, params=params, filters=filters, current=in_hand), "")

    def _answer(self, request: Request, user_id: str) -> Recommendation:
        serving = self.serving
        result = self._rank(serving, request) if serving is not None else None
        return self._recommendation(serving, request, result, user_id)

    def _rank(self, serving: ServingModel, request: Request) -> Result:
        """Plan, search and finish one request, on the event loop (a thread of its own would
        take Python's lock from the loop; `sessionrec serve` keeps such requests off the
        workers instead)."""
        rec = serving.recommender
        plan = rec.plan([request], max_fetch=self.settings.limits.max_search_depth)
        return rec.finish(plan, *rec.search(plan))[0]

    def _recommendation(
        self,
        serving: ServingModel | None,
        request: Request,
        result: Result | None,
        user_id: str,
    ) -> Recommendation:
        items, intents, reason = self._explain(serving, request, result)
        return Recommendation(
            user_id=user_id,
            session_id="none",
            items=items,
            intents=intents,
            model_version=serving.version if serving is not None else "none",
            event_ts=0,
            emitted_ts=self.clock(),
            reason=reason,
        )

    # -- Metrics ---------------------------------------------------------------------------

    def _seed_trending(self, serving: ServingModel) -> None:
        pop = serving.model.popularity
        if pop.size:
            top = np.argsort(-pop)[:500]
            self.trending.seed(
                [serving.model.item_ids[i] for i in top], [float(pop[i]) for i in top], 0
            )

    def _observe(self, incoming: list[Incoming]) -> None:
        """Counters, latencies and consumer lag of a finished batch."""
        self.count()
        metrics.observe_batch(incoming)
        for msg in incoming:
            if msg.offset >= self.positions.get(msg.partition, 0):
                self.positions[msg.partition] = msg.offset + 1
        if time.monotonic() >= self._lag_due:
            self.refresh_gauges()

    def assigned(self, partitions: set[int]) -> None:
        """The partitions of `events` this worker holds now: only their users are closed or
        expired, and only their lag is shown."""
        self.table.own(partitions)
        log.info("%s partitions held now: %s", self.topics.events, sorted(partitions))
        revoked = set(self.positions) - partitions
        for partition in revoked:
            del self.positions[partition]
        metrics.forget_lag(revoked)

    def refresh_gauges(self) -> None:
        """The lag of every partition held (idle ones too: each high watermark is asked
        again) and the users in memory; after batches at most every LAG_EVERY_S, and on a
        timer."""
        self._lag_due = time.monotonic() + LAG_EVERY_S
        metrics.USERS.set(len(self.table))
        if self.highwater is not None:
            metrics.observe_lag(self.positions, self.highwater)

    def count(self) -> None:
        """Add what the counters gained since the last call to the metrics (after a batch,
        and after the idle timer closed or expired anything)."""
        assert self.outbox is not None
        now, last = self.counters, self._counted
        for outcome in ("accepted", "rejected"):
            metrics.EVENTS.labels(outcome).inc(now[outcome] - last[outcome])
        for kind, n in self.dlq_kinds.items():
            metrics.DLQ.labels(kind).inc(n)
        self.dlq_kinds.clear()
        metrics.EMITTED.inc(now["emitted"] - last["emitted"])
        metrics.UNKNOWN.inc(now["unknown_item"] - last["unknown_item"])
        metrics.SESSIONS.inc(now["sessions_closed"] - last["sessions_closed"])
        metrics.EXPIRED.inc(now["expired"] - last["expired"])
        metrics.USERS.set(len(self.table))
        for kind in ODDITIES:
            metrics.ODDITIES.labels(kind).inc(now[kind] - last[kind])
        self._counted = now.copy()
        metrics.DUPLICATES.inc(self.dedup.take_dropped())
        metrics.REDELIVERED.inc(self.outbox.take_retried())
        for topic, dropped in self.outbox.take_dropped().items():
            metrics.OUTPUTS_DROPPED.labels(topic).inc(dropped)
        for partition, offset, highest in self.dedup.take_out_of_order():
            log.warning(
                "events partition %d handed out offset %d after offset %d: processed "
                "(a message delivered out of order is new, not a repeat)",
                partition,
                offset,
                highest,
            )
