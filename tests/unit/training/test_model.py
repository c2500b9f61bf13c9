"""The torch model, the trainer and the artifact: equal compositions, a known answer, no pickle."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sessionrec.models.artifact import (
    ArtifactError,
    current_version,
    load_index,
    load_model,
    set_current,
)
from sessionrec.models.config import EventWeights
from sessionrec.models.features import compose, encode_items
from sessionrec.models.records import Item
from sessionrec.models.session import SessionConfig
from sessionrec.models.shop import make_shop
from sessionrec.training.data import Corpus, TrainSession, corpus_from_events
from sessionrec.training.evaluate import cases_from_sessions, evaluate, recommender_for
from sessionrec.training.export import export
from sessionrec.training.trainer import TrainConfig, Trainer, train

FAST = TrainConfig(
    epochs=4, batch_size=128, negatives=64, batch_negatives=32, lr=0.01, progress=False
)


@pytest.fixture(scope="module")
def shop_corpus() -> Corpus:
    shop = make_shop(seed=3, users=150)
    return corpus_from_events(list(shop.events), shop.items, SessionConfig(), Counter())


def test_numpy_composition_equals_torch_forward(shop_corpus: Corpus) -> None:
    trainer = Trainer(shop_corpus, FAST)
    trained = trainer.train()
    with torch.no_grad():
        torch_vectors = trainer.tower().numpy()
    numpy_vectors = compose(trained.tables, trained.features, trained.identity)
    assert np.abs(torch_vectors - numpy_vectors).max() < 1e-5


def test_new_item_is_composed_from_metadata_without_torch(shop_corpus: Corpus) -> None:
    trained = train(shop_corpus, FAST)
    t = trained.tables
    vocabs = (t.token_vocab, t.category_vocab, t.brand_vocab)
    twin = next(i for i in trained.items if i.category == "tents")
    new = Item("new", name=twin.name, category="tents", brand=twin.brand, price=twin.price)
    other = next(i for i in trained.items if i.category == "coffee")
    vectors = compose(t, encode_items([new, twin, other], vocabs, t.price_mean, t.price_std))
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])


def test_known_answer_categories_cluster(shop_corpus: Corpus) -> None:
    """Sessions stay within a category mostly: neighbours should share it."""
    trained = train(shop_corpus, FAST)
    cats = np.array([i.category for i in trained.items])
    sims = trained.vectors @ trained.vectors.T
    np.fill_diagonal(sims, -1)
    nearest = sims.argmax(axis=1)
    assert (cats[nearest] == cats).mean() > 0.8


def test_training_is_deterministic(shop_corpus: Corpus) -> None:
    a = train(shop_corpus, FAST).vectors
    b = train(shop_corpus, FAST).vectors
    assert np.array_equal(a, b)


def test_holdout_recall_beats_chance(shop_corpus: Corpus) -> None:
    sessions = shop_corpus.sessions
    trained = train(Corpus(sessions[:-60], shop_corpus.items), FAST)
    rec = recommender_for(
        trained.item_ids, trained.vectors, FAST.dims, trained.position_weights, EventWeights()
    )
    result = evaluate(rec, cases_from_sessions(sessions[-60:]))
    assert result["recall_at_20"] > 3 * 100 * 20 / len(trained.item_ids)


def test_artifact_round_trip_and_current_switch(shop_corpus: Corpus, tmp_path: Path) -> None:
    trained = train(shop_corpus, FAST)
    path, index = export(trained, tmp_path, {"data": "shop"}, version="v1")
    assert current_version(tmp_path) == "v1"
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))
    model = load_model(path)
    assert model.item_ids == trained.item_ids
    np.testing.assert_array_equal(model.vectors, trained.vectors)
    loaded = load_index(path, model)
    labels, _ = loaded.search(model.vectors[:5], 1)
    assert labels[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert len(index) == len(trained.item_ids)
    assert model.transitions is not None and len(model.transitions.successors) > 0
    np.testing.assert_array_equal(model.transitions.share, trained.transitions.share)
    assert len(model.transitions.returns) == FAST.max_len - 1
    np.testing.assert_array_equal(model.transitions.returns, trained.transitions.returns)
    # A version saved before returns were counted loads with none (no bonus) ...
    (path / "transitions_returns.npy").unlink()
    _resign(path)
    older = load_model(path).transitions
    assert older is not None and len(older.returns) == 0
    # ... and one saved before transitions existed, without them.
    for name in ("indptr", "successors", "share"):
        (path / f"transitions_{name}.npy").unlink()
    _resign(path)
    assert load_model(path).transitions is None


def test_corrupt_or_incomplete_artifacts_are_refused(shop_corpus: Corpus, tmp_path: Path) -> None:
    trained = train(shop_corpus, FAST)
    path, _ = export(trained, tmp_path, {}, version="v1")
    (path / "identity.npy").unlink()
    with pytest.raises(ArtifactError, match=r"model v1: identity\.npy is missing"):
        load_model(path)
    path, _ = export(trained, tmp_path, {}, version="v2")
    (path / "vectors.npy").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"vectors\.npy does not match its checksum"):
        load_model(path)
    _resign(path)  # checksums that match: the array itself is refused
    with pytest.raises(ArtifactError, match=r"vectors\.npy is unreadable"):
        load_model(path)
    with pytest.raises(ArtifactError, match="no model version"):
        set_current(tmp_path, "v404")


def _resign(path: Path) -> None:
    """Write the manifest's checksums anew, as if the files had been exported that way."""
    from sessionrec.models.artifact import _fingerprint

    manifest = json.loads((path / "manifest.json").read_text())
    if not isinstance(manifest, dict):
        return
    manifest["files"] = {
        f.name: _fingerprint(f) for f in sorted(path.iterdir()) if f.name != "manifest.json"
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


def _edit_json(path: Path, name: str, change: Any) -> None:
    data = json.loads((path / name).read_text())
    (path / name).write_text(json.dumps(change(data)))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "manifest.json").write_text('{"format": 1}'), "manifest 'version' is None"),
        (lambda p: (p / "manifest.json").write_text("[]"), "manifest.json is not an object"),
        (lambda p: (p / "vocab.json").write_text("[]"), "vocab.json is not an object"),
        (lambda p: (p / "items.json").write_text('{"a": 1}'), "items.json is not a list"),
        (
            lambda p: _edit_json(p, "manifest.json", lambda m: {**m, "index": {"m": "abc"}}),
            "manifest 'index'",
        ),
        (
            lambda p: _edit_json(p, "vocab.json", lambda v: {**v, "dims": {"name": -1}}),
            "vocab.json 'dims'",
        ),
        (
            lambda p: np.save(p / "popularity.npy", np.ones(10_000, np.float32)),
            r"popularity\.npy has shape \(10000,\)",
        ),
        (
            lambda p: np.save(p / "tokens.npy", np.ones((1, 32), np.float32)),
            r"tokens\.npy has shape \(1, 32\)",
        ),
        (
            lambda p: np.save(
                p / "item_brand.npy", np.full(np.load(p / "item_brand.npy").shape, 10**6)
            ),
            r"item_brand\.npy refers to rows outside",
        ),
        (lambda p: (p / "index.hnsw").write_bytes(b"\x00" * 64), "index.hnsw is unusable"),
        (
            lambda p: np.save(
                p / "transitions_successors.npy",
                np.load(p / "transitions_successors.npy") + 10**6,
            ),
            "its transitions are unusable: transitions to items outside the model",
        ),
        (
            lambda p: np.save(p / "transitions_indptr.npy", np.zeros(3, np.int64)),
            r"transitions_indptr\.npy has 3 entries",
        ),
        (
            lambda p: (p / "transitions_share.npy").unlink(),
            "it has some transition arrays but not transitions_share",
        ),
        (
            lambda p: np.save(p / "transitions_returns.npy", np.full(19, 1.5, np.float32)),
            "return shares that are not a list of numbers from 0 to 1",
        ),
    ],
)
def test_an_artifact_of_the_wrong_shape_is_refused_with_the_reason(
    shop_corpus: Corpus, tmp_path: Path, damage: Any, reason: str
) -> None:
    trained = train(shop_corpus, FAST)
    path, _ = export(trained, tmp_path, {}, version="v1")
    damage(path)
    _resign(path)
    with pytest.raises(ArtifactError, match=reason):
        load_index(path, load_model(path))


