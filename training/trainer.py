"""The trainer: session prefixes -> next item, cosine with a temperature, shared negatives.

Each training case is (the last `max_len` items of a session prefix, the next item). The loss is
a sampled softmax over the batch's own targets plus shared uniformly drawn items, with the
log-probability correction for in-batch sampling, so popular items are not over-penalised.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..models.config import EventWeights
from ..models.features import (
    F32,
    I64,
    Dims,
    FeatureTables,
    ItemFeatures,
    build_vocabs,
    encode_items,
    price_stats,
)
from ..models.records import EVENT_TYPES, Item
from ..models.transitions import Transitions
from .data import Corpus
from .loss import shared_negatives_lse
from .model import (
    TEMPERATURE,
    ItemTower,
    ModelConfig,
    Prefixes,
    SessionEncoder,
    gather,
    unique_rows,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyperparameters. `epochs` and `lr` were chosen on validation splits (the last sessions
    of Diginetica's and Nowplaying's training sets, held out), never on a test set: `epochs` as
    many as keep training within twice the time of the earlier default of 3, and `lr` where
    both datasets stopped gaining from a larger one."""

    epochs: int = 5
    batch_size: int = 4096
    negatives: int = 512
    batch_negatives: int = 512
    bf16: bool = True
    lr: float = 0.016
    temperature: float = TEMPERATURE
    max_len: int = 20
    seed: int = 0
    threads: int = 2
    dims: Dims = field(default_factory=Dims)
    weights: EventWeights = field(default_factory=EventWeights)
    progress: bool = True


# `--fast`: a quarter of the default's negatives, in batches twice as large, for 3 epochs. The
# benchmark report times it next to the default and gensim skip-gram.
FAST: dict[str, Any] = {
    "epochs": 3,
    "negatives": 128,
    "batch_negatives": 128,
    "batch_size": 8192,
    "lr": 0.012,
}


@dataclass(frozen=True, slots=True)
class Cases:
    """Every prefix -> next-item case, without copying prefixes. flat: (m,) int64 item rows of
    all sessions end to end; flat_w: (m,) float32 their event weights; start: (n,) int64 where
    a case's session starts in flat; target_at: (n,) int64 where its target is (its prefix is
    what comes before, within the session); target: (n,) int64 item rows; target_w: (n,)
    float32 loss weights."""

    flat: I64
    flat_w: F32
    start: I64
    target_at: I64
    target: I64
    target_w: F32

    def prefixes(self, batch: I64, max_len: int) -> Prefixes:
        """The last `max_len` items before each case's target, as bags in time order."""
        end = self.target_at[batch]
        begin = np.maximum(self.start[batch], end - max_len)
        lengths = end - begin
        offsets = np.cumsum(lengths) - lengths
        at = np.repeat(begin - offsets, lengths) + np.arange(int(lengths.sum()))
        return Prefixes(
            torch.from_numpy(self.flat[at]),
            torch.from_numpy(np.repeat(end - 1, lengths) - at),
            torch.from_numpy(self.flat_w[at]),
            torch.from_numpy(offsets),
            torch.from_numpy(np.repeat(np.arange(len(batch)), lengths)),
        )


@dataclass(frozen=True, slots=True)
class TrainedModel:
    """What training produces, as arrays: everything the artifact needs, no torch objects."""

    item_ids: tuple[str, ...]
    items: list[Item]
    vectors: F32
    identity: F32
    tables: FeatureTables
    features: ItemFeatures
    position_weights: F32
    popularity: F32
    transitions: Transitions
    config: TrainConfig
    stats: dict[str, float]


def item_rows(corpus: Corpus) -> tuple[list[Item], dict[str, int]]:
    """Catalog items plus items seen only in sessions (without metadata), and their rows."""
    items = list(corpus.items)
    rows = {item.item_id: r for r, item in enumerate(items)}
    for item_id in dict.fromkeys(chain.from_iterable(s.items for s in corpus.sessions)):
        if item_id not in rows:
            rows[item_id] = len(items)
            items.append(Item(item_id))
    return items, rows


def build_cases(corpus: Corpus, rows: dict[str, int], config: TrainConfig) -> Cases:
    """Every prefix -> next-item case of every session, vectorised."""
    sessions = corpus.sessions
    lengths = np.fromiter((len(s.items) for s in sessions), np.int64, count=len(sessions))
    flat = np.array(
        list(map(rows.__getitem__, chain.from_iterable(s.items for s in sessions))), np.int64
    )
    weight_of: dict[str, float] = {t: config.weights.of(t) for t in EVENT_TYPES}
    types = chain.from_iterable(s.types for s in sessions)
    flat_w = np.array(list(map(weight_of.__getitem__, types)), dtype=np.float32)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.arange(len(flat))
    keep = (positions > starts) & (flat_w > 0)  # remove_from_cart is no positive target
    at = positions[keep]
    view = max(config.weights.view, 1e-6)
    target_w = np.maximum(flat_w[at] / view, 1.0).astype(np.float32)
    return Cases(flat, flat_w, starts[keep], at, flat[at], target_w)


