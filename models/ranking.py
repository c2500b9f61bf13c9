"""The recommender: a session (and past intents) in, ranked and explained items out.

The same code serves the stream worker and the offline evaluation. For each request:
1. weigh the session's last clicks by event type and by learned position-from-the-end weights;
2. cluster them into intents; the query set is the whole session (the combination of all
   intents), each intent alone when there are several, pairs of intents when there are three or
   more, and the user's past intents (scaled by `past_weight`);
3. search the index with every query of every request in one batched call;
4. merge candidates by their best weighted cosine, plus `transition_weight` times their share
   of what followed the latest click in the training sessions, and for items already in the
   session `return_weight` times how often sessions went back to an item clicked that long
   before (models/transitions.py: both re-score the candidates the search found, and never
   add one);
5. drop bought (and optionally seen) items and what the request's filters exclude, and, with
   diversity > 0, re-rank by maximal marginal relevance.

A request's answer depends on the request and the index only, never on the other requests of
its batch: the HTTP API answers a user alone and gives the list the stream gave.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations, pairwise
from typing import Any

import numpy as np

from .config import EventWeights, Limits, QueryDefaults
from .features import F32, I64, Dims
from .filters import NO_FILTERS, Filters, ItemMetadata
from .index import ItemIndex
from .intent import cluster
from .records import RecommendedItem
from .transitions import Transitions

INTENT_QUERY_WEIGHT = 0.85  # an intent alone ranks just below the whole session's query
OVERFETCH = 2
MIN_INTENT_SHARE = 0.25
# A filtered request is searched only if one of this many items spread over the index passes
# its filters; else it is answered from trending items that pass them (reason "filtered").
FILTER_SAMPLE = 1000
FETCH_GROUP = 10  # a query searches as deep as its need rounded up to a multiple of this


def _fetch_depth(need: int) -> int:
    return -(-need // FETCH_GROUP) * FETCH_GROUP


# With transitions, a query fetches at least this many candidates for them to re-score: as deep
# as a default list leaving out the item in hand searches anyway (docs/operating.md).
RESCORE_POOL = _fetch_depth(QueryDefaults().k + 1)


@dataclass(slots=True)
class PastIntent:
    vector: F32
    weight: float
    members: tuple[str, ...]


@dataclass(slots=True)
class Request:
    """clicks: (item_id, event type) in time order; bought: never recommended back; current:
    the item in hand (the latest event's), left out with `params.exclude_current`."""

    clicks: list[tuple[str, str]]
    bought: frozenset[str] = frozenset()
    past: list[PastIntent] = field(default_factory=list)
    params: QueryDefaults = field(default_factory=QueryDefaults)
    filters: Filters = NO_FILTERS
    current: str | None = None


@dataclass(slots=True)
class IntentOut:
    id: int
    members: list[str]
    weight: float
    vector: F32
    past: bool = False


@dataclass(slots=True)
class Result:
    items: list[RecommendedItem]
    intents: list[IntentOut]
    unknown: int
    narrow: bool = False  # the filters matched too few items to search for (FILTER_SAMPLE)


@dataclass(slots=True)
class _Query:
    request: int
    vector: F32
    weight: float
    intent: int


@dataclass(slots=True)
class Plan:
    """The queries of a batch of requests: `matrix` stacks them for one search (None: none)."""

    requests: list[Request]
    queries: list[_Query]
    per_request: list[tuple[list[IntentOut], int]]
    matrix: F32 | None
    k_search: int
    fetch: I64  # how deep each query searches: its request's `_fetch`, rounded up
    narrow: set[int] = field(default_factory=set)  # requests whose filters pass too few items


def _unit(vector: F32) -> F32 | None:
    norm = float(np.sqrt(vector.dot(vector)))  # np.linalg.norm's result, without its overhead
    return (vector / norm).astype(np.float32) if norm > 1e-9 else None


# Each query-time parameter's type (an override, or a query string's text, must be one).
PARAMETER_KINDS: dict[str, type] = {
    name: type(getattr(QueryDefaults(), name)) for name in QueryDefaults.__slots__
}


def params_from(
    defaults: QueryDefaults, overrides: dict[str, Any] | None, limits: Limits | None = None
) -> QueryDefaults:
    """Apply an event's `params` to the defaults; unknown, malformed or out-of-range values
    (beyond `limits` too) raise ValueError naming the parameter."""
    if not overrides:
        return defaults
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if not hasattr(defaults, key):
            raise ValueError(f"params: unknown parameter {str(key)[:40]!r}")
        kind = PARAMETER_KINDS[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, int | float):
            raise ValueError(f"params: {key} is {str(value)[:40]!r}, expected {kind.__name__}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"params: {key} is {value!r}, expected int")
        values[key] = kind(value)
    out = QueryDefaults(**{**{f: getattr(defaults, f) for f in defaults.__slots__}, **values})
    problem = query_problem(out, limits or Limits())
    if problem:
        raise ValueError(f"params: {problem}")
    return out


# The weights a request may set, each from 0 to MAX_WEIGHT: they scale scores of at most 1, and
# a huge one would only push the sums toward overflow.
WEIGHTS = (
    "past_weight",
    "name_weight",
    "category_weight",
    "brand_weight",
    "price_weight",
    "transition_weight",
    "return_weight",
)
MAX_WEIGHT = 100.0


def query_problem(q: QueryDefaults, limits: Limits) -> str | None:
    """What is wrong with query parameters (None: nothing), in words naming the parameter."""
    for name in WEIGHTS:
        value = getattr(q, name)
        if not (math.isfinite(value) and 0 <= value <= MAX_WEIGHT):
            return f"{name} is {value!r}, expected a number from 0 to {MAX_WEIGHT:g}"
    if not math.isfinite(q.diversity) or q.diversity < 0:
        return f"diversity is {q.diversity!r}, expected a number from 0 to 1"
    if not 1 <= q.k <= limits.max_k:
        return f"k is {q.k}, expected 1 to {limits.max_k}"
    if not 0 <= q.diversity <= 1:
        return f"diversity is {q.diversity}, expected 0 to 1"
    if not 1 <= q.max_intents <= limits.max_intents:
        return f"max_intents is {q.max_intents}, expected 1 to {limits.max_intents}"
    return None


class Recommender:
    """Ranks items for sessions over an `ItemIndex` (approximate or exact)."""

    def __init__(
        self,
        index: ItemIndex,
        dims: Dims,
        position_weights: F32,
        weights: EventWeights,
        metadata: ItemMetadata | None = None,
        transitions: Transitions | None = None,
    ):
        self.index = index
        self.metadata = metadata or ItemMetadata()  # what filters read
        self.transitions = transitions  # re-scores the retrieved candidates (None: no)
        # Its return shares by distance, as Python floats: read for each click of a batch.
        self._returns: list[float] = [] if transitions is None else transitions.returns.tolist()
        self.dims = dims
        self.position_weights = position_weights
        self.weights = weights
        self.max_len = len(position_weights)
        # Weights as Python floats: no numpy scalar per click.
        self._by_distance = [float(x) for x in position_weights]
        self._by_kind: dict[str, float] = {}

    def session_items(self, clicks: list[tuple[str, str]]) -> tuple[list[str], I64, F32, int]:
        """Distinct known items of the last `max_len` clicks, their index labels and summed
        weights, and the number of unknown clicks."""
        acc: dict[str, float] = {}
        labels: dict[str, int] = {}
        unknown = 0
        known, deleted, by_kind = self.index.labels, self.index.deleted, self._by_kind
        recent = clicks[-self.max_len :]
        for by_distance, (item_id, kind) in zip(self._by_distance, reversed(recent), strict=False):
            label = known.get(item_id)
            if label is None or label in deleted:
                unknown += 1
                continue
            w = by_kind.get(kind)
            if w is None:
                w = by_kind[kind] = self.weights.of(kind)
            acc[item_id] = acc.get(item_id, 0.0) + w * by_distance
            labels[item_id] = label
        return (
            list(acc),
            np.fromiter(labels.values(), np.int64, len(labels)),
            np.fromiter(acc.values(), np.float32, len(acc)),
            unknown,
        )

    def _queries(self, r: int, req: Request) -> tuple[list[_Query], list[IntentOut], int]:
        ids, labels, w, unknown = self.session_items(req.clicks)
        queries: list[_Query] = []
        intents: list[IntentOut] = []
        if ids:
            vectors = self.index.vectors[labels]
            session = _unit(w @ vectors)
            if session is not None:
                queries.append(_Query(r, session, 1.0, -2))
            clusters = cluster(vectors, w, req.params.max_intents)
            total = sum(c.weight for c in clusters) or 1.0
            for i, c in enumerate(clusters):
                intents.append(
                    IntentOut(i, [ids[m] for m in c.members], c.weight / total, c.vector)
                )
            if len(clusters) > 1:  # a stray click is no intent worth its own query
                queries.extend(
                    _Query(r, c.vector, INTENT_QUERY_WEIGHT, i)
                    for i, c in enumerate(clusters)
                    if c.weight / total >= MIN_INTENT_SHARE
                )
            if len(clusters) > 2:
                for a, b in combinations(range(len(clusters)), 2):
                    pair = _unit(
                        clusters[a].vector * clusters[a].weight
                        + clusters[b].vector * clusters[b].weight
                    )
                    if pair is not None:
                        queries.append(_Query(r, pair, INTENT_QUERY_WEIGHT, a))
        for p in req.past:
            i = len(intents)
            intents.append(
                IntentOut(
                    i, list(p.members), p.weight * req.params.past_weight, p.vector, past=True
                )
            )
            vector = _unit(p.vector)
            if req.params.past_weight > 0 and vector is not None:
                queries.append(_Query(r, vector, req.params.past_weight, i))
        return queries, intents, unknown

    def _space_weighted(self, vector: F32, params: QueryDefaults) -> F32:
        w = (params.name_weight, params.category_weight, params.brand_weight, params.price_weight)
        if w == (1.0, 1.0, 1.0, 1.0):
            return vector
        out = vector.copy()
        for weight, part in zip(w, self.dims.slices().values(), strict=True):
            out[part] *= weight
        return out

    def recommend(self, requests: list[Request]) -> list[Result]:
        """Answer many requests with one batched index search."""
        plan = self.plan(requests)
        return self.finish(plan, *self.search(plan))

    def plan(self, requests: list[Request], max_fetch: int | None = None) -> Plan:
        """Every request's queries, stacked for one index search; a query fetches what its
        request needs rounded up to a multiple of FETCH_GROUP, and at most `max_fetch` items
        (None: no cap)."""
        all_queries: list[_Query] = []
        per_request: list[tuple[list[IntentOut], int]] = []
        narrow = set()
        for r, req in enumerate(requests):
            queries, intents, unknown = self._queries(r, req)
            if queries and req.filters.narrows() and not self._any_pass(req.filters):
                narrow.add(r)  # not searched: a filtered search would walk the whole graph
                queries = []
            all_queries.extend(queries)
            per_request.append((intents, unknown))
        fetch = [_fetch_depth(self._fetch(req)) for req in requests]
        if max_fetch is not None:
            fetch = [min(f, max_fetch) for f in fetch]
        k_search = max(fetch, default=0)
        matrix = None
        if all_queries and k_search:
            matrix = np.stack(
                [self._space_weighted(q.vector, requests[q.request].params) for q in all_queries]
            ).astype(np.float32)
        per_query = np.fromiter((fetch[q.request] for q in all_queries), np.int64, len(all_queries))
        return Plan(requests, all_queries, per_request, matrix, k_search, per_query, narrow)

    def _any_pass(self, filters: Filters) -> bool:
        """Whether any of FILTER_SAMPLE labels spread evenly over the index passes `filters`.
        None passing means that under one item in FILTER_SAMPLE does: hnswlib's filtered
        search then visits most of the graph, calling the filter for each item, to find a few
        (tens of milliseconds on a large catalog)."""
        n = len(self.index.ids)
        passes = self._passes(filters)
        step = max(1, n // FILTER_SAMPLE)
        return any(passes(label) for label in range(0, n, step))

    def search(self, plan: Plan) -> tuple[I64, F32]:
        """The plan's index search: numpy and hnswlib only, so it may run in another thread
        (hnswlib releases the GIL) while nothing changes the index.

        Queries are searched in groups of equal depth: the search beam grows with k, so one
        request that must skip many bought items does not make every query of its batch search
        that deep, and a query finds the same items whatever else its batch holds. Rows
        shorter than `k_search` are padded with label -1."""
        if plan.matrix is None:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)
        narrowed = [r for r, req in enumerate(plan.requests) if req.filters.narrows()]
        if not narrowed and plan.fetch.min() == plan.fetch.max():
            return self.index.search(plan.matrix, plan.k_search)
        labels = np.full((len(plan.fetch), plan.k_search), -1, np.int64)
        scores = np.zeros((len(plan.fetch), plan.k_search), np.float32)
        request = np.fromiter((q.request for q in plan.queries), np.int64, len(plan.queries))
        plain = ~np.isin(request, narrowed)
        for depth in np.unique(plan.fetch[plain]):
            rows = np.flatnonzero(plain & (plan.fetch == depth))
            found, score = self.index.search(plan.matrix[rows], int(depth))
            labels[rows, : found.shape[1]] = found
            scores[rows, : found.shape[1]] = score
        for r in narrowed:  # searched among the items that pass the request's filters only
            rows = np.flatnonzero(request == r)
            if len(rows):
                passes = self._passes(plan.requests[r].filters)
                found, score = self.index.search(
                    plan.matrix[rows], int(plan.fetch[rows[0]]), passes
                )
                labels[rows, : found.shape[1]] = found
                scores[rows, : found.shape[1]] = score
        return labels, scores

    def _passes(self, filters: Filters) -> Callable[[int], bool]:
        metadata = self.metadata

        def passes(label: int) -> bool:
            return filters.passes(label, metadata)

        return passes

    def finish(self, plan: Plan, labels: I64, scores: F32) -> list[Result]:
        """Merge each request's search results into its ranked, explained answer."""
        merged = self._merge(plan, labels, scores)
        results = [
            self._finish(req, *ranked, intents, unknown)
            for req, ranked, (intents, unknown) in zip(
                plan.requests, merged, plan.per_request, strict=True
            )
        ]
        for r in plan.narrow:
            results[r].narrow = True
        return results

    def _merge(self, plan: Plan, labels: I64, scores: F32) -> list[tuple[Any, Any, I64, I64]]:
        """Per request, its candidates best first: (weighted scores, the same rounded to 5
        places as answers show them, labels, intents).

        A candidate found by several of a request's queries keeps its best weighted score and
        that query's intent (the earliest query's, among equal scores), plus what it gains
        from transitions (`_transition_bonus`); candidates rank by that score, then by label
        and intent, both descending. The whole batch is merged with a few sorts instead of a
        loop over every found item."""
        n_requests = len(plan.requests)
        empty = np.zeros(0, np.int64)
        if labels.size == 0:
            return [(np.zeros(0), np.zeros(0), empty, empty)] * n_requests
        k = labels.shape[1]
        request = np.repeat(np.fromiter((q.request for q in plan.queries), np.int64), k)
        weight = np.fromiter((q.weight for q in plan.queries), np.float64)
        intent = np.repeat(np.fromiter((q.intent for q in plan.queries), np.int64), k)
        score = (scores.astype(np.float64) * weight[:, None]).ravel()
        label = labels.ravel()
        order = np.arange(len(label))  # query order, then rank within the query
        found = label >= 0
        request, intent, label, order = request[found], intent[found], label[found], order[found]
        score = score[found]
        # Best score of each (request, label), the earliest query among equal ones; then each
        # request's best first.
        by_label = np.lexsort((order, -score, label, request))
        first = np.ones(len(by_label), dtype=bool)
        first[1:] = (request[by_label][1:] != request[by_label][:-1]) | (
            label[by_label][1:] != label[by_label][:-1]
        )
        best = by_label[first]
        request, intent, score, label = request[best], intent[best], score[best], label[best]
        if self.transitions is not None:  # re-scored by what followed the latest click
            score = score + self._transition_bonus(plan, request, label)
            score = score + self._return_bonus(plan, request, label)
        ranked = np.lexsort((-intent, -label, -score, request))
        request, intent, score, label = (
            request[ranked],
            intent[ranked],
            score[ranked],
            label[ranked],
        )
        # Rounded as one array: Python's round(x, 5) makes a decimal conversion per value.
        shown = np.round(score, 5)
        bounds = np.searchsorted(request, np.arange(n_requests + 1)).tolist()
        return [(score[a:b], shown[a:b], label[a:b], intent[a:b]) for a, b in pairwise(bounds)]

    def _fetch(self, req: Request) -> int:
        excluded = len(req.bought) + len(req.filters.exclude)
        if req.current is not None and req.params.exclude_current:
            excluded += 1
        if req.params.exclude_seen:
            excluded += len(req.clicks)
        need = req.params.k * (OVERFETCH if req.params.diversity > 0 else 1) + excluded
        if self.transitions is not None and (
            req.params.transition_weight > 0 or req.params.return_weight > 0
        ):
            return max(need, RESCORE_POOL)
        return need

    def _finish(
        self,
        req: Request,
        scores: Any,
        shown: Any,
        labels: I64,
        intents_of: I64,
        intents: list[IntentOut],
        unknown: int,
    ) -> Result:
        """The request's answer from its merged candidates, best first."""
        excluded = req.bought | req.filters.exclude
        if req.current is not None and req.params.exclude_current:
            excluded = excluded | {req.current}
        if req.params.exclude_seen:
            excluded = excluded | {item for item, _ in req.clicks}
        known = self.index.labels
        dropped = {known[item] for item in excluded if item in known}
        if dropped:  # a set lookup per candidate: cheaper than np.isin at these sizes
            keep = np.fromiter(
                (label not in dropped for label in labels.tolist()), bool, len(labels)
            )
            scores, shown, labels = scores[keep], shown[keep], labels[keep]
            intents_of = intents_of[keep]
        k = req.params.k
        if req.params.diversity > 0 and len(labels) > k:
            chosen = self._mmr(
                list(zip(scores.tolist(), labels.tolist(), intents_of.tolist(), strict=True)),
                k,
                req.params.diversity,
            )
            scores = np.array([s for s, _, _ in chosen], dtype=np.float64)
            labels = np.array([label for _, label, _ in chosen], dtype=np.int64)
            intents_of = np.array([i for _, _, i in chosen], dtype=np.int64)
            shown = np.round(scores, 5)
        top = labels[:k].tolist()
        closest = self._closest(top, [it for it in intents if not it.past])
        ids = self.index.ids
        out: list[RecommendedItem] = [
            # Found by the whole-session query: explain it by the closest intent.
            {"item_id": ids[label], "score": score, "intent": near if intent == -2 else intent}
            for label, score, intent, near in zip(
                top, shown[:k].tolist(), intents_of[:k].tolist(), closest, strict=True
            )
        ]
        return Result(out, intents, unknown)

    def _transition_bonus(self, plan: Plan, request: I64, label: I64) -> Any:
        """What each (request, candidate) gains from transitions: `transition_weight` times
        the candidate's share of the successors of the request's latest click
        (`Transitions.shares`), for the whole batch at once."""
        assert self.transitions is not None
        known = self.index.labels
        latest = np.fromiter(
            (known.get(r.clicks[-1][0], -1) if r.clicks else -1 for r in plan.requests),
            np.int64,
            len(plan.requests),
        )
        weight = np.fromiter(
            (r.params.transition_weight for r in plan.requests), np.float64, len(plan.requests)
        )
        return weight[request] * self.transitions.shares(latest[request], label)

    def _return_bonus(self, plan: Plan, request: I64, label: I64) -> Any:
        """What each (request, candidate) gains for being in the session already:
        `return_weight` times the share of sessions that went back to an item clicked that many
        steps before the latest (`Transitions.returns`), summed over the distances the
        candidate was clicked at within the last `max_len` clicks; the item in hand (distance
        0) gains nothing."""
        known, n, returns = self.index.labels, len(self.index.ids), self._returns
        keys: list[int] = []  # request * n + label of each earlier click
        bonus: list[float] = []
        for r, req in enumerate(plan.requests):
            weight = req.params.return_weight
            if weight <= 0 or not returns:
                continue
            earlier = req.clicks[-self.max_len : -1]
            for share, (item_id, _) in zip(returns, reversed(earlier), strict=False):
                clicked = known.get(item_id)
                if clicked is not None and share > 0:
                    keys.append(r * n + clicked)
                    bonus.append(weight * share)
        out = np.zeros(len(label), np.float64)
        if not keys:
            return out
        order = np.argsort(keys, kind="stable")
        sorted_keys = np.asarray(keys, np.int64)[order]
        first = np.searchsorted(sorted_keys, sorted_keys)  # the same item clicked twice: summed
        summed = np.zeros(len(sorted_keys), np.float64)
        np.add.at(summed, first, np.asarray(bonus, np.float64)[order])
        wanted = request * n + label
        at = np.searchsorted(sorted_keys, wanted).clip(max=len(sorted_keys) - 1)
        return np.where(sorted_keys[at] == wanted, summed[at], 0.0)

    def _closest(self, labels: list[int], intents: list[IntentOut]) -> list[int]:
        """For each item, the id of the intent whose centroid is most similar to it."""
        if len(intents) < 2 or not labels:
            return [intents[0].id if intents else 0] * len(labels)
        sims = self.index.vectors[labels] @ np.stack([it.vector for it in intents]).T
        ids = [it.id for it in intents]
        return [ids[j] for j in sims.argmax(axis=1).tolist()]

    def _mmr(
        self, ranked: list[tuple[float, int, int]], k: int, diversity: float
    ) -> list[tuple[float, int, int]]:
        """Maximal marginal relevance: trade relevance for distance to what is already chosen."""
        vectors = self.index.vectors[[label for _, label, _ in ranked]]
        relevance = np.array([s for s, _, _ in ranked], dtype=np.float32)
        chosen: list[int] = []
        max_sim = np.full(len(ranked), -1.0, dtype=np.float32)
        available = np.ones(len(ranked), dtype=bool)
        for _ in range(min(k, len(ranked))):
            penalty = np.where(max_sim < -0.5, 0.0, max_sim)
            mmr = (1 - diversity) * relevance - diversity * penalty
            mmr[~available] = -np.inf
            pick = int(mmr.argmax())
            chosen.append(pick)
            available[pick] = False
            max_sim = np.maximum(max_sim, vectors @ vectors[pick])
        return [ranked[i] for i in chosen]
