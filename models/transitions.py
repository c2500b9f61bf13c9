"""Transitions: which items followed which in the training sessions, to re-score candidates.

The embedding search finds items like the session; it cannot tell which of them usually comes
*next*. For each item, the training job counts the items that came right after it in a
session and keeps each one's share of that item's successors (the most frequent
`MAX_SUCCESSORS`). At serving, a candidate the index retrieved gains `transition_weight` times
its share after the session's latest item, plus half that after the item before, and a
quarter after the one before that. Nothing else changes: the candidates are the ones the
index found, so a transition never brings in an item the search did not.

Stored as a sparse matrix in CSR arrays over the model's item rows: `indptr` (n + 1,),
`successors` (nnz,) sorted within each row, `share` (nnz,) float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sessionrec.models.features import F32, I64

I32 = npt.NDArray[np.int32]
MAX_SUCCESSORS = 100  # kept per item, the most frequent
RECENT = (1.0, 0.5, 0.25)  # the weights of the latest clicked items' successors


@dataclass(frozen=True, slots=True)
class Transitions:
    indptr: I64
    successors: I32
    share: F32

    @property
    def items(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def count(cls, first: I64, then: I64, n_items: int) -> Transitions:
        """From the item rows of every (click, the click right after it) pair of the training
        sessions; an item clicked twice in a row follows itself."""
        if not len(first):
            return cls.empty(n_items)
        pairs, counts = np.unique(first * n_items + then, return_counts=True)
        rows, cols = pairs // n_items, pairs % n_items
        totals = np.bincount(rows, weights=counts, minlength=n_items)  # successors of each row
        # The most frequent successors of each row, then each row's columns in order.
        order = np.lexsort((-counts, rows))
        rows, cols, counts = rows[order], cols[order], counts[order]
        starts = np.searchsorted(rows, rows, side="left")
        keep = np.arange(len(rows)) - starts < MAX_SUCCESSORS
        rows, cols, counts = rows[keep], cols[keep], counts[keep]
        order = np.lexsort((cols, rows))
        rows, cols, counts = rows[order], cols[order], counts[order]
        indptr = np.zeros(n_items + 1, np.int64)
        indptr[1:] = np.cumsum(np.bincount(rows, minlength=n_items))
        share = (counts / totals[rows]).astype(np.float32)
        return cls(indptr, cols.astype(np.int32), share)

    @classmethod
    def empty(cls, n_items: int) -> Transitions:
        return cls(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))

    def problem(self) -> str | None:
        """What is inconsistent in the arrays (None: nothing), for a loaded artifact."""
        n, nnz = self.items, len(self.successors)
        if self.indptr.ndim != 1 or n < 0 or len(self.share) != nnz:
            return "transition arrays of mismatched lengths"
        if self.indptr[0] != 0 or self.indptr[-1] != nnz or (np.diff(self.indptr) < 0).any():
            return "transition row offsets that do not rise from 0 to the number of entries"
        if nnz and not (int(self.successors.min()) >= 0 and int(self.successors.max()) < n):
            return "transitions to items outside the model"
        if not np.isfinite(self.share).all() or (self.share < 0).any():
            return "transition shares that are not finite and >= 0"
        return None

    def scores(self, recent: Sequence[int], candidates: I64) -> F32:
        """Each candidate's weighted share after the `recent` item rows (latest first; rows
        the model does not have, as catalog items added since, count nothing)."""
        out = np.zeros(len(candidates), np.float32)
        for weight, row in zip(RECENT, recent, strict=False):
            if not 0 <= row < self.items:
                continue
            start, end = int(self.indptr[row]), int(self.indptr[row + 1])
            if start == end:
                continue
            successors = self.successors[start:end]
            at = np.searchsorted(successors, candidates).clip(max=end - start - 1)
            found = successors[at] == candidates
            out += weight * np.where(found, self.share[start:end][at], np.float32(0.0))
        return out
