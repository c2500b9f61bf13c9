from __future__ import annotations

import numpy as np
import pytest

from sessionrec.models.config import EventWeights, Limits, QueryDefaults
from sessionrec.models.features import Dims
from sessionrec.models.filters import Filters, filters_from
from sessionrec.models.index import ItemIndex, top_k
from sessionrec.models.intent import cluster
from sessionrec.models.ranking import Recommender, Request, params_from


def _world(exact: bool = False) -> Recommender:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 100)).astype(np.float32)
    vectors = np.concatenate([c + 0.2 * rng.normal(size=(25, 100)) for c in centres])
    ids = [f"c{i // 25}-{i % 25}" for i in range(100)]
    index = ItemIndex.build(ids, vectors.astype(np.float32), exact=exact)
    return Recommender(index, Dims(), np.ones(20, dtype=np.float32), EventWeights())


def test_index_recall_against_brute_force() -> None:
    # Clustered like trained embeddings (uniform random 100-d points are no real catalog).
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(60, 100))
    vectors = centres[rng.integers(60, size=3000)] + 0.5 * rng.normal(size=(3000, 100))
    vectors = vectors.astype(np.float32)
    ids = [str(i) for i in range(3000)]
    approx = ItemIndex.build(ids, vectors)
    exact = approx.exact_twin()
    queries = centres[rng.integers(60, size=50)] + 0.5 * rng.normal(size=(50, 100))
    queries = queries.astype(np.float32)
    a, _ = approx.search(queries, 20)
    e, _ = exact.search(queries, 20)
    recall = np.mean([len(set(x) & set(y)) / 20 for x, y in zip(a, e, strict=True)])
    assert recall > 0.9


