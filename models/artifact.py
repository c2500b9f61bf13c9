"""The model artifact: a versioned directory of arrays and a JSON manifest, never a pickle.

<model_dir>/<version>/manifest.json   version, created, data range, hyperparameters, metrics
<model_dir>/<version>/items.json      item ids, in row order
<model_dir>/<version>/*.npy           vectors, identity rows, feature tables, item features
<model_dir>/<version>/vocab.json      token, category and brand vocabularies
<model_dir>/<version>/index.hnsw      the hnswlib graph over `vectors`
<model_dir>/CURRENT                   the served version's name, switched atomically
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.features import F32, I64, Dims, FeatureTables, Vocab
from models.index import IndexConfig, ItemIndex

FORMAT = 1
_ARRAYS = (
    "vectors",
    "identity",
    "tokens",
    "category",
    "brand",
    "price_w",
    "price_b",
    "item_category",
    "item_brand",
    "position_weights",
    "popularity",
)


class ArtifactError(ValueError):
    """An artifact is missing, incomplete or inconsistent; the message says what."""


@dataclass(frozen=True, slots=True)
class Model:
    """Everything serving needs, loaded read-only."""

    version: str
    item_ids: tuple[str, ...]
    vectors: F32
    identity: F32
    tables: FeatureTables
    item_category: I64
    item_brand: I64
    position_weights: F32
    popularity: F32
    manifest: dict[str, Any]

    @property
    def dims(self) -> Dims:
        return self.tables.dims


def save_model(model: Model, directory: Path, index: ItemIndex | None = None) -> Path:
    """Write a model version into `directory/<version>` (via a temp dir, renamed at the end)."""
    target = directory / model.version
    if target.exists():
        raise ArtifactError(f"version {model.version} already exists in {directory}")
    tmp = directory / f".{model.version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = model.tables
    arrays = {
        "vectors": model.vectors,
        "identity": model.identity,
        "tokens": t.tokens,
        "category": t.category,
        "brand": t.brand,
        "price_w": t.price_w,
        "price_b": t.price_b,
        "item_category": model.item_category,
        "item_brand": model.item_brand,
        "position_weights": model.position_weights,
        "popularity": model.popularity,
    }
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    (tmp / "items.json").write_text(json.dumps(list(model.item_ids)))
    vocab = {
        "tokens": list(t.token_vocab.words),
        "categories": list(t.category_vocab.words),
        "brands": list(t.brand_vocab.words),
        "price_mean": t.price_mean,
        "price_std": t.price_std,
        "dims": asdict(t.dims),
    }
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    index = index or ItemIndex.build(list(model.item_ids), model.vectors)
    index.save(tmp / "index.hnsw")
    manifest = {
        **model.manifest,
        "format": FORMAT,
        "version": model.version,
        "items": len(model.item_ids),
        "dim": int(model.vectors.shape[1]),
        "index": asdict(index.config),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    tmp.rename(target)
    return target


def _load_array(path: Path, name: str) -> np.ndarray:
    file = path / f"{name}.npy"
    if not file.exists():
        raise ArtifactError(f"model {path.name} is incomplete: {file.name} is missing")
    try:
        array: np.ndarray = np.load(file, allow_pickle=False)
        return array
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"model {path.name}: {file.name} is unreadable ({exc})") from None


def _load_json(path: Path, name: str) -> Any:
    file = path / name
    if not file.exists():
        raise ArtifactError(f"model {path.name} is incomplete: {name} is missing")
    try:
        return json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"model {path.name}: {name} is not valid JSON ({exc})") from None


def load_model(path: Path) -> Model:
    """Load and check a model version directory; raise `ArtifactError` if anything is off."""
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist")
    manifest = _load_json(path, "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"model {path.name}: manifest format is not {FORMAT}")
    ids = _load_json(path, "items.json")
    vocab = _load_json(path, "vocab.json")
    a = {name: _load_array(path, name) for name in _ARRAYS}
    n = len(ids)
    dims = Dims(**vocab["dims"])
    if a["vectors"].shape != (n, dims.total) or a["identity"].shape != (n, dims.name):
        raise ArtifactError(
            f"model {path.name}: vectors {a['vectors'].shape} do not match {n} items x "
            f"{dims.total} dimensions"
        )
    if not np.isfinite(a["vectors"]).all():
        raise ArtifactError(f"model {path.name}: vectors contain NaN or infinity")
    tables = FeatureTables(
        dims=dims,
        token_vocab=Vocab(tuple(vocab["tokens"])),
        category_vocab=Vocab(tuple(vocab["categories"])),
        brand_vocab=Vocab(tuple(vocab["brands"])),
        tokens=a["tokens"],
        category=a["category"],
        brand=a["brand"],
        price_w=a["price_w"],
        price_b=a["price_b"],
        price_mean=float(vocab["price_mean"]),
        price_std=float(vocab["price_std"]),
    )
    return Model(
        str(manifest["version"]),
        tuple(ids),
        a["vectors"],
        a["identity"],
        tables,
        a["item_category"],
        a["item_brand"],
        a["position_weights"],
        a["popularity"],
        manifest,
    )


def load_index(path: Path, model: Model, threads: int = 2, ef: int | None = None) -> ItemIndex:
    """The model's hnswlib index, checked against its item count."""
    built = model.manifest.get("index", {})
    # m and ef_construction describe the saved graph; ef and threads are query-time choices.
    config = IndexConfig(
        m=int(built.get("m", 32)),
        ef_construction=int(built.get("ef_construction", 200)),
        ef=ef or IndexConfig().ef,
        threads=threads,
    )
    index = ItemIndex(model.vectors.shape[1], config)
    index.ids = list(model.item_ids)
    index.labels = {item_id: row for row, item_id in enumerate(model.item_ids)}
    index.vectors = model.vectors.copy()
    file = path / "index.hnsw"
    if not file.exists():
        raise ArtifactError(f"model {path.name} is incomplete: index.hnsw is missing")
    try:
        index.load_hnsw(file)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"model {path.name}: index.hnsw is unusable ({exc})") from None
    return index


def set_current(model_dir: Path, version: str) -> None:
    """Point CURRENT at `version` atomically (write a temp file, then rename over)."""
    if not (model_dir / version / "manifest.json").exists():
        raise ArtifactError(f"no model version {version!r} in {model_dir}")
    tmp = model_dir / f".CURRENT.{os.getpid()}"
    tmp.write_text(version + "\n")
    os.replace(tmp, model_dir / "CURRENT")


def current_version(model_dir: Path) -> str | None:
    try:
        return (model_dir / "CURRENT").read_text().strip() or None
    except FileNotFoundError:
        return None


def list_versions(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in model_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()
    )
