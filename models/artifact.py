"""The model artifact: a versioned directory of arrays and a JSON manifest, never a pickle.

<model_dir>/<version>/manifest.json   version, created, data range, hyperparameters, metrics
<model_dir>/<version>/items.json      item ids, in row order
<model_dir>/<version>/*.npy           vectors, identity rows, feature tables, item features
<model_dir>/<version>/vocab.json      token, category and brand vocabularies
<model_dir>/<version>/index.hnsw      the hnswlib graph over `vectors`
<model_dir>/CURRENT                   the served version's name, switched atomically
<model_dir>/PREVIOUS                  the version CURRENT named before (what rollback restores)

A version is trusted only once verified (`load_model`, `load_index`): a plain name, every file
the manifest lists with its size and sha256, JSON of the expected shape, arrays whose shapes
agree with the items and vocabularies, and an hnswlib graph that a child process loaded and
searched (a corrupt graph can crash the process that searches it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from .features import F32, I64, Dims, FeatureTables, Vocab
from .index import IndexConfig, ItemIndex
from .transitions import Transitions

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the manifest lists every file's size and sha256
FORMATS = (1, 2)
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INDEX_CHECK_TIMEOUT_S = 120.0
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
# Optional arrays: a version written before they existed loads without them.
_TRANSITION_ARRAYS = ("transitions_indptr", "transitions_successors", "transitions_share")
# Counted later than the others: a version may have transitions without it.
_RETURNS_ARRAY = "transitions_returns"
_OPTIONAL_ARRAYS = ("item_price", *_TRANSITION_ARRAYS, _RETURNS_ARRAY)
UNKNOWN_PRICE = -1.0  # item_price of an item without a price


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
    # (n,) float32: each item's catalog price (UNKNOWN_PRICE: none), for price filters.
    item_price: F32 | None = None
    # What followed what in the training sessions, to re-score candidates (None: not kept).
    transitions: Transitions | None = None

    @property
    def dims(self) -> Dims:
        return self.tables.dims


def check_version(name: object) -> str:
    """`name` if it is a plain version name (letters, digits, '.', '_', '-'; no path)."""
    if not isinstance(name, str) or not VERSION_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise ArtifactError(
            f"version name {shown} is not a plain name (letters, digits, '.', '_', '-')"
        )
    return name


def version_path(model_dir: Path, name: object) -> Path:
    """The directory of version `name`, inside `model_dir` only."""
    return model_dir / check_version(name)


def _fingerprint(file: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": file.stat().st_size, "sha256": digest.hexdigest()}


def save_model(model: Model, directory: Path, index: ItemIndex | None = None) -> Path:
    """Write a model version into `directory/<version>` (via a temp dir, renamed at the end)."""
    target = version_path(directory, model.version)
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
    if model.item_price is not None:
        arrays["item_price"] = model.item_price
    if model.transitions is not None:
        arrays.update(
            zip((*_TRANSITION_ARRAYS, _RETURNS_ARRAY), model.transitions.arrays(), strict=True)
        )
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
        "files": {f.name: _fingerprint(f) for f in sorted(tmp.iterdir())},
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


def _bad(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"model {path.name}: {what}")


def _check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise _bad(path, "manifest.json is not an object")
    if manifest.get("format") not in FORMATS:
        raise _bad(
            path, f"manifest format is {manifest.get('format')!r}, expected one of {FORMATS}"
        )
    if not isinstance(manifest.get("version"), str) or not VERSION_NAME.fullmatch(
        manifest["version"]
    ):
        raise _bad(
            path, f"manifest 'version' is {manifest.get('version')!r:.80}, expected a plain name"
        )
    index = manifest.get("index", {})
    if not isinstance(index, dict) or not all(
        isinstance(index.get(key, 1), int) and index.get(key, 1) > 0
        for key in ("m", "ef_construction")
    ):
        raise _bad(path, f"manifest 'index' is {index!r:.80}, expected positive integers m, ...")
    files = manifest.get("files")
    if manifest["format"] >= 2 and not (
        isinstance(files, dict)
        and all(
            isinstance(f, dict)
            and isinstance(f.get("size"), int)
            and isinstance(f.get("sha256"), str)
            for f in files.values()
        )
    ):
        raise _bad(path, "manifest 'files' is missing or malformed (name -> size, sha256)")
    return manifest


def _verify_files(path: Path, files: dict[str, Any]) -> None:
    """Every listed file is there with the listed size and sha256 (and nothing else is read)."""
    for name in ("items.json", "vocab.json", "index.hnsw", *(f"{a}.npy" for a in _ARRAYS)):
        if name not in files:
            raise _bad(path, f"manifest lists no checksum for {name}")
    for name, want in files.items():
        file = path / str(name)
        if file.parent != path or not file.is_file():
            raise _bad(path, f"{name} is missing")
        got = _fingerprint(file)
        if got["size"] != want["size"] or got["sha256"] != want["sha256"]:
            raise _bad(path, f"{name} does not match its checksum in the manifest")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_vocab(path: Path, vocab: Any) -> Dims:
    if not isinstance(vocab, dict) or not all(
        _strings(vocab.get(k)) for k in ("tokens", "categories", "brands")
    ):
        raise _bad(path, "vocab.json is not an object of string lists tokens, categories, brands")
    dims = vocab.get("dims")
    names = {f.name for f in fields(Dims)}
    if not (
        isinstance(dims, dict)
        and set(dims) == names
        and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in dims.values()
        )
    ):
        raise _bad(
            path, f"vocab.json 'dims' is {dims!r:.80}, expected positive integers {sorted(names)}"
        )
    for key in ("price_mean", "price_std"):
        value = vocab.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _bad(path, f"vocab.json {key!r} is {value!r:.40}, expected a finite number")
    return Dims(**dims)


def _check_arrays(path: Path, a: dict[str, np.ndarray], n: int, dims: Dims, vocab: Any) -> None:
    """Shapes that agree with the items and vocabularies, finite floats, rows in range."""
    tokens, categories, brands = (len(vocab[k]) + 1 for k in ("tokens", "categories", "brands"))
    expected = {
        "vectors": (n, dims.total),
        "identity": (n, dims.name),
        "tokens": (tokens, dims.name),
        "category": (categories, dims.category),
        "brand": (brands, dims.brand),
        "price_w": (dims.price,),
        "price_b": (dims.price,),
        "item_category": (n,),
        "item_brand": (n,),
        "popularity": (n,),
        "item_price": (n,),
    }
    for name, shape in expected.items():
        if name in a and a[name].shape != shape:
            raise _bad(path, f"{name}.npy has shape {a[name].shape}, expected {shape}")
    if a["position_weights"].ndim != 1 or not 1 <= len(a["position_weights"]) <= 10_000:
        raise _bad(path, f"position_weights.npy has shape {a['position_weights'].shape}")
    for name, array in a.items():
        integer = name in ("item_category", "item_brand", *_TRANSITION_ARRAYS[:2])
        kind = "i" if integer else "f"
        if array.dtype.kind != kind:
            raise _bad(
                path,
                f"{name}.npy holds {array.dtype}, expected {'integers' if integer else 'floats'}",
            )
        if not integer and not np.isfinite(array).all():
            raise _bad(path, f"{name}.npy contains NaN or infinity")
    for name, rows in (("item_category", categories), ("item_brand", brands)):
        if n and not (int(a[name].min()) >= 0 and int(a[name].max()) < rows):
            raise _bad(path, f"{name}.npy refers to rows outside its vocabulary of {rows}")


def verify_files(path: Path) -> dict[str, Any]:
    """Check a version directory's files against its manifest's sizes and sha256 (format 2
    and later: a copied version must have them); return the manifest."""
    manifest = _check_manifest(path, _load_json(path, "manifest.json"))
    if manifest["format"] < 2:
        raise _bad(path, "its manifest lists no checksums (format 1): train it again")
    _verify_files(path, manifest["files"])
    return manifest


def load_model(path: Path) -> Model:
    """Load and verify a model version directory; raise `ArtifactError` if anything is off."""
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist")
    manifest = _check_manifest(path, _load_json(path, "manifest.json"))
    if manifest["format"] >= 2:
        _verify_files(path, manifest["files"])
    ids = _load_json(path, "items.json")
    if not _strings(ids) or len(set(ids)) != len(ids):
        raise _bad(path, "items.json is not a list of distinct item ids")
    vocab = _load_json(path, "vocab.json")
    dims = _check_vocab(path, vocab)
    a = {name: _load_array(path, name) for name in _ARRAYS}
    for name in _OPTIONAL_ARRAYS:
        if (path / f"{name}.npy").exists():
            a[name] = _load_array(path, name)
    n = len(ids)
    _check_arrays(path, a, n, dims, vocab)
    transitions = _transitions(path, a, n)
    tables = FeatureTables(
        dims=dims,
        token_vocab=Vocab(tuple(vocab["tokens"])),
        category_vocab=Vocab(tuple(vocab["categories"])),
        brand_vocab=Vocab(tuple(vocab["brands"])),
        tokens=a["tokens"].astype(np.float32, copy=False),
        category=a["category"].astype(np.float32, copy=False),
        brand=a["brand"].astype(np.float32, copy=False),
        price_w=a["price_w"].astype(np.float32, copy=False),
        price_b=a["price_b"].astype(np.float32, copy=False),
        price_mean=float(vocab["price_mean"]),
        price_std=float(vocab["price_std"]),
    )
    return Model(
        str(manifest["version"]),
        tuple(ids),
        a["vectors"].astype(np.float32, copy=False),
        a["identity"].astype(np.float32, copy=False),
        tables,
        a["item_category"].astype(np.int64, copy=False),
        a["item_brand"].astype(np.int64, copy=False),
        a["position_weights"].astype(np.float32, copy=False),
        a["popularity"].astype(np.float32, copy=False),
        manifest,
        a["item_price"].astype(np.float32, copy=False) if "item_price" in a else None,
        transitions,
    )


def _transitions(path: Path, a: dict[str, np.ndarray], n: int) -> Transitions | None:
    """The transition arrays as `Transitions`, checked (None: the version has none)."""
    present = [name for name in _TRANSITION_ARRAYS if name in a]
    if not present:
        if _RETURNS_ARRAY in a:
            raise _bad(path, f"it has {_RETURNS_ARRAY}.npy but no transition arrays")
        return None
    if len(present) < len(_TRANSITION_ARRAYS):
        missing = sorted(set(_TRANSITION_ARRAYS) - set(present))
        raise _bad(path, f"it has some transition arrays but not {', '.join(missing)}")
    indptr, successors, share = (a[name] for name in _TRANSITION_ARRAYS)
    transitions = Transitions(
        indptr.astype(np.int64, copy=False),
        successors.astype(np.int32, copy=False),
        share.astype(np.float32, copy=False),
        a[_RETURNS_ARRAY].astype(np.float32, copy=False)
        if _RETURNS_ARRAY in a
        else np.zeros(0, np.float32),
    )
    if len(indptr) != n + 1:
        raise _bad(path, f"transitions_indptr.npy has {len(indptr)} entries, expected {n + 1}")
    problem = transitions.problem()
    if problem:
        raise _bad(path, f"its transitions are unusable: {problem}")
    return transitions


_INDEX_CHECK = """
import pickle, sys, hnswlib, numpy as np
from pathlib import Path
from sessionrec.models.graph import check_graph
path, dim, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
check_graph(Path(path), dim, n)
index = hnswlib.Index(space="ip", dim=dim)
index.load_index(path, max_elements=max(n, 16))
assert index.get_current_count() == n, f"holds {index.get_current_count()} items, expected {n}"
rng = np.random.default_rng(0)
queries = rng.standard_normal((64, dim)).astype(np.float32)
index.set_ef(64)
for k in (1, min(n, 20), min(n, 200)):
    labels, _ = index.knn_query(queries, k=k, num_threads=1)
    assert ((labels >= 0) & (labels < n)).all(), "labels outside the items"
