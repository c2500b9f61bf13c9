"""Item metadata as arrays, and composing item vectors from the trained feature tables.

The composition here is the numpy twin of `training.model.ItemTower.forward`; a test holds the
two equal, so the stream worker can embed a new item without torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .records import Item

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

_TOKEN = re.compile(r"[\w-]+", re.UNICODE)
UNKNOWN = 0  # row 0 of every vocabulary table is "unknown"


def tokenize(name: str | None) -> list[str]:
    """Lower-cased word tokens of a name; comma-separated hashed tokens work too."""
    return [t for t in _TOKEN.findall(name.lower())] if name else []


@dataclass(frozen=True, slots=True)
class Dims:
    """Sizes of the four spaces; their sum is the item vector's dimension."""

    name: int = 32
    category: int = 32
    brand: int = 32
    price: int = 4

    @property
    def total(self) -> int:
        return self.name + self.category + self.brand + self.price

    def slices(self) -> dict[str, slice]:
        a = self.name
        b = a + self.category
        c = b + self.brand
        return {
            "name": slice(0, a),
            "category": slice(a, b),
            "brand": slice(b, c),
            "price": slice(c, c + self.price),
        }


@dataclass(frozen=True, slots=True)
class Vocab:
    """Strings to rows; row 0 is reserved for unknown."""

    words: tuple[str, ...]

    def index(self) -> dict[str, int]:
        return {w: i + 1 for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words) + 1


@dataclass(frozen=True, slots=True)
class FeatureTables:
    """Trained tables that turn metadata into a vector (everything but the identity rows).

    Shapes: tokens (len(token_vocab), name) float32; category (len(category_vocab), category);
    brand (len(brand_vocab), brand); price_w, price_b (price,) float32.
    """

    dims: Dims
    token_vocab: Vocab
    category_vocab: Vocab
    brand_vocab: Vocab
    tokens: F32
    category: F32
    brand: F32
    price_w: F32
    price_b: F32
    price_mean: float
    price_std: float


@dataclass(frozen=True, slots=True)
class ItemFeatures:
    """Metadata of n items as index arrays, in the order of `item_ids`.

    token_ids/token_offsets: a ragged (n, *) int64 list of token rows (0 = unknown);
    category, brand: (n,) int64 rows; price: (n,) float32 normalised log price (0 = unknown).
    """

    item_ids: tuple[str, ...]
    token_ids: I64
    token_offsets: I64
    category: I64
    brand: I64
    price: F32


def normalised_price(price: float | None, mean: float, std: float) -> float:
    if price is None or price < 0:
        return 0.0
    return (math.log1p(price) - mean) / std


def build_vocabs(items: list[Item], min_count: int = 1) -> tuple[Vocab, Vocab, Vocab]:
    """Token, category and brand vocabularies, in a stable (sorted) order."""
    counts: dict[str, int] = {}
    for item in items:
        for token in set(tokenize(item.name)):
            counts[token] = counts.get(token, 0) + 1
    tokens = tuple(sorted(t for t, c in counts.items() if c >= min_count))
    cats = tuple(sorted({i.category for i in items if i.category}))
    brands = tuple(sorted({i.brand for i in items if i.brand}))
    return Vocab(tokens), Vocab(cats), Vocab(brands)


def price_stats(items: list[Item]) -> tuple[float, float]:
    logs = np.array([math.log1p(i.price) for i in items if i.price is not None], dtype=np.float64)
    if logs.size < 2:
        return 0.0, 1.0
    return float(logs.mean()), float(max(logs.std(), 1e-3))


def encode_items(
    items: list[Item], vocabs: tuple[Vocab, Vocab, Vocab], price_mean: float, price_std: float
) -> ItemFeatures:
    token_ix, cat_ix, brand_ix = (v.index() for v in vocabs)
    flat: list[int] = []
    offsets: list[int] = []
    for item in items:
        offsets.append(len(flat))
        flat.extend(token_ix[t] for t in tokenize(item.name) if t in token_ix)
    return ItemFeatures(
        item_ids=tuple(i.item_id for i in items),
        token_ids=np.asarray(flat, dtype=np.int64),
        token_offsets=np.asarray(offsets, dtype=np.int64),
        category=np.asarray([cat_ix.get(i.category or "", UNKNOWN) for i in items], np.int64),
        brand=np.asarray([brand_ix.get(i.brand or "", UNKNOWN) for i in items], np.int64),
        price=np.asarray(
            [normalised_price(i.price, price_mean, price_std) for i in items], dtype=np.float32
        ),
    )


def _token_means(tables: FeatureTables, features: ItemFeatures) -> F32:
    n = len(features.item_ids)
    out = np.zeros((n, tables.dims.name), dtype=np.float32)
    ends = np.append(features.token_offsets[1:], len(features.token_ids))
    for row, (start, end) in enumerate(zip(features.token_offsets, ends, strict=True)):
        if end > start:
            out[row] = tables.tokens[features.token_ids[start:end]].mean(axis=0)
    return out


def compose(tables: FeatureTables, features: ItemFeatures, identity: F32 | None = None) -> F32:
    """Item vectors (n, dims.total) float32, L2-normalised, from metadata (+ identity rows).

    identity: (n, dims.name) float32 learned identity embeddings; None for new items (zeros).
    """
    name = _token_means(tables, features)
    if identity is not None:
        name = name + identity
    price = features.price[:, None] * tables.price_w[None, :] + tables.price_b[None, :]
    vectors = np.concatenate(
        [name, tables.category[features.category], tables.brand[features.brand], price], axis=1
    ).astype(np.float32)
    return normalise(vectors)


def normalise(vectors: F32) -> F32:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: F32 = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return out
