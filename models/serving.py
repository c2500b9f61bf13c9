"""A model version loaded for serving: artifact + live index + recommender, as one object.

The one way to turn a saved version into a recommender: the stream worker, its watcher, the
training job (the current version on the holdout) and rollback all use `load_serving`.
Vectors not yet saved (a model just trained, a benchmark's peers) become a recommender through
`training.evaluate.recommender_for`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import Model, current_version, load_index, load_model, version_path
from .config import EventWeights
from .features import F32, compose, encode_items, normalise
from .filters import ItemMetadata
from .index import ItemIndex, Staged
from .ranking import IntentOut, Recommender
from .records import Intent, Item

log = logging.getLogger(__name__)


# Two unit vectors this close in every coordinate are the same item vector (float32 rounding
# apart): a model taking the catalog leaves such an item where its graph has it.
SAME_VECTOR = 1e-5


@dataclass
class CatalogChange:
    """Catalog upserts prepared for one model (`ServingModel.prepare`): each item's latest
    record, in order (`items`), the live ones and their composed vectors (n, dim) float32,
    and which of those the index must take (`moved`, (n,) bool). `received` counts the
    records it came from; `whole`: the whole catalog, for a model before it is served."""

    serving: ServingModel | None
    items: list[Item]
    live: list[Item]
    vectors: F32
    moved: np.ndarray
    received: int
    whole: bool = False

    def __len__(self) -> int:
        return len(self.live)

    @classmethod
    def joined(cls, parts: list[CatalogChange]) -> CatalogChange:
        """One change of `parts` (prepared for the same model from disjoint items), in order."""
        first = parts[0]
        return cls(
            first.serving,
            [item for part in parts for item in part.items],
            [item for part in parts for item in part.live],
            np.concatenate([part.vectors for part in parts]),
            np.concatenate([part.moved for part in parts]),
            sum(part.received for part in parts),
            first.whole,
        )

    @classmethod
    def unserved(cls, items: list[Item]) -> CatalogChange:
        """Upserts with no model to apply them to (nothing is composed)."""
        latest = list({item.item_id: item for item in items}.values())
        none = np.zeros((0, 0), dtype=np.float32)
        return cls(None, latest, [], none, np.zeros(0, dtype=bool), len(items))


@dataclass
class ServingModel:
    """Everything needed to answer requests; built fully before it is swapped in."""

    model: Model
    index: ItemIndex
    recommender: Recommender
    metadata: ItemMetadata  # the recommender's, for intents and filters

    @property
    def version(self) -> str:
        return self.model.version

    def apply_items(self, items: list[Item], only_changed: bool = False) -> int:
        """Upsert catalog items at once: compose vectors from metadata (+ learned identity
        when the model knows the item), put them live in the index; deleted items leave it.
        With `only_changed` (a model taking the whole catalog before it is served: most items
        are its own), an item whose composed vector is the one the index holds keeps its place
        in the graph.
        Returns the number of items."""
        change = self.prepare(items, only_changed)
        self.index.link(self.stage(change, 0, len(change)))
        return len(items)

    def prepare(self, items: list[Item], only_changed: bool = False) -> CatalogChange:
        """Catalog upserts made ready for this model, off the event loop: the latest record
        of each item, and the vectors of the live ones composed (the costly part). Reads
        the index only with `only_changed`."""
        latest = list({item.item_id: item for item in items}.values())
        live = [i for i in latest if not i.deleted]
        t = self.model.tables
        features = encode_items(
            live, (t.token_vocab, t.category_vocab, t.brand_vocab), t.price_mean, t.price_std
        )
        identity = np.zeros((len(live), t.dims.name), dtype=np.float32)
        for row, item in enumerate(live):
            known = self.model_row(item.item_id)
            if known is not None:
                identity[row] = self.model.identity[known]
        vectors = (
            compose(t, features, identity) if live else np.zeros((0, self.index.dim), np.float32)
        )
        moved = np.ones(len(live), dtype=bool)
        if only_changed and live:
            moved = self._moved(live, normalise(vectors))
        return CatalogChange(self, latest, live, vectors, moved, len(items), only_changed)

    def _moved(self, live: list[Item], vectors: F32) -> np.ndarray:
        labels = self.index.labels
        rows = np.array([labels.get(i.item_id, -1) for i in live], dtype=np.int64)
        held = rows >= 0
        held &= np.array([row not in self.index.deleted for row in rows.tolist()], dtype=bool)
        same = np.zeros(len(live), dtype=bool)
        same[held] = np.all(
            np.abs(self.index.vectors[rows[held]] - vectors[held]) <= SAME_VECTOR, axis=1
        )
        return ~same

    def stage(self, change: CatalogChange, start: int, stop: int) -> Staged:
        """Items `start:stop` of the change (in the order of `change.live`, deletions with the
        first slice) recorded in the index and the metadata, cheaply; the graph takes them
        when `index.link` runs on the result."""
        live, moved = change.live[start:stop], change.moved[start:stop]
        ids = [item.item_id for item, m in zip(live, moved, strict=True) if m]
        vectors = change.vectors[start:stop][moved]
        deleted = [i.item_id for i in change.items if i.deleted] if start == 0 else []
        staged = self.index.stage(ids, vectors, deleted)
        m = self.metadata
        for item in live:
            label = self.index.labels[item.item_id]
            m.categories[label] = item.category
            m.brands[label] = item.brand
            if item.price is None:
                m.prices.pop(label, None)
            else:
                m.prices[label] = item.price
        return staged

    def model_row(self, item_id: str) -> int | None:
        row = self.index.labels.get(item_id)
        return row if row is not None and row < len(self.model.item_ids) else None

    def intent(self, it: IntentOut) -> Intent:
        """An intent as a recommendation shows it: members, weight, dominant category/brand."""
        known = self.index.labels
        labels = [known[m] for m in it.members if m in known]
        return Intent(
            id=it.id,
            members=list(it.members),
            weight=round(it.weight, 4),
            category=_dominant([self.metadata.categories.get(label) for label in labels]),
            brand=_dominant([self.metadata.brands.get(label) for label in labels]),
            past=it.past,
        )


def _dominant(values: list[str | None]) -> str | None:
    """The most frequent value that is set; the first seen of equally frequent ones."""
    if len(values) == 1:
        return values[0] or None
    counts: dict[str, int] = {}
    for value in values:
        if value:
            counts[value] = counts.get(value, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def serving_model(model: Model, index: ItemIndex, weights: EventWeights) -> ServingModel:
    """`model` served over `index` (built from its vectors, or loaded with it)."""
    t = model.tables
    categories = {
        row: (t.category_vocab.words[c - 1] if c > 0 else None)
        for row, c in enumerate(model.item_category.tolist())
    }
    brands = {
        row: (t.brand_vocab.words[b - 1] if b > 0 else None)
        for row, b in enumerate(model.item_brand.tolist())
    }
    prices: dict[int, float] = {}
    if model.item_price is not None:
        prices = {row: p for row, p in enumerate(model.item_price.tolist()) if p >= 0}
    metadata = ItemMetadata(categories, brands, prices)
    rec = Recommender(index, t.dims, model.position_weights, weights, metadata, model.transitions)
    return ServingModel(model, index, rec, metadata)


def load_serving(
    path: Path, weights: EventWeights, threads: int = 1, ef: int | None = None
) -> ServingModel:
    """Load a model version completely (raises `ArtifactError` if it is unusable); `ef` is the
    index's search beam (None: the index's default)."""
    model = load_model(path)
    return serving_model(model, load_index(path, model, threads=threads, ef=ef), weights)


def load_current(
    model_dir: Path, weights: EventWeights, threads: int = 1, ef: int | None = None
) -> ServingModel | None:
    version = current_version(model_dir)
    if version is None:
        return None
    return load_serving(version_path(model_dir, version), weights, threads, ef)
