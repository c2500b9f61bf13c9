"""The PyTorch item tower and session encoder.

Item vector = concat(name, category, brand, price) where name = identity embedding + mean of
name-token embeddings, category/brand = lookups with an "unknown" row, price = a linear map of the
normalised log price. The session vector is a weighted mean of its items' normalised vectors
(weights: learned by position from the end, times the event-type weight), so training optimises
exactly what serving ranks by: cosine(session mean, item).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.features import Dims, ItemFeatures


@dataclass(frozen=True, slots=True)
class ModelConfig:
    dims: Dims = field(default_factory=Dims)
    max_len: int = 20
    temperature: float = 0.07
    init_std: float = 0.1


class ItemTower(nn.Module):
    """Composes the (n_items, dims.total) normalised item table from features and identities."""

    token_matrix: torch.Tensor
    token_weight: torch.Tensor
    item_category: torch.Tensor
    item_brand: torch.Tensor
    item_price: torch.Tensor

    def __init__(
        self, vocab_sizes: tuple[int, int, int], features: ItemFeatures, config: ModelConfig
    ):
        """vocab_sizes: rows of the token, category and brand tables (unknown row included)."""
        super().__init__()
        n_items = len(features.item_ids)
        n_tokens, n_categories, n_brands = vocab_sizes
        d = config.dims
        self.dims = d
        self.identity = nn.Embedding(n_items, d.name)
        self.tokens = nn.Embedding(max(n_tokens, 1), d.name)
        self.category = nn.Embedding(max(n_categories, 1), d.category)
        self.brand = nn.Embedding(max(n_brands, 1), d.brand)
        self.price = nn.Linear(1, d.price)
        for emb in (self.identity, self.tokens, self.category, self.brand):
            nn.init.normal_(emb.weight, std=config.init_std)
        self.register_buffer("token_matrix", torch.as_tensor(_token_matrix(features)))
        counts = (self.token_matrix >= 0).sum(1).clamp(min=1).float()
        self.register_buffer("token_weight", (self.token_matrix >= 0).float() / counts[:, None])
        self.register_buffer("item_category", torch.as_tensor(features.category))
        self.register_buffer("item_brand", torch.as_tensor(features.brand))
        self.register_buffer("item_price", torch.as_tensor(features.price)[:, None])
        self.has_tokens = self.token_matrix.shape[1] > 0

    def rows(self, items: torch.Tensor) -> torch.Tensor:
        """Vectors of the given item rows, (len(items), dims.total) float32, L2-normalised."""
        name = self.identity(items)
        if self.has_tokens:
            tokens = self.token_matrix[items]
            name = name + F.embedding_bag(
                tokens.clamp(min=0),
                self.tokens.weight,
                mode="sum",
                per_sample_weights=self.token_weight[items],
            )
        vectors = torch.cat(
            [
                name,
                self.category(self.item_category[items]),
                self.brand(self.item_brand[items]),
                self.price(self.item_price[items]),
            ],
            dim=1,
        )
        return F.normalize(vectors, dim=1)

    def forward(self) -> torch.Tensor:
        """All item vectors, (n_items, dims.total) float32, L2-normalised."""
        return self.rows(torch.arange(self.identity.num_embeddings))


def _token_matrix(features: ItemFeatures) -> np.ndarray:
    """Ragged token lists as a right-padded (n_items, max_tokens) int64 matrix, -1 padding."""
    ends = np.append(features.token_offsets[1:], len(features.token_ids))
    counts = ends - features.token_offsets
    width = int(counts.max()) if len(counts) else 0
    matrix = np.full((len(counts), width), -1, dtype=np.int64)
    for row, (start, end) in enumerate(zip(features.token_offsets, ends, strict=True)):
        matrix[row, : end - start] = features.token_ids[start:end]
    return matrix


class SessionEncoder(nn.Module):
    """Weighted mean of a prefix's item vectors; weights learned by distance from the end."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(config.max_len))

    def position_weights(self) -> torch.Tensor:
        return F.softplus(self.position + 0.5413)  # softplus(0.5413) == 1: start as a plain mean

    def forward(self, table: torch.Tensor, prefix: Prefixes) -> torch.Tensor:
        """Normalised session queries, (n_bags, dim), from rows of `table`."""
        w = self.position_weights()[prefix.distance] * prefix.event_w
        summed = F.embedding_bag(
            prefix.rows, table, prefix.offsets, mode="sum", per_sample_weights=w
        )
        return F.normalize(summed, dim=1)


@dataclass(frozen=True, slots=True)
class Prefixes:
    """A batch of session prefixes as bags: rows (N,) int64 into the item table, distance (N,)
    int64 from the end of the prefix (0 = last item), event_w (N,) float32, offsets (B,) int64."""

    rows: torch.Tensor
    distance: torch.Tensor
    event_w: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def from_padded(cls, prefix: np.ndarray, event_w: np.ndarray) -> Prefixes:
        """From right-aligned (B, L) rows with -1 padding and (B, L) event weights."""
        mask = prefix >= 0
        length = prefix.shape[1]
        distance = np.broadcast_to(np.arange(length - 1, -1, -1), prefix.shape)[mask]
        counts = mask.sum(1)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return cls(
            torch.as_tensor(prefix[mask]),
            torch.as_tensor(distance),
            torch.as_tensor(event_w[mask]),
            torch.as_tensor(offsets),
        )

    def remap(self, rows: torch.Tensor) -> Prefixes:
        return Prefixes(rows, self.distance, self.event_w, self.offsets)