def test_a_corrupt_index_graph_is_refused_without_crashing_the_process(
    shop_corpus: Corpus, tmp_path: Path
) -> None:
    """Mutated graphs can crash the process that searches them: the check runs in a child."""
    trained = train(shop_corpus, FAST)
    path, _ = export(trained, tmp_path, {}, version="v1")
    model = load_model(path)
    original = (path / "index.hnsw").read_bytes()
    rng = np.random.default_rng(3)
    refused = 0
    for _ in range(12):
        data = bytearray(original)
        for at in rng.integers(0, len(data), 40):
            data[at] = int(rng.integers(0, 256))
        (path / "index.hnsw").write_bytes(bytes(data))
        try:
            load_index(path, model)
        except ArtifactError as exc:
            assert "index.hnsw is unusable" in str(exc)
            refused += 1
    assert refused > 0  # and this process is still here


def test_one_bad_link_anywhere_in_the_graph_is_refused(shop_corpus: Corpus, tmp_path: Path) -> None:
    """Every link is checked, not a sample: one neighbour id past the end (level 0) or one
    link to an element missing from its level (upper levels) refuses the version."""
    from sessionrec.models.graph import _HEADER, GraphError, check_graph

    trained = train(shop_corpus, FAST)
    path, _ = export(trained, tmp_path, {}, version="v1")
    model, file = load_model(path), path / "index.hnsw"
    n, dim = len(model.item_ids), model.vectors.shape[1]
    original = file.read_bytes()
    check_graph(file, dim, n)  # a sound graph passes
    h = np.frombuffer(original[: _HEADER.itemsize], dtype=_HEADER)[0]
    per_element, max_m = int(h["size_per_element"]), int(h["max_m"])
    last = _HEADER.itemsize + (n - 1) * per_element  # the last element's level-0 block
    data = bytearray(original)
    data[last : last + 2] = (1).to_bytes(2, "little")
    data[last + 4 : last + 8] = (n + 7).to_bytes(4, "little")
    file.write_bytes(bytes(data))
    with pytest.raises(GraphError, match=f"element {n - 1} links to an element that does not"):
        check_graph(file, dim, n)
    with pytest.raises(ArtifactError, match=r"index\.hnsw is unusable .*does not exist"):
        load_index(path, model)
    # An upper-level link to an element that has no upper level.
    at = _HEADER.itemsize + n * per_element
    sizes, upper = [], {}
    for element in range(n):
        size = int.from_bytes(original[at : at + 4], "little")
        sizes.append(size)
        if size:
            upper[element] = at + 4
        at += 4 + size
    ground = sizes.index(0)
    element, block = next(iter(upper.items()))
    data = bytearray(original)
    data[block : block + 2] = (1).to_bytes(2, "little")
    data[block + 4 : block + 8] = ground.to_bytes(4, "little")
    assert max_m >= 1
    file.write_bytes(bytes(data))
    with pytest.raises(GraphError, match=f"element {element} links to an element missing"):
        check_graph(file, dim, n)