def _collisions(target: I64, n_in_batch: int, column0: int) -> torch.Tensor:
    """(2, K) (case, column) pairs where a case's target is one of the in-batch negatives
    (the first `n_in_batch` targets, in columns column0...). Sorting the few negatives and
    searching every target in them costs O(B log n), not the O(B n) of comparing all pairs."""
    negatives = target[:n_in_batch]
    order = np.argsort(negatives, kind="stable")
    ranked = negatives[order]
    first = np.searchsorted(ranked, target, side="left")
    count = np.searchsorted(ranked, target, side="right") - first
    rows = np.repeat(np.arange(len(target)), count)
    # Position of each match within its case's run of equal negatives.
    within = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    columns = order[np.repeat(first, count) + within] + column0
    return torch.from_numpy(np.stack([rows, columns]))


@contextmanager
def cpu_settings() -> Iterator[None]:
    """Settings that make training steps faster on a CPU, restored after (where they can be):

    - Denormal floats flush to zero. Late in training, the exp() of far-off negatives
      underflows into denormals, whose arithmetic is many times slower.
    - glibc keeps the memory a step frees. Each step allocates and frees tensors of several
      megabytes; glibc's default returns them to the system (mmap, trim) and the next step
      takes them back page by page. Not restored; it only changes when freed memory goes
      back to the system.
    """
    _keep_freed_memory()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _keep_freed_memory() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc
    except (AttributeError, OSError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # blocks under 32 MiB come from the heap (glibc's max)
    mallopt(m_trim_threshold, 1 << 30)  # the heap gives memory back above 1 GiB free


class Trainer:
    def __init__(self, corpus: Corpus, config: TrainConfig):
        self.config = config
        torch.manual_seed(config.seed)
        torch.set_num_threads(config.threads)
        self.items, self.rows = item_rows(corpus)
        self.vocabs = build_vocabs(self.items)
        self.price_mean, self.price_std = price_stats(self.items)
        self.features = encode_items(self.items, self.vocabs, self.price_mean, self.price_std)
        mconf = ModelConfig(config.dims, config.max_len, config.temperature)
        tokens, categories, brands = self.vocabs
        self.tower = ItemTower((len(tokens), len(categories), len(brands)), self.features, mconf)
        self.encoder = SessionEncoder(mconf)
        self.cases = build_cases(corpus, self.rows, config)
        counts = np.bincount(self.cases.target, minlength=len(self.items)).astype(np.float64)
        self.q = torch.as_tensor(counts / counts.sum(), dtype=torch.float32)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.fold = True  # see ItemTower.batch_rows

    def _step(self, batch: I64, optimiser: torch.optim.Optimizer) -> float:
        """One update: positives row-wise, negatives shared by the whole batch.

        The shared negatives are uniform draws plus the targets of the first `batch_negatives`
        cases of the (shuffled) batch, which follow item popularity; subtracting log q(item)
        from every logit corrects for that (sampled softmax). A negative equal to a case's own
        target is left out.
        """
        c = self.config
        prefix = self.cases.prefixes(batch, c.max_len)
        target = torch.as_tensor(self.cases.target[batch])
        weight = torch.as_tensor(self.cases.target_w[batch])
        uniform = torch.randint(0, len(self.items), (c.negatives,), generator=self.gen)
        in_batch = target[: c.batch_negatives]
        negatives = torch.cat([uniform, in_batch])
        # Compose only the rows this batch touches; `inverse` maps cases to them.
        needed = torch.cat([prefix.rows, target, negatives])
        unique, inverse = unique_rows(needed, len(self.items))
        table, touched = self.tower.batch_rows(unique, self.fold)
        n_prefix, n_target = len(prefix.rows), len(target)
        local_target = inverse[n_prefix : n_prefix + n_target]
        local_negatives = inverse[n_prefix + n_target :]
        queries = self.encoder(table, prefix.remap(inverse[:n_prefix]))
        # Sampled-softmax correction: subtract log(expected count of each candidate).
        n_items = len(self.items)
        expected = torch.cat(
            [
                torch.full((c.negatives,), c.negatives / n_items),
                c.batch_negatives * self.q[in_batch],
            ]
        )
        pos = (queries * gather(table, local_target)).sum(1) / c.temperature - torch.log(
            c.negatives / n_items + c.batch_negatives * self.q[target]
        )
        # A case's own target among the in-batch negatives is no negative.
        excluded = _collisions(self.cases.target[batch], c.batch_negatives, c.negatives)
        lse = shared_negatives_lse(
            queries,
            gather(table, local_negatives),
            pos,
            torch.log(expected),
            excluded,
            c.temperature,
            c.bf16,
        )
        loss = ((lse - pos) * weight).sum() / weight.sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for t in touched:  # the used rows' gradients, as the dense gradient of their table
            if t.leaf.grad is not None:
                t.weight.grad = torch.zeros_like(t.weight).index_copy_(0, t.rows, t.leaf.grad)
        optimiser.step()
        return float(loss.detach())

    def train(self) -> TrainedModel:
        with cpu_settings():
            return self._train()

    def _train(self) -> TrainedModel:
        c = self.config
        params = list(self.tower.parameters()) + list(self.encoder.parameters())
        optimiser = torch.optim.Adam(params, lr=c.lr, fused=True)
        rng = np.random.default_rng(c.seed)
        n_cases = len(self.cases.target)
        steps = c.epochs * -(-n_cases // c.batch_size)
        # Linear decay to a tenth of the rate: big early steps, fine late ones.
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: 1.0 - 0.9 * min(step / max(steps, 1), 1.0)
        )
        started = time.perf_counter()
        total_pairs = 0
        loss = float("nan")
        for epoch in range(c.epochs):
            order = rng.permutation(n_cases)
            batches = [order[i : i + c.batch_size] for i in range(0, n_cases, c.batch_size)]
            bar = tqdm(
                batches,
                desc=f"epoch {epoch + 1}/{c.epochs}",
                unit="batch",
                disable=not c.progress,
                leave=False,
                mininterval=1.0,
            )
            for batch in bar:
                loss = self._step(batch, optimiser)
                schedule.step()
                total_pairs += len(batch)
                rate = total_pairs / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss:.3f}", pairs_s=f"{rate:,.0f}", refresh=False)
            log.info(
                "epoch %d/%d: loss %.4f, %.0f pairs/s",
                epoch + 1,
                c.epochs,
                loss,
                total_pairs / (time.perf_counter() - started),
            )
        seconds = time.perf_counter() - started
        return self._export(seconds, total_pairs, loss)

    def _export(self, seconds: float, pairs: int, loss: float) -> TrainedModel:
        with torch.no_grad():
            vectors = self.tower().numpy().astype(np.float32)
            t = self.tower
            tables = FeatureTables(
                dims=self.config.dims,
                token_vocab=self.vocabs[0],
                category_vocab=self.vocabs[1],
                brand_vocab=self.vocabs[2],
                tokens=t.tokens.weight.numpy().copy(),
                category=t.category.weight.numpy().copy(),
                brand=t.brand.weight.numpy().copy(),
                price_w=t.price.weight[:, 0].numpy().copy(),
                price_b=t.price.bias.numpy().copy(),
                price_mean=self.price_mean,
                price_std=self.price_std,
            )
            position = self.encoder.position_weights().numpy().astype(np.float32)
        stats = {
            "train_seconds": seconds,
            "pairs": float(pairs),
            "cases": float(len(self.cases.target)),
            "pairs_per_second": pairs / max(seconds, 1e-9),
            "final_loss": loss,
        }
        return TrainedModel(
            tuple(i.item_id for i in self.items),
            self.items,
            vectors,
            t.identity.weight.detach().numpy().copy(),
            tables,
            self.features,
            position,
            self.q.numpy().astype(np.float32),
            self._transitions(),
            self.config,
            stats,
        )

    def _transitions(self) -> Transitions:
        """What followed what, and how often sessions went back: from the same (prefix, next
        click) cases training uses."""
        c = self.cases
        latest = c.target_at - 1
        returns = Transitions.count_returns(latest, c.start, c.flat, c.target, self.config.max_len)
        return Transitions.count(c.flat[latest], c.target, len(self.items), returns)


def train(corpus: Corpus, config: TrainConfig) -> TrainedModel:
    if not corpus.sessions:
        raise ValueError("no training sessions (need sessions of at least two events)")
    started = time.perf_counter()
    trainer = Trainer(corpus, config)
    setup = time.perf_counter() - started
    log.info(
        "training set: %d cases, %d items (%.1f s)",
        len(trainer.cases.target),
        len(trainer.items),
        setup,
    )
    trained = trainer.train()
    # Setup (vocabularies, features, cases) is to this trainer what the vocabulary scan is to
    # gensim's Word2Vec(sentences): part of the time to train from sessions.
    trained.stats["setup_seconds"] = setup
    return trained
