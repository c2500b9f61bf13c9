"""Intents: the session's items clustered by their vectors, weighted by event type.

A session often mixes several interests (a tent, then headphones). Each intent is a weighted
centroid of its members; remove_from_cart carries a negative weight and pushes the centroid away
from the removed item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.features import F32


@dataclass(frozen=True, slots=True)
class IntentCluster:
    """members: indices into the item list given to `cluster`; vector: (dim,) float32, unit
    length (or zero); weight: the positive interest behind it."""

    members: tuple[int, ...]
    vector: F32
    weight: float


def cluster(
    vectors: F32, weights: F32, max_intents: int, threshold: float = 0.35
) -> list[IntentCluster]:
    """Greedy clustering, strongest items first: an item joins the intent whose seed (its
    strongest member) is most similar if cosine >= threshold, else opens a new intent (up to
    `max_intents`; after that it joins the most similar one anyway). Removals (negative
    weights) never open an intent; they join the closest one and push its centroid away.

    vectors: (n, dim) float32 unit rows; weights: (n,) float32. One (n, n) product, then a
    loop over integers: cheap enough to run per event.
    """
    n = len(weights)
    if n == 0:
        return []
    w = weights.tolist()
    if n == 1:  # most sessions in a stream are one click old: no similarities to compute
        return [] if w[0] < 0 else [_intent(vectors, weights, np.zeros(1, np.int64))]
    sims = (vectors @ vectors.T).tolist()
    order = np.argsort(-np.abs(weights), kind="stable").tolist()
    seeds: list[int] = []
    assign = np.full(n, -1, dtype=np.int64)
    for i in order:
        if seeds:
            row = [sims[i][s] for s in seeds]
            best = max(range(len(row)), key=row.__getitem__)  # the first best, as argmax
            if row[best] >= threshold or len(seeds) >= max_intents or w[i] < 0:
                assign[i] = best
                continue
        if w[i] < 0:
            continue  # a removal with nothing to push away from
        assign[i] = len(seeds)
        seeds.append(i)
    out = [_intent(vectors, weights, np.flatnonzero(assign == c)) for c in range(len(seeds))]
    return sorted(out, key=lambda c: -c.weight)


def _intent(vectors: F32, weights: F32, members: npt.NDArray[np.int64]) -> IntentCluster:
    w = weights[members]
    centroid = (w[:, None] * vectors[members]).sum(axis=0)
    norm = float(np.sqrt(centroid.dot(centroid)))  # np.linalg.norm's sum, without its checks
    unit = (centroid / norm).astype(np.float32) if norm > 1e-9 else np.zeros_like(centroid)
    positive = float(np.maximum(w, 0.0).sum())
    return IntentCluster(tuple(members.tolist()), unit, positive)