sys.stdout.buffer.write(pickle.dumps(index, protocol=5))
"""


def check_index_file(file: Path, dim: int, n: int) -> hnswlib.Index:
    """Check every link of the hnswlib graph (`models.graph`), then load and search it, in a
    child process: a corrupt graph can crash the process that loads or searches it, which
    must not be the worker. Returns the graph the child checked, handed over pickled through
    its output: hnswlib reads a graph file record by record holding the GIL, which a worker's
    event loop waits for; unpickling holds it far less (figures: docs/operating.md)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _INDEX_CHECK, str(file), str(dim), str(n)],
            capture_output=True,
            timeout=INDEX_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ArtifactError(
            f"{file}: checking the index took over {INDEX_CHECK_TIMEOUT_S:.0f} s"
        ) from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else f"the check process died (code {done.returncode})"
        raise ArtifactError(f"model {file.parent.name}: index.hnsw is unusable ({why[:200]})")
    try:
        graph: hnswlib.Index = pickle.loads(done.stdout)  # written by the child above
    except Exception as exc:  # something else wrote to its output
        raise ArtifactError(
            f"model {file.parent.name}: the index check handed back no graph ({exc!r:.200})"
        ) from None
    return graph


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
    graph = check_index_file(file, model.vectors.shape[1], len(model.item_ids))
    try:
        index.take_graph(graph, file.name)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"model {path.name}: index.hnsw is unusable ({exc})") from None
    return index


