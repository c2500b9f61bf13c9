"""Trending items from the stream itself: exponentially time-decayed, event-weighted counts."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from itertools import islice


class Trending:
    """score(item) = sum of weight * 2^(-(now - ts) / half_life) over its events (event time).

    Only what the caller adds is counted: the worker adds live catalog items only, so ids
    from events cannot grow it beyond the catalog (and `capacity` bounds it anyway)."""

    def __init__(self, half_life_ms: float = 3_600_000.0, capacity: int = 50_000):
        self.half_life_ms = half_life_ms
        self.capacity = capacity
        self._scores: dict[str, tuple[float, int]] = {}
        self._now = 0
        self._cache: list[tuple[str, float]] = []
        self._adds_since_cache = 0

    def _decayed(self, score: float, ts: int, now: int) -> float:
        return score * math.pow(2.0, -(now - ts) / self.half_life_ms) if now > ts else score

    def add(self, item_id: str, weight: float, ts: int) -> None:
        if weight <= 0:
            return
        self._now = max(self._now, ts)
        score, last = self._scores.get(item_id, (0.0, ts))
        self._scores[item_id] = (self._decayed(score, last, ts) + weight, max(ts, last))
        self._adds_since_cache += 1
        if len(self._scores) > self.capacity:
            self._evict()

    def _evict(self) -> None:
        keep = heapq.nlargest(
            self.capacity // 2,
            self._scores.items(),
            key=lambda kv: self._decayed(kv[1][0], kv[1][1], self._now),
        )
        self._scores = dict(keep)

    def top(
        self,
        k: int,
        exclude: set[str] | frozenset[str] = frozenset(),
        live: Callable[[str], bool] = lambda _item: True,
    ) -> list[tuple[str, float]]:
        """The k best items not in `exclude` and `live` (e.g. still in the catalog); the
        ranking is cached and refreshed after 500 new events, so asking per event stays
        cheap."""
        if not self._cache or self._adds_since_cache > 500 or len(self._cache) < k + len(exclude):
            self._rank(max(200, k + len(exclude)))
        found = self._first(k, exclude, live)
        if len(found) < k and len(self._cache) < len(self._scores):  # many left the catalog
            self._rank(len(self._scores))
            found = self._first(k, exclude, live)
        return found

    def _first(
        self, k: int, exclude: set[str] | frozenset[str], live: Callable[[str], bool]
    ) -> list[tuple[str, float]]:
        """The first k cached items not excluded and live (looking no further)."""
        wanted = ((i, s) for i, s in self._cache if i not in exclude and live(i))
        return list(islice(wanted, k))

    def _rank(self, n: int) -> None:
        now = self._now
        best = heapq.nlargest(
            n, self._scores.items(), key=lambda kv: self._decayed(kv[1][0], kv[1][1], now)
        )
        self._cache = [(item, self._decayed(s, t, now)) for item, (s, t) in best]
        self._adds_since_cache = 0

    def forget(self, item_id: str) -> None:
        """Drop an item (deleted from the catalog)."""
        if self._scores.pop(item_id, None) is not None:
            self._cache = [(i, s) for i, s in self._cache if i != item_id]

    def seed(self, items: list[str], scores: list[float], ts: int) -> None:
        """Start from the model's popularity until the stream has spoken."""
        for item, score in zip(items, scores, strict=True):
            if score > 0:
                self._scores.setdefault(item, (float(score), ts))
        self._now = max(self._now, ts)
