"""Offline evaluation with the serving code: Recall@K and MRR@K over prefix -> next-item cases."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ..models.config import EventWeights, QueryDefaults
from ..models.features import F32, Dims
from ..models.index import ItemIndex
from ..models.ranking import Recommender, Request
from ..models.transitions import Transitions
from .data import Corpus, TrainSession

if TYPE_CHECKING:  # the trainer imports torch; evaluation does not need it
    from .trainer import TrainedModel

KS = (5, 10, 20)
# The scores `metrics_from_ranks` gives, in the order tables show them.
SCORES = tuple(f"{name}_at_{k}" for k in KS for name in ("recall", "mrr"))
VALIDATION = 0.1  # the share of training sessions, the last ones, a validation split holds out


@dataclass(frozen=True, slots=True)
class Case:
    prefix: list[tuple[str, str]]
    target: str


def cases_from_srgnn(lines: list[tuple[list[str], str]]) -> list[Case]:
    return [Case([(i, "view") for i in prefix], target) for prefix, target in lines]


def cases_from_sessions(sessions: Sequence[TrainSession]) -> list[Case]:
    """Every prefix -> next-item case of held-out sessions (removals are no targets)."""
    out: list[Case] = []
    for s in sessions:
        clicks = list(zip(s.items, s.types, strict=True))
        out.extend(
            Case(clicks[:t], clicks[t][0])
            for t in range(1, len(clicks))
            if clicks[t][1] != "remove_from_cart"
        )
    return out


def validation_split(corpus: Corpus, fraction: float) -> tuple[Corpus, list[Case]]:
    """The corpus less its last `fraction` of sessions (the latest, in file order), and every
    prefix -> next-item case of those held out."""
    cut = len(corpus.sessions) - max(1, round(len(corpus.sessions) * fraction))
    kept = dataclasses.replace(corpus, sessions=corpus.sessions[:cut])
    return kept, cases_from_sessions(corpus.sessions[cut:])


def evaluate(
    recommender: Recommender,
    cases: Sequence[Case],
    ks: Sequence[int] = KS,
    batch: int = 2000,
    progress: str | None = None,
) -> dict[str, float]:
    """Recall@K and MRR@K in percent over the cases whose target the model knows. With
    `progress`, a progress bar of that name counts the cases."""
    # Only the cases a model can list are ranked: the others would be searched for nothing.
    labels = recommender.index.labels
    known = [c for c in cases if c.target in labels]
    out = metrics_from_ranks(target_ranks(recommender, known, max(ks), batch, progress), ks)
    out["skipped_unknown_target"] = float(len(cases) - len(known))
    return out


def metrics_of(
    recommender: Recommender, cases: Sequence[Case], ranks: np.ndarray, ks: Sequence[int] = KS
) -> dict[str, float]:
    """`evaluate` from the ranks `target_ranks` gave for all the cases."""
    labels = recommender.index.labels
    known = np.fromiter((c.target in labels for c in cases), dtype=bool, count=len(cases))
    out = metrics_from_ranks(ranks[known], ks)
    out["skipped_unknown_target"] = float(len(cases) - int(known.sum()))
    return out


def target_ranks(
    recommender: Recommender,
    cases: Sequence[Case],
    k: int = 20,
    batch: int = 2000,
    progress: str | None = None,
) -> np.ndarray:
    """Each case's 0-based rank of its target in the model's top k, -1 where it is not listed
    (an unknown target never is)."""
    params = QueryDefaults(k=k)
    ranks = np.full(len(cases), -1, dtype=np.int64)
    bar = tqdm(total=len(cases), desc=progress, unit="case", disable=progress is None, leave=False)
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        results = recommender.recommend([Request(c.prefix, params=params) for c in chunk])
        for j, (case, result) in enumerate(zip(chunk, results, strict=True)):
            ids = [item["item_id"] for item in result.items]
            if case.target in ids:
                ranks[start + j] = ids.index(case.target)
        bar.update(len(chunk))
    bar.close()
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@K and MRR@K in percent from 0-based ranks of the targets (-1 = not listed)."""
    out: dict[str, float] = {"cases": float(len(ranks))}
    n = max(len(ranks), 1)
    for kk in ks:
        hit = (ranks >= 0) & (ranks < kk)
        out[f"recall_at_{kk}"] = round(100.0 * hit.sum() / n, 2)
        out[f"mrr_at_{kk}"] = round(100.0 * (1.0 / (ranks[hit] + 1)).sum() / n, 2)
    return out


def median_of_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs that differ only in their seed: the first run's fields, each
    Recall/MRR the median of the runs, the seeds, and the spread (lowest, highest) of
    Recall@20 and MRR@20."""
    scores = [k for k in runs[0] if k.startswith(("recall_at", "mrr_at"))]
    out = {**runs[0], **{k: round(float(median(r[k] for r in runs)), 2) for k in scores}}
    out["seeds"] = [r["seed"] for r in runs]
    for k in ("recall_at_20", "mrr_at_20"):
        out[f"{k}_spread"] = [float(min(r[k] for r in runs)), float(max(r[k] for r in runs))]
    return out


def recommender_for(
    item_ids: Sequence[str],
    vectors: F32,
    dims: Dims,
    position_weights: F32,
    weights: EventWeights,
    index: ItemIndex | None = None,
    exact: bool = False,
    transitions: Transitions | None = None,
) -> Recommender:
    if index is None:
        index = ItemIndex.build(list(item_ids), vectors, exact=exact)
    elif exact:
        index = index.exact_twin()
    return Recommender(index, dims, position_weights, weights, transitions=transitions)


def trained_recommender(
    trained: TrainedModel,
    weights: EventWeights,
    index: ItemIndex | None = None,
    exact: bool = False,
) -> Recommender:
    """The recommender a trained model serves (its transitions too), before it is saved."""
    return recommender_for(
        trained.item_ids,
        trained.vectors,
        trained.config.dims,
        trained.position_weights,
        weights,
        index=index,
        exact=exact,
        transitions=trained.transitions,
    )
