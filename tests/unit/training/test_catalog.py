"""Catalog upserts on a served model: prepared off the event loop, staged cheaply, linked into
the graph in the searcher thread after the searches before them."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sessionrec.models.config import EventWeights, Settings
from sessionrec.models.records import Item
from sessionrec.models.serving import CatalogChange, ServingModel, load_serving
from sessionrec.models.session import SessionConfig
from sessionrec.models.shop import make_shop
from sessionrec.stream import catalog
from sessionrec.stream.pipeline import Pipeline
from sessionrec.training.data import corpus_from_events
from sessionrec.training.export import export
from sessionrec.training.trainer import TrainConfig, train

FAST = TrainConfig(epochs=2, batch_size=128, negatives=32, batch_negatives=16, progress=False)


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Item]]:
    shop = make_shop(seed=5, users=80)
    corpus = corpus_from_events(list(shop.events), shop.items, SessionConfig(), Counter())
    path, _ = export(train(corpus, FAST), tmp_path_factory.mktemp("models"), {}, version="v1")
    return path, list(shop.items)


def _served(version: tuple[Path, list[Item]]) -> ServingModel:
    return load_serving(version[0], EventWeights())


def _new_items(like: list[Item], n: int) -> list[Item]:
    return [
        Item(f"new-{i}", like[i % len(like)].name, like[i % len(like)].category, price=9.0)
        for i in range(n)
    ]


def test_a_model_taking_its_own_catalog_moves_only_what_changed(
    version: tuple[Path, list[Item]],
) -> None:
    served = _served(version)
    catalog = version[1]
    trained = [i for i in catalog if i.item_id in served.index.labels]
    renamed = Item(trained[0].item_id, "something else entirely", "other", price=1.0)
    change = served.prepare([*trained, renamed, *_new_items(catalog, 3)], only_changed=True)
    moved = {item.item_id for item, m in zip(change.live, change.moved, strict=True) if m}
    assert moved == {trained[0].item_id, "new-0", "new-1", "new-2"}
    before = served.index.vectors[served.index.labels[trained[1].item_id]].copy()
    served.apply_items([*trained, renamed], only_changed=True)
    np.testing.assert_array_equal(
        served.index.vectors[served.index.labels[trained[1].item_id]], before
    )
    assert served.metadata.categories[served.index.labels[trained[0].item_id]] == "other"


def test_staged_items_are_found_only_once_linked(version: tuple[Path, list[Item]]) -> None:
    served = _served(version)
    items = _new_items(version[1], 5)
    change = served.prepare([*items, Item(version[1][0].item_id, deleted=True)])
    live_before = len(served.index)
    staged = served.stage(change, 0, len(change))
    assert len(served.index) == live_before - 1  # the deletion counts at once
    query = change.vectors[:1]
    found, _ = served.index.search(query, 3)
    assert served.index.labels["new-0"] not in found[0].tolist()
    served.index.link(staged)
    assert len(served.index) == live_before - 1 + 5
    found, _ = served.index.search(query, 3)
    assert served.index.labels["new-0"] in found[0].tolist()
    assert (
        not served.index.search(query, len(served.index))[0]
        .tolist()
        .count(served.index.labels[version[1][0].item_id])
    )


class _Updates:
    def __init__(self, model: ServingModel | None, changes: list[CatalogChange]) -> None:
        self.model, self.changes = model, changes

    def take(self) -> tuple[ServingModel | None, list[CatalogChange]]:
        taken = self.model, self.changes
        self.model, self.changes = None, []
        return taken


async def _linked(pipeline: Pipeline) -> None:
    for _ in range(300):
        if not pipeline.feed.busy():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the catalog was not linked")


def test_a_catalog_burst_is_linked_in_slices_behind_the_searches(
    version: tuple[Path, list[Item]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop stages a slice and goes on; the searcher thread links it after the search
    that was running, then the next slice follows, until the burst is in."""
    monkeypatch.setattr(catalog, "SLICE", 4)
    served = _served(version)
    burst = _new_items(version[1], 10)
    pipeline = Pipeline(Settings(metrics_port=0), served, {})
    pipeline.connect(outbox=None, updates=_Updates(None, [served.prepare(burst)]))  # type: ignore[arg-type]
    gate = threading.Event()
    live_before = len(served.index)

    async def scenario() -> list[int]:
        searcher = pipeline.feed.searcher = ThreadPoolExecutor(1)
        searching = asyncio.get_running_loop().run_in_executor(searcher, gate.wait, 10)
        pipeline.between_batches()  # returns at once: the first slice waits for the search
        seen = [len(served.index) - live_before]
        await asyncio.sleep(0.05)
        seen.append(len(served.index) - live_before)
        gate.set()
        await searching
        await _linked(pipeline)
        seen.append(len(served.index) - live_before)
        searcher.shutdown()
        return seen

    assert asyncio.run(scenario()) == [0, 0, 10]
    assert pipeline.catalog == 3  # one step per slice: answers kept before are not served
    labels = [served.index.labels[i.item_id] for i in burst]
    found, _ = served.index.search(served.index.vectors[labels], 1)
    assert found[:, 0].tolist() == labels  # each one in the graph, its own nearest