def test_trainer_refuses_empty_corpus() -> None:
    with pytest.raises(ValueError, match="no training sessions"):
        train(Corpus([], []), FAST)


def test_remove_from_cart_is_not_a_positive_target() -> None:
    from sessionrec.training.trainer import build_cases, item_rows

    corpus = Corpus([TrainSession(("a", "b", "c"), ("view", "remove_from_cart", "buy"))], [])
    _, rows = item_rows(corpus)
    cases = build_cases(corpus, rows, FAST)
    assert cases.target.tolist() == [rows["c"]]
    assert cases.target_w.tolist() == [5.0]  # buy (1.0) weighs five views (0.2)


def test_case_prefixes_are_the_last_items_before_each_target() -> None:
    from sessionrec.training.trainer import build_cases, item_rows

    sessions = [
        TrainSession(("a", "b", "c", "d", "e"), ("view", "cart", "view", "view", "buy")),
        TrainSession(("f", "g"), ("view", "view")),
        TrainSession(("h", "a", "b"), ("view", "remove_from_cart", "view")),
    ]
    corpus = Corpus(sessions, [])
    _, rows = item_rows(corpus)
    cases = build_cases(corpus, rows, FAST)
    max_len = 3
    prefix = cases.prefixes(np.arange(len(cases.target)), max_len)
    expected: list[tuple[list[int], list[int], list[float], int]] = []
    for s in sessions:
        for t in range(1, len(s.items)):
            if s.types[t] == "remove_from_cart":
                continue
            window = range(max(0, t - max_len), t)
            expected.append(
                (
                    [rows[s.items[j]] for j in window],
                    [t - 1 - j for j in window],
                    [EventWeights().of(s.types[j]) for j in window],
                    rows[s.items[t]],
                )
            )
    bags = np.split(np.arange(len(prefix.rows)), prefix.offsets[1:].numpy())
    got = [
        (
            prefix.rows[b].tolist(),
            prefix.distance[b].tolist(),
            prefix.event_w[b].tolist(),
            int(target),
        )
        for b, target in zip(bags, cases.target, strict=True)
    ]
    assert got == [(r, d, pytest.approx(w), t) for r, d, w, t in expected]


