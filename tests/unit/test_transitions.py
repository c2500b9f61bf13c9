"""Transitions: counted from the training pairs, kept as shares, and re-scoring what the index
retrieved (never adding to it); returns: how often sessions went back to an earlier click."""

from __future__ import annotations

import dataclasses

import numpy as np

from sessionrec.models.config import EventWeights, QueryDefaults
from sessionrec.models.features import Dims
from sessionrec.models.index import ItemIndex
from sessionrec.models.ranking import Recommender, Request
from sessionrec.models.transitions import MAX_SUCCESSORS, Transitions


def _count(sessions: list[list[int]], n: int) -> Transitions:
    first = np.array([a for s in sessions for a in s[:-1]], np.int64)
    then = np.array([b for s in sessions for b in s[1:]], np.int64)
    return Transitions.count(first, then, n)


def test_shares_of_each_items_successors() -> None:
    t = _count([[0, 1, 2], [0, 1], [0, 2], [3, 3]], 5)
    assert t.problem() is None

    def shares(latest: int, candidates: list[int]) -> list[float]:
        rows = np.full(len(candidates), latest, np.int64)
        return t.shares(rows, np.array(candidates, np.int64)).tolist()

    np.testing.assert_allclose(shares(0, [2, 1, 4, 0]), [1 / 3, 2 / 3, 0, 0])
    np.testing.assert_allclose(shares(1, [2, 0, 9]), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(shares(3, [3]), [1.0])  # a repeat follows itself
    # Nothing: an item without successors, a row the model does not have (a catalog item
    # added since), no latest click (-1).
    assert shares(2, [0, 1]) == shares(7, [0, 1]) == shares(-1, [0, 1]) == [0.0, 0.0]
    # Pairs of different rows in one call, as a batch of requests.
    np.testing.assert_allclose(
        t.shares(np.array([0, 1, 3, 0]), np.array([1, 2, 3, 3])), [2 / 3, 1, 1, 0]
    )
    empty = Transitions.empty(3).shares(np.array([0, 1]), np.array([1, 2]))
    assert empty.tolist() == [0.0, 0.0]


def test_only_the_most_frequent_successors_are_kept_at_their_true_share() -> None:
    n = MAX_SUCCESSORS + 50
    sessions = [[0, j] for j in range(1, n)] + [[0, 1]] * 9  # item 1 follows 0 ten times
    t = _count(sessions, n)
    assert t.indptr[1] - t.indptr[0] == MAX_SUCCESSORS
    total = n - 1 + 9
    np.testing.assert_allclose(
        t.shares(np.zeros(2, np.int64), np.array([1, 2])), [10 / total, 1 / total]
    )


def test_inconsistent_arrays_are_named() -> None:
    t = _count([[0, 1]], 2)
    assert "outside the model" in (
        dataclasses.replace(t, successors=np.array([5], np.int32)).problem() or ""
    )
    assert "row offsets" in (
        dataclasses.replace(t, indptr=np.array([0, 2, 1], np.int64)).problem() or ""
    )
    assert "finite" in (
        dataclasses.replace(t, share=np.array([np.nan], np.float32)).problem() or ""
    )


def test_a_retrieved_item_that_follows_the_latest_click_moves_up() -> None:
    """Items a, b, c close to the session's item; b usually follows it in training."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=100).astype(np.float32)
    vectors = np.stack([base, base + 0.1, base + 0.3, base + 0.5, -base]).astype(np.float32)
    vectors += 0.01 * rng.normal(size=vectors.shape).astype(np.float32)
    ids = ["x", "a", "b", "c", "far"]
    index = ItemIndex.build(ids, vectors, exact=True)
    transitions = _count([[0, 2], [0, 2], [0, 1], [0, 4]], len(ids))  # x -> b mostly; x -> far
    rec = Recommender(
        index, Dims(), np.ones(20, np.float32), EventWeights(), transitions=transitions
    )
    clicks = [("x", "view")]
    plain = QueryDefaults(k=3, transition_weight=0.0, exclude_current=False)
    assert [i["item_id"] for i in rec.recommend([Request(clicks, params=plain)])[0].items] == [
        "x",
        "a",
        "b",
    ]
    boosted = dataclasses.replace(plain, transition_weight=1.0)
    (result,) = rec.recommend([Request(clicks, params=boosted)])
    assert [i["item_id"] for i in result.items] == ["b", "a", "x"]  # b: 2 of 4, a: 1 of 4
    # "far" follows x too, but the search did not retrieve it: it is not brought in.
    assert "far" not in [i["item_id"] for i in result.items]
    # Its shown score is the cosine plus the weighted share.
    cosine = float(
        vectors[2] @ vectors[0] / np.linalg.norm(vectors[2]) / np.linalg.norm(vectors[0])
    )
    assert abs(result.items[0]["score"] - (cosine + 0.5)) < 1e-3


def test_returns_count_how_often_the_next_click_went_back_that_far() -> None:
    # Sessions end to end: [5, 6, 5] and [7, 8, 9, 7]; cases are every click after the first.
    flat = np.array([5, 6, 5, 7, 8, 9, 7], np.int64)
    start = np.array([0, 0, 3, 3, 3], np.int64)
    target_at = np.array([1, 2, 4, 5, 6], np.int64)
    returns = Transitions.count_returns(target_at - 1, start, flat, flat[target_at], 4)
    # Distance 1 (one before the latest): 3 cases reach it, one went back (5 6 -> 5).
    # Distance 2: 1 case reaches it (7 8 9), and went back to 7. Distance 3: none reaches it.
    np.testing.assert_allclose(returns, [1 / 3, 1.0, 0.0])
    t = Transitions.count(np.zeros(0, np.int64), np.zeros(0, np.int64), 3, returns)
    assert t.problem() is None


def test_an_item_the_session_went_through_before_moves_up_by_how_often_sessions_go_back() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=100).astype(np.float32)
    vectors = np.stack([base, base + 0.1, base + 0.4, base + 0.2]).astype(np.float32)
    ids = ["y", "a", "back", "x"]
    index = ItemIndex.build(ids, vectors, exact=True)
    # Back to the click two steps before the latest: 30 %; three steps: 20 %.
    returns = np.array([0.0, 0.3, 0.2], np.float32)
    transitions = Transitions.count(np.zeros(0, np.int64), np.zeros(0, np.int64), 4, returns)
    rec = Recommender(
        index, Dims(), np.ones(20, np.float32), EventWeights(), transitions=transitions
    )
    clicks = [("back", "view"), ("x", "view"), ("y", "view")]
    params = QueryDefaults(k=4, return_weight=0.0, exclude_current=False)

    def ranked(p: QueryDefaults) -> list[tuple[str, float]]:
        (result,) = rec.recommend([Request(clicks, params=p)])
        return [(i["item_id"], i["score"]) for i in result.items]

    plain = dict(ranked(params))
    boosted = ranked(dataclasses.replace(params, return_weight=1.0))
    assert boosted[0][0] == "back"
    shown = dict(boosted)
    assert abs(shown["back"] - (plain["back"] + 0.3)) < 1e-4
    # One step before the latest: a 0 share, no gain; the item in hand: none either.
    assert shown["x"] == plain["x"] and shown["y"] == plain["y"]
    # The same item clicked at two counted distances gains both shares.
    twice = [("back", "view"), ("back", "view"), ("x", "view"), ("y", "view")]
    with_returns = dataclasses.replace(params, return_weight=1.0)
    scores = [
        {i["item_id"]: i["score"] for i in rec.recommend([Request(twice, params=p)])[0].items}
        for p in (params, with_returns)
    ]
    assert abs(scores[1]["back"] - scores[0]["back"] - (0.3 + 0.2)) < 1e-4
