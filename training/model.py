"""The PyTorch item tower and session encoder.

Item vector = concat(name, category, brand, price) where name = identity embedding + mean of
name-token embeddings, category/brand = lookups with an "unknown" row, price = a linear map of the
normalised log price. The session vector is a weighted mean of its items' normalised vectors
(weights: learned by position from the end, times the event-type weight), so training optimises
exactly what serving ranks by: cosine(session mean, item).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..models.features import Dims, ItemFeatures

# Cosine over this before the softmax: chosen on the validation splits (the last 10 % of the
# training sessions) of both datasets, by the sum of their Recall@20 and MRR@20.
TEMPERATURE = 0.085


@dataclass(frozen=True, slots=True)
class ModelConfig:
    dims: Dims = field(default_factory=Dims)
    max_len: int = 20
    temperature: float = TEMPERATURE
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
        # Spaces whose feature is the same for every item (no brand anywhere in the catalog,
        # say): training folds them into one column (see batch_rows).
        self.constant = {
            "category": len(np.unique(features.category)) <= 1,
            "brand": len(np.unique(features.brand)) <= 1,
            "price": len(np.unique(features.price)) <= 1,
        }

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

    def batch_rows(
        self, items: torch.Tensor, fold: bool = True
    ) -> tuple[torch.Tensor, list[Touched]]:
        """`rows(items)` for a training step, composed from leaf copies of only the rows of the
        large tables (identities, name tokens) it uses, so that backward never scatters into
        whole tables. `items` must be distinct. Returns the vectors and, per large table, the
        rows used with their leaf (which holds their gradient after backward).

        With `fold`, the spaces whose feature is the same for every item (`constant`) come as
        one last column instead of theirs. Those spaces add the same vector c to every item,
        so the column |c| gives every row the same norm, and every product of two rows (or of
        weighted sums of rows, as session queries are) the same value as the full vectors do.
        |c| is computed as c . u with u = c / |c| held constant, whose gradient is u, the
        gradient of |c|: the loss and every gradient are those of the full vectors, with the
        work of fewer columns."""
        touched: list[Touched] = []

        # `items` are distinct, so their identity rows are the leaf itself.
        name = torch.index_select(self.identity.weight.detach(), 0, items).requires_grad_()
        touched.append(Touched(self.identity.weight, items, name))
        if self.has_tokens:
            tokens = self.token_matrix[items].clamp(min=0)
            used, local = unique_rows(tokens.reshape(-1), self.tokens.num_embeddings)
            part = torch.index_select(self.tokens.weight.detach(), 0, used).requires_grad_()
            touched.append(Touched(self.tokens.weight, used, part))
            name = name + F.embedding_bag(
                local.view(tokens.shape),
                part,
                mode="sum",
                per_sample_weights=self.token_weight[items],
            )
        folded = [space for space, same in self.constant.items() if fold and same]
        parts = [name] + [self._space(s, items) for s in self.constant if s not in folded]
        if folded:
            c = torch.cat([self._space(space, items[:1]) for space in folded], dim=1)[0]
            u = normalize(c.detach()[None])[0]
            parts.append((c @ u).expand(len(items), 1))
        return normalize(torch.cat(parts, dim=1)), touched

    def _space(self, space: str, items: torch.Tensor) -> torch.Tensor:
        """The category, brand or price part of the given items' vectors. The small tables are
        gathered from whole (a cheap dense gradient)."""
        if space == "category":
            return gather(self.category.weight, self.item_category[items])
        if space == "brand":
            return gather(self.brand.weight, self.item_brand[items])
        out: torch.Tensor = self.price(self.item_price[items])
        return out


class Gather(torch.autograd.Function):
    """`table[index]` along rows, with index_select forward and index_add backward: on a CPU
    both are several times faster than advanced indexing and embedding's backward."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return torch.index_select(table, 0, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (index,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.rows, *grad.shape[1:]))
        return out.index_add_(0, index, grad), None


class Normalize(torch.autograd.Function):
    """Rows scaled to unit length, as F.normalize(x, dim=1), with a backward of four passes
    (F.normalize's composed backward makes about twice as many)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_(min=1e-12)
        y: torch.Tensor = x / norm
        ctx.save_for_backward(y, norm)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        y, norm = ctx.saved_tensors
        along = (grad * y).sum(dim=1, keepdim=True)
        out: torch.Tensor = (grad - y * along).div_(norm)
        return out


def normalize(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = Normalize.apply(x)  # type: ignore[no-untyped-call]  # untyped in torch's stubs
    return out


def gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = Gather.apply(table, index)  # type: ignore[no-untyped-call]  # untyped in torch's stubs
    return out


@dataclass(frozen=True, slots=True)
class Touched:
    """Rows of an embedding table one training step used: `leaf` holds their values and, after
    backward, their gradient; `weight` is the whole table they were copied from."""

    weight: torch.Tensor
    rows: torch.Tensor
    leaf: torch.Tensor


def unique_rows(values: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct values in [0, size) and each value's position among them.

    A marker array over the table (O(size)) is several times faster than sorting for the
    batch sizes training uses."""
    v = values.numpy()
    seen = np.zeros(size, dtype=bool)
    seen[v] = True
    used = np.flatnonzero(seen)
    position = np.empty(size, dtype=np.int64)
    position[used] = np.arange(len(used))
    return torch.from_numpy(used), torch.from_numpy(position[v])


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
        summed: torch.Tensor = BagSum.apply(table, w, prefix)  # type: ignore[no-untyped-call]  # untyped in torch's stubs
        return normalize(summed)


class BagSum(torch.autograd.Function):
    """Weighted sums of bags of table rows, as F.embedding_bag(mode="sum",
    per_sample_weights=w), with a backward of row gathers and one index_add instead of
    embedding_bag's, which sorts the rows first (docs/development.md gives the measured gain)."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, w: torch.Tensor, prefix: Prefixes) -> torch.Tensor:
        ctx.save_for_backward(table, w)
        ctx.prefix = prefix
        return F.embedding_bag(prefix.rows, table, prefix.offsets, mode="sum", per_sample_weights=w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        table, w = ctx.saved_tensors
        prefix: Prefixes = ctx.prefix
        per_row = torch.index_select(grad, 0, prefix.bags)
        grad_w = (per_row * torch.index_select(table, 0, prefix.rows)).sum(1)
        grad_table = table.new_zeros(table.shape).index_add_(0, prefix.rows, per_row * w[:, None])
        return grad_table, grad_w, None


@dataclass(frozen=True, slots=True)
class Prefixes:
    """A batch of session prefixes as bags: rows (N,) int64 into the item table, distance (N,)
    int64 from the end of the prefix (0 = last item), event_w (N,) float32, offsets (B,) int64
    where each bag starts, bags (N,) int64 the bag of each row."""

    rows: torch.Tensor
    distance: torch.Tensor
    event_w: torch.Tensor
    offsets: torch.Tensor
    bags: torch.Tensor

    def remap(self, rows: torch.Tensor) -> Prefixes:
        return Prefixes(rows, self.distance, self.event_w, self.offsets, self.bags)
