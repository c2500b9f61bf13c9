"""Transitions: which items followed which in the training sessions, to re-score candidates.

The embedding search finds items like the session; it cannot tell which of them usually comes
*next*. For each item, the training job counts the items that came right after it in a
session and keeps each one's share of that item's successors (the most frequent
`MAX_SUCCESSORS`). At serving, a candidate the index retrieved gains `transition_weight` times
its share of the successors of the session's latest item.

Sessions also go back to items they showed before. The job counts, for each distance d, how
often the next click returned to the item clicked d steps before the latest (`returns`). A
retrieved item already in the session gains `return_weight` times that share for each
distance it was clicked at. The item in hand (distance 0) gains nothing from it: a pushed
list leaves it out.

Nothing else changes: the candidates are the ones the index found, so neither ever brings in
an item the search did not.

Stored as a sparse matrix in CSR arrays over the model's item rows: `indptr` (n + 1,),
`successors` (nnz,) sorted within each row, `share` (nnz,) float32; and `returns` (m,) float32,
entry d - 1 for distance d.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .features import F32, I64

I32 = npt.NDArray[np.int32]
MAX_SUCCESSORS = 100  # kept per item, the most frequent


@dataclass(frozen=True, slots=True)
class Transitions:
    indptr: I64
    successors: I32
    share: F32
    # Entry d - 1: the share of next clicks that returned to the item clicked d steps before
    # the latest (empty: not counted, as in versions written before it was).
    returns: F32 = field(default_factory=lambda: np.zeros(0, np.float32))
    # Each entry as row * items + column, in order as the rows and their columns are: what
    # `shares` searches. Made with the object (when a model loads), not on the first batch.
    keys: I64 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = np.diff(self.indptr)
        keys = np.zeros(0, np.int64)  # inconsistent arrays have none: `problem` says why
        if (
            self.indptr.ndim == 1
            and len(self.indptr)
            and (counts >= 0).all()
            and int(self.indptr[-1]) == len(self.successors)
        ):
            rows = np.repeat(np.arange(self.items, dtype=np.int64), counts)
            keys = rows * self.items + self.successors
        object.__setattr__(self, "keys", keys)

    @property
    def items(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def count(cls, first: I64, then: I64, n_items: int, returns: F32 | None = None) -> Transitions:
        """From the item rows of every (click, the click right after it) pair of the training
        sessions; an item clicked twice in a row follows itself. `returns`: see
        `count_returns` (None: not counted)."""
        returns = np.zeros(0, np.float32) if returns is None else returns
        if not len(first):
            return cls(*cls.empty(n_items).arrays()[:3], returns)
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
        return cls(indptr, cols.astype(np.int32), share, returns)

    @staticmethod
    def count_returns(latest_at: I64, start: I64, flat: I64, target: I64, depth: int) -> F32:
        """`returns` for distances 1 to depth - 1, from the training cases: each case's
        latest click is `flat[latest_at]`, its session starts at `start`, its next click is
        `target`. The share at distance d is over the cases whose prefix reaches back d steps."""
        out = np.zeros(max(depth - 1, 0), np.float32)
        for d in range(1, depth):
            at = latest_at - d
            reach = at >= start
            if reach.any():
                out[d - 1] = np.mean(flat[at[reach]] == target[reach])
        return out

    @classmethod
    def empty(cls, n_items: int) -> Transitions:
        return cls(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))

    def arrays(self) -> tuple[I64, I32, F32, F32]:
        """What a saved version keeps: indptr, successors, share, returns."""
        return self.indptr, self.successors, self.share, self.returns

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
        r = self.returns
        if r.ndim != 1 or not np.isfinite(r).all() or (r < 0).any() or (r > 1).any():
            return "return shares that are not a list of numbers from 0 to 1"
        return None

    def shares(self, latest: I64, candidates: I64) -> F32:
        """For each (latest, candidate) pair of item rows, the candidate's share of the
        successors of `latest`; 0 where it never followed it, and for rows the model does not
        have (-1: none; catalog items added since). One sorted search for all the pairs: the
        CSR entries, read as row * items + column, are in order."""
        n = self.items
        valid = (latest >= 0) & (latest < n) & (candidates >= 0) & (candidates < n)
        out = np.zeros(len(candidates), np.float32)
        keys = self.keys
        if not len(keys) or not valid.any():
            return out
        wanted = latest[valid] * n + candidates[valid]
        at = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
        out[valid] = np.where(keys[at] == wanted, self.share[at], np.float32(0.0))
        return out
