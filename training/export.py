"""Turn a trained model into a versioned artifact and switch CURRENT to it."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..models.artifact import UNKNOWN_PRICE, Model, save_model, set_current
from ..models.features import Vocab
from ..models.index import IndexConfig, ItemIndex
from .trainer import TrainedModel

log = logging.getLogger(__name__)


def new_version(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("v%Y%m%d-%H%M%S-%f")[:-3]


def _item_rows(items_vocab: Vocab, values: list[str | None]) -> np.ndarray:
    index = items_vocab.index()
    return np.asarray([index.get(v or "", 0) for v in values], dtype=np.int64)


def _price(price: float | None) -> float:
    return UNKNOWN_PRICE if price is None or not math.isfinite(price) or price < 0 else price


def to_model(trained: TrainedModel, version: str, manifest: dict[str, Any]) -> Model:
    t = trained.tables
    popularity = np.zeros(len(trained.item_ids), dtype=np.float32)
    return Model(
        version=version,
        item_ids=trained.item_ids,
        vectors=trained.vectors,
        identity=trained.identity,
        tables=t,
        item_category=_item_rows(t.category_vocab, [i.category for i in trained.items]),
        item_brand=_item_rows(t.brand_vocab, [i.brand for i in trained.items]),
        position_weights=trained.position_weights,
        popularity=trained.popularity if trained.popularity is not None else popularity,
        manifest=manifest,
        item_price=np.asarray([_price(i.price) for i in trained.items], np.float32),
        transitions=trained.transitions,
    )


def export(
    trained: TrainedModel,
    model_dir: Path,
    manifest: dict[str, Any],
    index_config: IndexConfig | None = None,
    make_current: bool = True,
    version: str | None = None,
    index: ItemIndex | None = None,
) -> tuple[Path, ItemIndex]:
    """Write the artifact (vectors, tables, HNSW index, manifest) and switch CURRENT. `index`,
    if given, is one already built from the trained vectors."""
    version = version or new_version()
    model_dir.mkdir(parents=True, exist_ok=True)
    if index is None:
        index = ItemIndex.build(list(trained.item_ids), trained.vectors, index_config)
    full = {"created": datetime.now(UTC).isoformat(), **manifest}
    path = save_model(to_model(trained, version, full), model_dir, index)
    if make_current:
        set_current(model_dir, version)
    log.info("model %s written to %s%s", version, path, " (now CURRENT)" if make_current else "")
    return path, index
