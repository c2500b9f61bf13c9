"""Peers for the quality benchmark: popularity, V-SkNN, and gensim skip-gram item2vec.

V-SkNN follows Ludewig & Jannach (2018): candidate neighbours are the most recent sessions
sharing an item with the current one, similarity sums linearly position-decayed weights of the
current session's items that the neighbour contains, and an item scores the summed similarity
of the k nearest neighbours that contain it.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from sessionrec.training.data import TrainSession
from sessionrec.training.evaluate import Case, metrics_from_ranks


class Popularity:
    def __init__(self, sessions: Sequence[TrainSession]):
        counts = Counter(i for s in sessions for i in s.items)
        self.top = [i for i, _ in counts.most_common(100)]

    def rank(self, case: Case, k: int) -> list[str]:
        return self.top[:k]


class VSkNN:
    def __init__(self, sessions: Sequence[TrainSession], k: int = 100, sample: int = 500):
        self.k, self.sample = k, sample
        self.sessions = [tuple(dict.fromkeys(s.items)) for s in sessions]  # distinct, in order
        self.by_item: dict[str, list[int]] = defaultdict(list)
        for sid, items in enumerate(self.sessions):
            for item in items:
                self.by_item[item].append(sid)  # ascending sid = file order = recency

    def rank(self, case: Case, k: int) -> list[str]:
        items = [i for i, _ in case.prefix]
        n = len(items)
        weight = {item: (pos + 1) / n for pos, item in enumerate(items)}  # linear decay
        candidates: set[int] = set()
        for item in set(items):
            candidates.update(self.by_item.get(item, ())[-self.sample :])
        recent = heapq.nlargest(self.sample, candidates)
        sims = []
        for sid in recent:
            neigh = self.sessions[sid]
            sim = sum(weight.get(i, 0.0) for i in neigh)
            if sim > 0:
                sims.append((sim, sid))
        scores: dict[str, float] = defaultdict(float)
        for sim, sid in heapq.nlargest(self.k, sims):
            for item in self.sessions[sid]:
                scores[item] += sim
        return [i for i, _ in heapq.nlargest(k, scores.items(), key=lambda kv: kv[1])]


def gensim_item2vec(
    sessions: Sequence[TrainSession], epochs: int, tuned: bool = True, seed: int = 1
) -> tuple[list[str], np.ndarray, float]:
    """gensim skip-gram, 100-d, 2 workers. Returns item ids, vectors and training seconds."""
    from gensim.models import Word2Vec

    sentences = [list(s.items) for s in sessions]
    extra = {"window": 3, "negative": 10, "ns_exponent": -0.5, "sample": 1e-5} if tuned else {}
    started = time.perf_counter()
    model = Word2Vec(
        sentences, vector_size=100, sg=1, workers=2, epochs=epochs, min_count=1, seed=seed, **extra
    )
    seconds = time.perf_counter() - started
    ids = list(model.wv.index_to_key)
    return ids, np.asarray(model.wv.vectors, dtype=np.float32), seconds


def score_ranker(
    rank: object, cases: Sequence[Case], ks: Sequence[int] = (5, 10, 20)
) -> tuple[dict[str, float], list[list[str]]]:
    """Recall/MRR@K for any object with rank(case, k) -> item ids; also returns the lists."""
    k = max(ks)
    lists = [rank.rank(c, k) for c in cases]  # type: ignore[attr-defined]
    return metrics_from_lists(lists, cases, ks), lists


def metrics_from_lists(
    lists: Sequence[Sequence[str]], cases: Sequence[Case], ks: Sequence[int] = (5, 10, 20)
) -> dict[str, float]:
    ranks = np.array(
        [
            lst.index(c.target) if c.target in lst else -1
            for lst, c in zip(lists, cases, strict=True)
        ]
    )
    return metrics_from_ranks(ranks, ks)


def coverage_and_popularity(
    lists: Sequence[Sequence[str]], sessions: Sequence[TrainSession], n_items: int, k: int = 20
) -> dict[str, float]:
    """Catalog coverage of the top-k lists (% of items ever recommended) and popularity bias
    (mean training frequency of recommended items over the catalog's mean frequency)."""
    counts = Counter(i for s in sessions for i in s.items)
    mean_pop = sum(counts.values()) / max(len(counts), 1)
    shown = [i for lst in lists for i in lst[:k]]
    arp = sum(counts.get(i, 0) for i in shown) / max(len(shown), 1)
    return {
        "coverage_at_20": round(100.0 * len(set(shown)) / max(n_items, 1), 2),
        "popularity_bias_at_20": round(arp / max(mean_pop, 1e-9), 2),
    }
