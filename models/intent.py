"""Intents: the session's items clustered by their vectors, weighted by event type.

A session often mixes several interests (a tent, then headphones). Each intent is a weighted
centroid of its members; remove_from_cart carries a negative weight and pushes the centroid away
from the removed item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import F32


@dataclass(slots=True)
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

    vectors: (n, dim) float32 unit rows; weights: (n,) float32. One product per seed (at most
    `max_intents`), a loop over integers, then one product for all centroids: cheap enough to
    run per event.
    """
    n = len(weights)
    if n == 0:
        return []
    w = weights.tolist()
    if n == 1:  # most sessions in a stream are one click old: its item is its intent
        return [] if w[0] < 0 else [IntentCluster((0,), vectors[0], w[0])]
    order = sorted(range(n), key=lambda i: -abs(w[i]))  # stable: ties keep click order
    seeds: list[int] = []
    to_seed: list[list[float]] = []  # each seed's similarity to every item
    members: list[list[int]] = []
    for i in order:
        if seeds:
            row = [sims[i] for sims in to_seed]
            best = max(range(len(row)), key=row.__getitem__)  # the first best, as argmax
            if row[best] >= threshold or len(seeds) >= max_intents or w[i] < 0:
                members[best].append(i)
                continue
        if w[i] < 0:
            continue  # a removal with nothing to push away from
        seeds.append(i)
        to_seed.append((vectors @ vectors[i]).tolist())
        members.append([i])
    # Each intent's weighted centroid, all in one product: a (intents, n) weight matrix.
    share = np.zeros((len(seeds), n), dtype=np.float32)
    for c, m in enumerate(members):
        m.sort()
        share[c, m] = weights[m]
    centroids = share @ vectors
    norms = np.sqrt(np.einsum("ij,ij->i", centroids, centroids))
    units = np.divide(
        centroids, norms[:, None], out=np.zeros_like(centroids), where=norms[:, None] > 1e-9
    )
    positive = np.maximum(share, 0.0).sum(axis=1).tolist()
    out = [IntentCluster(tuple(m), units[c], positive[c]) for c, m in enumerate(members)]
    return sorted(out, key=lambda c: -c.weight)
