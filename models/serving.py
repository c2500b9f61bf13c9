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
from .features import compose, encode_items
from .filters import ItemMetadata
from .index import ItemIndex
from .ranking import IntentOut, Recommender
from .records import Intent, Item

log = logging.getLogger(__name__)


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

    def apply_items(self, items: list[Item]) -> int:
        """Upsert catalog items: compose vectors from metadata (+ learned identity when the model
        knows the item), put them live in the index; deleted items leave it. Returns changes."""
        if not items:
            return 0
        t = self.model.tables
        live = [i for i in items if not i.deleted]
        for item in items:
            if item.deleted:
                self.index.delete(item.item_id)
        if live:
            features = encode_items(
                live, (t.token_vocab, t.category_vocab, t.brand_vocab), t.price_mean, t.price_std
            )
            identity = np.zeros((len(live), t.dims.name), dtype=np.float32)
            for row, item in enumerate(live):
                known = self.model_row(item.item_id)
                if known is not None:
                    identity[row] = self.model.identity[known]
            vectors = compose(t, features, identity)
            self.index.upsert([i.item_id for i in live], vectors)
            m = self.metadata
            for item in live:
                label = self.index.labels[item.item_id]
                m.categories[label] = item.category
                m.brands[label] = item.brand
                if item.price is None:
                    m.prices.pop(label, None)
                else:
                    m.prices[label] = item.price
        return len(items)

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
