"""Intents: the session's items clustered by their vectors, weighted by event type.

A session often mixes several interests (a tent, then headphones). Each intent is a weighted
centroid of its members; remove_from_cart carries a negative weight and pushes the centroid away
from the removed item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    """Greedy clustering, strongest items first: join the closest intent if cosine >= threshold,
    else open a new intent (up to `max_intents`, then join the closest anyway).

    vectors: (n, dim) float32 unit rows; weights: (n,) float32 (negative = pushed away).
    """
    order = np.argsort(-np.abs(weights), kind="stable")
    centroids: list[F32] = []
    members: list[list[int]] = []
    for i in order:
        v = vectors[i]
        if centroids:
            sims = np.array(
                [float(c @ v) / max(float(np.linalg.norm(c)), 1e-12) for c in centroids]
            )
            best = int(sims.argmax())
            if sims[best] >= threshold or len(centroids) >= max_intents or weights[i] < 0:
                centroids[best] = centroids[best] + weights[i] * v
                members[best].append(int(i))
                continue
        if weights[i] < 0:
            continue  # a removal with nothing to push away from
        centroids.append((weights[i] * v).astype(np.float32))
        members.append([int(i)])
    out: list[IntentCluster] = []
    for c, m in zip(centroids, members, strict=True):
        norm = float(np.linalg.norm(c))
        positive = float(sum(max(float(weights[j]), 0.0) for j in m))
        unit = (c / norm).astype(np.float32) if norm > 1e-9 else np.zeros_like(c)
        out.append(IntentCluster(tuple(m), unit, positive))
    return sorted(out, key=lambda c: -c.weight)