@pytest.mark.parametrize("n, k", [(5000, 20), (5000, 220), (43, 20), (300, 1), (40, 40)])
def test_top_k_equals_a_full_sort(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    block = rng.normal(size=(64, n)).astype(np.float32)
    block[:, rng.integers(n, size=n // 3)] = -np.inf  # deleted items
    block[0] = 0.5  # a row of ties: lower columns first
    labels, scores = top_k(block, k)
    order = np.argsort(-block, axis=1, kind="stable")[:, :k]
    assert np.array_equal(labels, order)
    assert np.array_equal(scores, np.take_along_axis(block, order, axis=1))


def test_index_handles_upsert_delete_and_empty() -> None:
    index = ItemIndex(4)
    labels, scores = index.search(np.ones((1, 4), np.float32), 5)
    assert labels.shape == (1, 0)
    index.upsert(["a", "b"], np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    index.upsert(["a"], np.array([[0, 0, 1, 0]], np.float32))
    assert index.delete("b") and not index.delete("b")
    labels, scores = index.search(np.array([[0, 0, 1, 0]], np.float32), 5)
    assert [index.ids[i] for i in labels[0]] == ["a"] and scores[0, 0] == pytest.approx(1.0)


def test_two_intents_are_found_and_each_is_served() -> None:
    rec = _world()
    clicks = [("c0-1", "view"), ("c0-2", "view"), ("c2-1", "view"), ("c2-3", "view")]
    result = rec.recommend([Request(clicks, params=QueryDefaults(k=20))])[0]
    assert len(result.intents) == 2
    groups = {item["item_id"].split("-")[0] for item in result.items}
    assert groups == {"c0", "c2"}


def test_bought_items_never_come_back_and_seen_by_option() -> None:
    rec = _world()
    clicks = [("c1-1", "view"), ("c1-2", "buy")]
    out = rec.recommend([Request(clicks, bought=frozenset({"c1-2"}))])[0]
    assert "c1-2" not in {i["item_id"] for i in out.items}
    out = rec.recommend([Request(clicks, params=QueryDefaults(exclude_seen=True))])[0]
    assert not {"c1-1", "c1-2"} & {i["item_id"] for i in out.items}


def test_diversity_spreads_the_list() -> None:
    rec = _world(exact=True)
    clicks = [("c3-1", "view")]
    plain = rec.recommend([Request(clicks, params=QueryDefaults(k=10))])[0]
    diverse = rec.recommend([Request(clicks, params=QueryDefaults(k=10, diversity=0.9))])[0]

    def spread(items: list) -> float:
        v = rec.index.vectors[[rec.index.labels[i["item_id"]] for i in items]]
        return float((v @ v.T).mean())

    assert spread(diverse.items) < spread(plain.items)


def test_removal_pushes_the_intent_away() -> None:
    v = np.eye(3, dtype=np.float32)
    near = (v[0] + 0.5 * v[1]) / np.linalg.norm(v[0] + 0.5 * v[1])
    clusters = cluster(
        np.stack([v[0], near]).astype(np.float32), np.array([1.0, -0.5], np.float32), 3
    )
    assert len(clusters) == 1 and clusters[0].vector[1] < 0


def test_a_single_click_is_one_intent_and_a_single_removal_none() -> None:
    v = np.array([[0.6, 0.8, 0.0]], np.float32)
    (only,) = cluster(v, np.array([0.5], np.float32), 3)
    assert only.members == (0,) and only.weight == 0.5
    assert np.allclose(only.vector, v[0])
    assert cluster(v, np.array([-0.5], np.float32), 3) == []


def test_unknown_items_are_counted_not_errors() -> None:
    out = _world().recommend([Request([("nope", "view")])])[0]
    assert out.unknown == 1 and out.items == []


def test_params_override_and_bad_params() -> None:
    assert params_from(QueryDefaults(), {"k": 5, "diversity": 0.2}).k == 5
    with pytest.raises(ValueError, match="unknown parameter"):
        params_from(QueryDefaults(), {"kk": 5})
    with pytest.raises(ValueError, match="k is 0, expected 1 to 100"):
        params_from(QueryDefaults(), {"k": 0})


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"k": 1000, "diversity": 1}, "k is 1000, expected 1 to 100"),
        ({"max_intents": 50}, "max_intents is 50, expected 1 to 5"),
        ({"max_intents": -2}, "max_intents is -2"),
        ({"past_weight": -1}, "past_weight is -1.0, expected a number from 0 to 100"),
        ({"name_weight": float("nan")}, "name_weight is nan"),
        ({"price_weight": float("inf")}, "price_weight is inf"),
        ({"transition_weight": 1e308}, "transition_weight is 1e[+]308, expected a number from 0"),
        ({"return_weight": 100.5}, "return_weight is 100.5"),
        ({"k": 2.5}, "k is 2.5, expected int"),
    ],
)
def test_params_beyond_the_operator_limits_are_refused(params: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        params_from(QueryDefaults(), params, Limits())
    wider = Limits(max_k=1000, max_intents=50)
    if "k is 1000" in reason or "max_intents is 50" in reason:
        assert params_from(QueryDefaults(), params, wider)


def test_one_query_fetches_at_most_the_search_depth_cap() -> None:
    rec = _world(exact=True)
    bought = frozenset(f"c{c}-{i}" for c in range(4) for i in range(8))
    req = Request([("c3-1", "view")], bought, params=QueryDefaults(k=10))
    assert rec.plan([req]).k_search == 50  # 10 + 32, rounded up to a multiple of FETCH_GROUP
    capped = rec.plan([req], max_fetch=12)
    assert capped.k_search == 12 and capped.fetch.max() == 12


def test_a_search_run_in_another_thread_gives_the_same_answers() -> None:
    from concurrent.futures import ThreadPoolExecutor

    rec = _world()
    requests = [
        Request([("c0-1", "view"), ("c1-2", "cart"), ("c3-4", "view")]),
        Request([("c2-1", "view")], bought=frozenset({"c2-2"})),
        Request([]),
    ]
    plan = rec.plan(requests)
    with ThreadPoolExecutor(1) as pool:
        labels, scores = pool.submit(rec.search, plan).result()
    threaded, direct = rec.finish(plan, labels, scores), rec.recommend(requests)
    assert [r.items for r in threaded] == [r.items for r in direct]
    assert [[i.members for i in r.intents] for r in threaded] == [
        [i.members for i in r.intents] for r in direct
    ]
    assert threaded[0].items and threaded[2].items == []
    assert len(plan.queries) == len(labels) and plan.k_search == 30  # 20 + 1, rounded up


def test_each_query_is_searched_only_as_deep_as_its_request_needs() -> None:
    rec = _world(exact=True)
    depths: list[tuple[int, int]] = []
    search = rec.index.search

    def recording(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        depths.append((len(queries), k))
        return search(queries, k)

    rec.index.search = recording  # type: ignore[method-assign]
    buyer = Request(
        [("c0-1", "view")], bought=frozenset(f"c{i // 25}-{i % 25}" for i in range(2, 42))
    )
    browsers = [Request([("c1-2", "view")]), Request([("c3-4", "view"), ("c3-5", "cart")])]
    together = rec.recommend([*browsers, buyer])
    assert sorted(depths) == [(1, 60), (2, 20)]  # the buyer skips 40 bought items: 20 + 40
    alone = [rec.recommend([r])[0] for r in [*browsers, buyer]]
    assert [r.items for r in together] == [r.items for r in alone]
    assert (
        len(together[2].items) == 20
        and not {i["item_id"] for i in together[2].items} & buyer.bought
    )


def _with_metadata(rec: Recommender) -> Recommender:
    """Cluster c's items: category f"cat{c}", brand odd/even, price = the item's number."""
    for item, label in rec.index.labels.items():
        cluster_no, number = (int(x) for x in item[1:].split("-"))
        rec.metadata.categories[label] = f"cat{cluster_no}"
        rec.metadata.brands[label] = "odd" if number % 2 else "even"
        if number < 20:  # the last five of each cluster have no price
            rec.metadata.prices[label] = float(number)
    return rec


@pytest.mark.parametrize("exact", [True, False])
def test_filters_keep_only_matching_items_searching_among_them(exact: bool) -> None:
    rec = _with_metadata(_world(exact=exact))
    session = [("c0-1", "view"), ("c0-2", "view")]
    plain = rec.recommend([Request(session, params=QueryDefaults(k=10))])[0]
    assert {i["item_id"][:2] for i in plain.items} == {"c0"}  # the session's own cluster
    cases = [
        (filters_from({"categories": ["cat2"]}), lambda c, n: c == 2),
        (filters_from({"not_categories": ["cat0"]}), lambda c, n: c != 0),
        (filters_from({"brands": ["odd"], "categories": ["cat0"]}), lambda c, n: n % 2 == 1),
        (filters_from({"max_price": 4.5}), lambda c, n: n <= 4),
        (filters_from({"min_price": 18}), lambda c, n: 18 <= n < 20),  # unknown: out
    ]
    for filters, passes in cases:
        req = Request(session, params=QueryDefaults(k=10), filters=filters)
        got = [i["item_id"] for i in rec.recommend([req])[0].items]
        assert len(got) == min(10, sum(passes(c, n) for c in range(4) for n in range(25)))
        for item in got:
            c, n = (int(x) for x in item[1:].split("-"))
            assert passes(c, n), (filters, item)
    excluded = frozenset(i["item_id"] for i in plain.items[:3])
    req = Request(session, params=QueryDefaults(k=10), filters=Filters(exclude=excluded))
    got = [i["item_id"] for i in rec.recommend([req])[0].items]
    assert got == [i["item_id"] for i in plain.items[3:]] + got[7:] and len(got) == 10


def test_filters_too_narrow_for_the_sample_are_not_searched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A filter none of the sampled items passes would make hnswlib walk the whole graph:
    the request is not searched, and its result says why (the worker answers it from
    trending items that pass the filters, reason "filtered")."""
    from sessionrec.models import ranking

    rec = _with_metadata(_world())
    session = [("c0-1", "view")]
    rare = filters_from({"min_price": 19, "max_price": 19})  # items c*-19: labels 19, 44, ...
    searched: list[int] = []
    search = rec.index.search

    def recording(queries: np.ndarray, k: int, allowed: object = None) -> object:
        searched.append(len(queries))
        return search(queries, k, allowed)  # type: ignore[arg-type]

    rec.index.search = recording  # type: ignore[method-assign]
    found = rec.recommend([Request(session, filters=rare)])[0]  # every item sampled here
    assert sorted(i["item_id"] for i in found.items) == ["c0-19", "c1-19", "c2-19", "c3-19"]
    assert not found.narrow and searched
    monkeypatch.setattr(ranking, "FILTER_SAMPLE", 10)  # labels 0, 10, ..., 90: none passes
    searched.clear()
    narrow, plain = rec.recommend([Request(session, filters=rare), Request(session)])
    assert narrow.narrow and narrow.items == [] and not plain.narrow and plain.items
    assert searched == [1]  # the plain request's query only


@pytest.mark.parametrize(
    "values, reason",
    [
        ({"colour": ["red"]}, "unknown filter 'colour'"),
        ({"categories": "shoes"}, "categories is 'shoes', expected a list of strings"),
        ({"brands": [""]}, "expected a list of strings"),
        ({"min_price": "cheap"}, "min_price is 'cheap', expected a number"),
        ({"max_price": -1}, "max_price is -1, expected a number >= 0"),
        ({"min_price": 5, "max_price": 2}, "min_price 5 is above max_price 2"),
        ({"exclude": ["x"] * 101}, "exclude has 101 values, at most 100"),
    ],
)
def test_bad_filters_are_refused_naming_the_filter(values: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        filters_from(values)


def test_the_item_in_hand_is_left_out_unless_the_protocol_counts_it() -> None:
    rec = _world(exact=True)
    clicks = [("c0-1", "view"), ("c0-2", "view")]
    counted = rec.recommend([Request(clicks, params=QueryDefaults(exclude_current=False))])[0]
    assert counted.items[0]["item_id"] == "c0-2"  # the item in hand is the nearest to itself
    shown = rec.recommend([Request(clicks, current="c0-2")])[0]  # the default leaves it out
    ids = [i["item_id"] for i in shown.items]
    assert "c0-2" not in ids and len(ids) == 20
    assert ids[:19] == [i["item_id"] for i in counted.items if i["item_id"] != "c0-2"][:19]