def set_current(model_dir: Path, version: str) -> None:
    """Point CURRENT at `version` atomically (write a temp file, then rename over); the
    version it named before is kept in PREVIOUS."""
    if not (version_path(model_dir, version) / "manifest.json").exists():
        raise ArtifactError(f"no model version {version!r} in {model_dir}")
    before = _read_name(model_dir, "CURRENT")
    if before is not None and before != version:
        _write_name(model_dir, "PREVIOUS", before)
    _write_name(model_dir, "CURRENT", version)


def _write_name(model_dir: Path, name: str, version: str) -> None:
    tmp = model_dir / f".{name}.{os.getpid()}"
    tmp.write_text(version + "\n")
    os.replace(tmp, model_dir / name)


def _read_name(model_dir: Path, name: str) -> str | None:
    try:
        text = (model_dir / name).read_text(errors="replace").strip()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return check_version(text) if text else None


def current_version(model_dir: Path) -> str | None:
    """The version CURRENT names (None: none yet); `ArtifactError` if it is not a plain name."""
    return _read_name(model_dir, "CURRENT")


def previous_version(model_dir: Path) -> str | None:
    """The version CURRENT named before its last switch."""
    return _read_name(model_dir, "PREVIOUS")


def doomed_versions(
    versions: list[str], keep: int, current: str | None, previous: str | None
) -> list[str]:
    """Which of `versions` (names sort by age) a retention of `keep` deletes: all but the
    newest `keep`, never `current` or `previous`; none when `keep` is 0."""
    if keep <= 0:
        return []
    kept = set(sorted(versions)[-keep:]) | {current, previous}
    return [v for v in sorted(versions) if v not in kept]


def prune_versions(model_dir: Path, keep: int) -> list[str]:
    """Delete the versions `doomed_versions` names from a model directory; returns them."""
    doomed = doomed_versions(
        list_versions(model_dir), keep, current_version(model_dir), previous_version(model_dir)
    )
    for version in doomed:
        shutil.rmtree(version_path(model_dir, version), ignore_errors=True)
    if doomed:
        log.info("deleted old model versions %s from %s", ", ".join(doomed), model_dir)
    return doomed


def list_versions(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in model_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()
    )
