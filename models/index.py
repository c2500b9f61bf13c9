"""The item index: hnswlib behind one class that speaks item ids and cosine scores.

Vectors are stored L2-normalised and searched by inner product, so scores are cosines when the
query is normalised too. An exact (brute-force) mode answers the same calls, to show what the
approximate index costs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from .config import DEFAULT_INDEX_EF
from .features import F32, I64, normalise


@dataclass(frozen=True, slots=True)
class Staged:
    """An upsert that `ItemIndex.stage` recorded and `ItemIndex.link` puts in the graph:
    labels (n,) int64 and their normalised vectors (n, dim) float32; labels of deleted items
    that come back (`revived`) and of items deleted now (`deleted`)."""

    labels: I64
    vectors: F32
    revived: list[int]
    deleted: list[int]


@dataclass(frozen=True, slots=True)
class IndexConfig:
    m: int = 32
    ef_construction: int = 200
    ef: int = DEFAULT_INDEX_EF
    threads: int = 2


class ItemIndex:
    """Item ids <-> hnswlib labels, normalisation, growth, deletion, and (ids, scores) answers."""

    def __init__(self, dim: int, config: IndexConfig | None = None, exact: bool = False):
        self.dim = dim
        self.config = config or IndexConfig()
        self.exact = exact
        self.ids: list[str] = []
        self.labels: dict[str, int] = {}
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.deleted: set[int] = set()
        self._hnsw: hnswlib.Index | None = None
        self._storage: F32 | None = None  # what `vectors` is a view of (see `_grow`)
        # Held while the graph changes (`link`) and while it is searched: hnswlib does not
        # promise that an add beside a search is safe.
        self.linking = threading.Lock()
        self._unlinked: set[int] = set()  # staged labels the graph does not hold yet

    def __len__(self) -> int:
        """Items a search can find: live and linked."""
        return len(self.ids) - len(self.deleted) - len(self._unlinked)

    def _ensure_hnsw(self, capacity: int) -> hnswlib.Index:
        if self._hnsw is None:
            self._hnsw = hnswlib.Index(space="ip", dim=self.dim)
            self._hnsw.init_index(
                max_elements=max(capacity, 16),
                M=self.config.m,
                ef_construction=self.config.ef_construction,
                allow_replace_deleted=False,
            )
            self._hnsw.set_ef(self.config.ef)
        elif self._hnsw.get_max_elements() < capacity:
            self._hnsw.resize_index(max(capacity, 2 * self._hnsw.get_max_elements()))
        return self._hnsw

    def upsert(self, item_ids: list[str], vectors: F32) -> None:
        """Add or replace items. vectors: (len(item_ids), dim) float32, normalised here."""
        self.link(self.stage(item_ids, vectors))

    def stage(self, item_ids: list[str], vectors: F32, deleted: list[str] | None = None) -> Staged:
        """The bookkeeping half of an upsert (and of deleting `deleted`), cheap: labels, stored
        vectors and the deleted set change now; the graph holds the change once `link` has run.
        Until then a search does not find the staged items. A worker stages on its event loop
        and links in the thread that runs its searches, so that the graph never changes while
        it is searched and the loop never waits for hnswlib."""
        vectors = normalise(np.asarray(vectors, dtype=np.float32).reshape(len(item_ids), self.dim))
        labels = np.empty(len(item_ids), dtype=np.int64)
        for row, item_id in enumerate(item_ids):
            label = self.labels.get(item_id)
            if label is None:
                label = len(self.ids)
                self.ids.append(item_id)
                self.labels[item_id] = label
            labels[row] = label
        self._grow(len(self.ids))
        self.vectors[labels] = vectors
        revived = [label for label in labels.tolist() if label in self.deleted]
        self.deleted.difference_update(revived)
        known = [self.labels.get(item_id) for item_id in deleted or ()]
        gone = [label for label in known if label is not None and label not in self.deleted]
        self.deleted.update(gone)
        self._unlinked.update(labels.tolist())
        return Staged(labels, vectors, revived, gone)

    def link(self, staged: Staged) -> None:
        """The graph's half of an upsert: hnswlib adds the staged vectors (and marks the
        staged deletions). Runs in the thread that searches."""
        if not self.exact and (len(staged.labels) or staged.deleted):
            with self.linking:
                index = self._ensure_hnsw(len(self.ids))
                for label in staged.revived:
                    index.unmark_deleted(label)
                for label in staged.deleted:
                    index.mark_deleted(label)
                if len(staged.labels):
                    index.add_items(staged.vectors, staged.labels, num_threads=self.config.threads)
        self._unlinked.difference_update(staged.labels.tolist())

    def _grow(self, n: int) -> None:
        """`vectors` holds `n` rows, as a view of storage that doubles when full, so that
        growing by a few items does not copy the whole catalog each time."""
        storage = self._storage
        if storage is None or not np.may_share_memory(storage, self.vectors):
            storage = self.vectors  # set from outside (a loaded model): taken as it is
        if n > len(storage):
            grown = np.zeros((max(n, 2 * len(storage), 16), self.dim), dtype=np.float32)
            grown[: len(self.vectors)] = self.vectors
            storage = grown
        self._storage = storage
        if len(self.vectors) != n or self.vectors.base is not storage:
            self.vectors = storage[:n]

    def delete(self, item_id: str) -> bool:
        label = self.labels.get(item_id)
        if label is None or label in self.deleted:
            return False
        self.deleted.add(label)
        if self._hnsw is not None:
            self._hnsw.mark_deleted(label)
        return True

    def vector(self, item_id: str) -> F32 | None:
        label = self.labels.get(item_id)
        return None if label is None or label in self.deleted else self.vectors[label]

    def search(
        self, queries: F32, k: int, allowed: Callable[[int], bool] | None = None
    ) -> tuple[I64, F32]:
        """Top-k labels and inner-product scores for each query row, among the labels
        `allowed` passes (None: all; a filtered search calls it for every item it visits).

        queries: (m, dim) float32 (not necessarily normalised). Returns labels (m, k') int64 and
        scores (m, k') float32, best first, k' = min(k, live items); -1 labels pad short rows.
        """
        with self.linking:  # a graph change from another thread waits, and vice versa
            return self._search(queries, k, allowed)

    def _search(
        self, queries: F32, k: int, allowed: Callable[[int], bool] | None
    ) -> tuple[I64, F32]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, len(self))
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        if self.exact or self._hnsw is None:
            return self._exact(queries, k, allowed)
        # hnswlib searches with max(ef, k): ef is set once, so that searches from two threads
        # (a batch's, and the query API's) never change each other's beam.
        if allowed is not None:
            return self._filtered(queries, k, allowed)
        labels, distances = self._hnsw.knn_query(queries, k=k, num_threads=self.config.threads)
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def _filtered(self, queries: F32, k: int, allowed: Callable[[int], bool]) -> tuple[I64, F32]:
        """hnswlib's filtered search, a row at a time. hnswlib raises when it finds fewer than
        the k asked for; then the most it finds is looked for by bisection."""
        labels = np.full((len(queries), k), -1, np.int64)
        scores = np.zeros((len(queries), k), np.float32)
        for row, query in enumerate(queries):
            found = self._most_allowed(query, k, allowed)
            if found is not None:
                n = found[0].shape[1]
                labels[row, :n], scores[row, :n] = found[0][0], 1.0 - found[1][0]
        return labels, scores

    def _most_allowed(
        self, query: F32, k: int, allowed: Callable[[int], bool]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        assert self._hnsw is not None
        best, low, high = None, 0, k + 1  # `low` items were found, `high` were not
        want = k
        while high - low > 1:
            try:
                best = self._hnsw.knn_query(query, k=want, filter=allowed)
                low = want
            except RuntimeError:  # fewer than `want` allowed items were found
                high = want
            want = (low + high) // 2
        return best

    def _exact(
        self, queries: F32, k: int, allowed: Callable[[int], bool] | None = None, chunk: int = 256
    ) -> tuple[I64, F32]:
        labels = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        dead = list(self.deleted)
        if allowed is not None:
            dead += [label for label in range(len(self.ids)) if not allowed(label)]
        for start in range(0, len(queries), chunk):
            block = queries[start : start + chunk] @ self.vectors.T
            if dead:
                block[:, dead] = -np.inf
            end = start + len(block)
            labels[start:end], scores[start:end] = top_k(block, k)
        if allowed is not None:  # fewer allowed items than k: the rest are no answers
            labels[np.isneginf(scores)] = -1
        return labels, scores

    def save(self, path: Path) -> None:
        if self._hnsw is not None:
            self._hnsw.save_index(str(path))

    def load_hnsw(self, path: Path) -> None:
        """Attach a saved hnswlib graph whose labels are this index's rows."""
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.load_index(str(path), max_elements=max(len(self.ids), 16))
        self.take_graph(index, path.name)

    def take_graph(self, index: hnswlib.Index, name: str) -> None:
        """Attach a loaded hnswlib graph (read from the file `name`) whose labels are this
        index's rows."""
        index.set_ef(self.config.ef)
        if index.get_current_count() != len(self.ids):
            raise ValueError(
                f"index file {name} holds {index.get_current_count()} items, "
                f"expected {len(self.ids)}"
            )
        self._hnsw = index
        self.exact = False

    @classmethod
    def build(
        cls,
        item_ids: list[str],
        vectors: F32,
        config: IndexConfig | None = None,
        exact: bool = False,
    ) -> ItemIndex:
        index = cls(vectors.shape[1], config, exact=exact)
        if not exact:
            index._ensure_hnsw(len(item_ids))
        index.upsert(item_ids, vectors)
        return index

    def exact_twin(self) -> ItemIndex:
        """The same items, searched exactly."""
        twin = ItemIndex(self.dim, self.config, exact=True)
        twin.ids, twin.labels = list(self.ids), dict(self.labels)
        twin.vectors, twin.deleted = self.vectors.copy(), set(self.deleted)
        return twin


def top_k(block: F32, k: int) -> tuple[I64, F32]:
    """Each row's k largest values and their columns, best first (ties: lower column first).

    The k-th largest of every `stride`-th value of a row is at most the row's own k-th largest,
    so the values at or above it hold the row's top k among a few hundred candidates, and only
    those are sorted, which is cheaper than partitioning whole rows of a large catalog.
    """
    n_rows, n = block.shape
    stride = int(np.sqrt(n / k) / 2) if k else 0
    if stride < 2:
        top = np.argsort(-block, axis=1, kind="stable")[:, :k]
        return top.astype(np.int64), np.take_along_axis(block, top, axis=1)
    threshold = np.partition(block[:, ::stride], -k, axis=1)[:, -k]
    rows, cols = np.nonzero(block >= threshold[:, None])
    values = block[rows, cols]
    order = np.lexsort((-values, rows))  # by row, then best first; stable: lower column first
    rows, cols, values = rows[order], cols[order], values[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n_rows))[rows]
    keep = rank < k
    labels = np.empty((n_rows, k), dtype=np.int64)
    scores = np.empty((n_rows, k), dtype=block.dtype)
    labels[rows[keep], rank[keep]] = cols[keep]
    scores[rows[keep], rank[keep]] = values[keep]
    return labels, scores