def test_training_composition_equals_the_exported_one(shop_corpus: Corpus) -> None:
    trainer = Trainer(shop_corpus, FAST)
    items = torch.tensor([0, 2, 3, 7, 11])
    batch, touched = trainer.tower.batch_rows(items)
    assert torch.allclose(batch, trainer.tower.rows(items), atol=1e-6)
    (batch * torch.randn_like(batch)).sum().backward()
    # Gradients reach exactly the embedding rows the items use, and nothing else.
    tower = trainer.tower
    assert {id(t.weight) for t in touched} <= {id(tower.identity.weight), id(tower.tokens.weight)}
    assert all(t.leaf.grad is not None and t.leaf.grad.shape == t.leaf.shape for t in touched)
    assert trainer.tower.category.weight.grad is not None


def _without_brand_and_price(corpus: Corpus) -> Corpus:
    """The corpus with its items stripped of brand and price: those spaces are then the same
    for every item."""
    from dataclasses import replace as dc_replace

    return Corpus(corpus.sessions, [dc_replace(i, brand=None, price=None) for i in corpus.items])


def test_folded_rows_keep_every_product_of_the_full_ones(shop_corpus: Corpus) -> None:
    trainer = Trainer(_without_brand_and_price(shop_corpus), FAST)
    tower = trainer.tower
    assert tower.constant == {"category": False, "brand": True, "price": True}
    items = torch.tensor([0, 2, 3, 7, 11])
    folded, _ = tower.batch_rows(items)
    full = tower.rows(items).detach()
    assert folded.shape == (len(items), 32 + 32 + 1)
    assert torch.allclose(folded[:, :64], full[:, :64], atol=1e-6)
    assert torch.allclose(folded @ folded.T, full @ full.T, atol=1e-6)
    # A weighted sum of rows (a session query) keeps its products too.
    w = torch.tensor([0.5, 1.0, 2.0, 0.0, 1.5])
    assert torch.allclose((w @ folded) @ folded.T, (w @ full) @ full.T, atol=1e-5)
    assert torch.allclose((w @ folded).norm(), (w @ full).norm(), atol=1e-5)


def test_folding_constant_spaces_keeps_the_loss_and_gradients(shop_corpus: Corpus) -> None:
    from dataclasses import replace as dc_replace

    corpus = _without_brand_and_price(shop_corpus)
    config = dc_replace(FAST, bf16=False)
    folded, plain = Trainer(corpus, config), Trainer(corpus, config)
    plain.fold = False
    batch = np.arange(min(128, len(folded.cases.target)))
    grads = []
    for trainer in (folded, plain):
        params = list(trainer.tower.parameters()) + list(trainer.encoder.parameters())
        loss = trainer._step(batch, torch.optim.SGD(params, lr=0.0))
        grads.append((loss, [p.grad.clone() for p in params if p.grad is not None]))
    (loss_f, grad_f), (loss_p, grad_p) = grads
    assert abs(loss_f - loss_p) < 1e-5
    # Brand and price get their gradients through the folded column.
    assert len(grad_f) == len(grad_p) == len(list(folded.tower.parameters())) + 1
    for a, b in zip(grad_f, grad_p, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_bag_sums_and_their_gradients_equal_embedding_bag() -> None:
    from torch.nn import functional as F

    from sessionrec.training.model import BagSum, Prefixes

    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([3, 1, 4, 2])
    rows = torch.randint(0, 9, (int(lengths.sum()),), generator=gen)
    offsets = torch.cumsum(lengths, 0) - lengths
    bags = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    prefix = Prefixes(rows, torch.zeros_like(rows), torch.ones(len(rows)), offsets, bags)
    grad = torch.randn(len(lengths), 5, generator=gen)
    results = []
    for ours in (True, False):
        table = torch.randn(9, 5, generator=torch.Generator().manual_seed(1)).requires_grad_()
        w = torch.rand(len(rows), generator=torch.Generator().manual_seed(2)).requires_grad_()
        if ours:
            out = BagSum.apply(table, w, prefix)
        else:
            out = F.embedding_bag(rows, table, offsets, mode="sum", per_sample_weights=w)
        out.backward(grad)
        results.append((out.detach(), table.grad, w.grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_training_leaves_denormal_floats_as_they_were(shop_corpus: Corpus) -> None:
    # Training flushes denormals to zero for speed (training.trainer.cpu_settings); the code
    # that runs after it in the same process (evaluation, export) gets exact arithmetic back.
    train(shop_corpus, FAST)
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert float(tiny * 1.0) > 0.0