def test_a_new_model_is_served_once_it_holds_the_whole_catalog(
    version: tuple[Path, list[Item]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its catalog goes into its index behind the searches of the model still served; upserts
    queued for that model are dropped (the new one has them), later ones follow it."""
    monkeypatch.setattr(catalog, "SLICE", 2)
    old, new = _served(version), _served(version)
    items = _new_items(version[1], 6)
    pipeline = Pipeline(Settings(metrics_port=0), old, {})
    pipeline.feed.queue.append((old.prepare(items[:1]), 0))  # not linked yet
    whole = new.prepare([*version[1], *items[:5]], only_changed=True)
    later = new.prepare(items[5:])
    pipeline.connect(outbox=None, updates=_Updates(new, [whole, later]))  # type: ignore[arg-type]
    gate = threading.Event()

    async def scenario() -> list[object]:
        searcher = pipeline.feed.searcher = ThreadPoolExecutor(1)
        searching = asyncio.get_running_loop().run_in_executor(searcher, gate.wait, 10)
        pipeline.between_batches()
        seen: list[object] = [pipeline.serving is old]
        gate.set()
        await searching
        await _linked(pipeline)
        seen.append(pipeline.serving is new)
        searcher.shutdown()
        return seen

    assert asyncio.run(scenario()) == [True, True]
    assert int(whole.moved.sum()) == 5  # the model's own items kept their place
    assert "new-0" not in old.index.labels
    assert all(pipeline.live(item.item_id) for item in items)
    assert pipeline.counters["model_swaps"] == 1


def test_a_model_taking_an_empty_catalog_or_deletions_only_is_served(
    version: tuple[Path, list[Item]],
) -> None:
    """No catalog upserts yet (a fresh topic), or only deletions: nothing to compose."""
    old, new = _served(version), _served(version)
    gone = version[1][0].item_id
    for upserts in ([], [Item(gone, deleted=True)]):
        pipeline = Pipeline(Settings(metrics_port=0), old, {})
        whole = new.prepare(upserts, only_changed=True)
        pipeline.connect(outbox=None, updates=_Updates(new, [whole]))  # type: ignore[arg-type]
        pipeline.between_batches()
        assert pipeline.serving is new
    assert not pipeline.live(gone) and pipeline.live(version[1][1].item_id)


def test_the_watcher_composes_a_large_catalog_in_slices_with_rests(
    version: tuple[Path, list[Item]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionrec.stream import watch

    served = _served(version)
    catalog = version[1]
    items = [*catalog, *_new_items(catalog, 300), catalog[0]]  # one item sent twice
    monkeypatch.setattr(watch, "PREPARE_SLICE", 64)
    watcher = watch.Watcher(Settings(metrics_port=0), version[0], served)
    rests: list[float] = []
    monkeypatch.setattr(watcher._stop, "wait", lambda s: rests.append(s) or False)
    paced = watcher._paced(served, items, only_changed=True)
    whole = served.prepare(items, only_changed=True)
    assert [i.item_id for i in paced.live] == [i.item_id for i in whole.live]
    np.testing.assert_array_equal(paced.vectors, whole.vectors)
    np.testing.assert_array_equal(paced.moved, whole.moved)
    assert paced.received == whole.received == len(items) and paced.whole
    assert len(rests) == -(-len(whole.items) // 64) - 1 and all(s > 0 for s in rests)
