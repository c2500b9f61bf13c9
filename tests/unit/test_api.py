"""The query API's request parsing and its description (no server: see
tests/integration/test_api.py for the workers' HTTP answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict

from sessionrec.models.config import Limits, QueryDefaults, Settings
from sessionrec.models.filters import Filters
from sessionrec.stream.api import RequestError, query_args, session_body
from sessionrec.stream.openapi import SPEC, text

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_query_strings_become_parameters_and_filters() -> None:
    query = MultiDict(
        [
            ("k", "5"),
            ("diversity", "0.25"),
            ("exclude_seen", "true"),
            ("brands", "a"),
            ("brands", "b, c"),
            ("max_price", "9.5"),
            ("exclude", "i1"),
        ]
    )
    params, filters = query_args(Settings(), query)
    assert params == QueryDefaults(k=5, diversity=0.25, exclude_seen=True)
    assert filters == Filters(
        brands=frozenset({"a", "b, c"}), max_price=9.5, exclude=frozenset({"i1"})
    )
    assert query_args(Settings(), MultiDict()) == (QueryDefaults(), Filters())


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([("k", "101")], "params: k is 101, expected 1 to 100"),
        ([("k", "2.5")], "k is '2.5', expected int"),
        ([("past_weight", "nan")], "params: past_weight is nan, expected a finite number >= 0"),
        ([("min_price", "-1")], "filters: min_price is -1.0, expected a number >= 0"),
        ([("user_id", "u1")], "unknown parameter 'user_id'"),
    ],
)
def test_bad_query_strings_name_the_parameter(pairs: list, message: str) -> None:
    with pytest.raises(RequestError, match=message) as caught:
        query_args(Settings(), MultiDict(pairs))
    assert caught.value.status == 400


def test_limits_come_from_the_settings() -> None:
    wide = Settings(limits=Limits(max_k=500))
    assert query_args(wide, MultiDict([("k", "400")]))[0].k == 400


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[]", "body is not a JSON object"),
        (b'{"events": [], "colour": 1}', "body has unknown field 'colour'"),
        (b'{"events": {}}', "body field 'events' is '{}', expected a list"),
        (b'{"events": [{"type": "view"}]}', r"events\[0\].item_id is not a string"),
        (b'{"events": [], "params": []}', "body field 'params' is not an object"),
        (b'{"events": [], "filters": {"brands": "x"}}', "filters: brands is 'x'"),
    ],
)
def test_bad_session_bodies_are_named(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        session_body(Settings(), body)


def test_a_session_body() -> None:
    body = b'{"events": [{"item_id": "a"}, {"item_id": "b", "type": "cart"}], "params": {"k": 3}}'
    clicks, params, filters = session_body(Settings(), body)
    assert clicks == [("a", "view"), ("b", "cart")] and params.k == 3 and filters == Filters()


def test_the_description_in_docs_is_the_served_one() -> None:
    assert (DOCS / "openapi.json").read_text() == text(), (
        "docs/openapi.json is stale: python -m sessionrec.stream.openapi > docs/openapi.json"
    )
    parameters = SPEC["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
    names = {p["name"] for p in parameters}
    assert set(QueryDefaults.__slots__) <= names and {"brands", "max_price", "exclude"} <= names


def _ask_user(owners: dict[int, str], owned: set[int] | None, forwarded: bool) -> Any:
    """A user request through the API's middleware and route, on a worker without a model."""
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    from sessionrec.stream.api import FORWARDED, Api, _guard
    from sessionrec.stream.kafka import partition_of
    from sessionrec.stream.pipeline import Pipeline

    pipeline = Pipeline(Settings(), None, {})
    if owned is not None:
        pipeline.table.own(owned)
    api = Api(Settings(), pipeline, "http://me:8080", lambda: owners, lambda: True)
    headers = {FORWARDED: "http://peer:8080"} if forwarded else {}
    request = make_mocked_request("GET", "/v1/users/u2/recommendations", headers=headers)
    assert partition_of(b"u2", Settings().partitions) == 2  # the partitions below are u2's

    async def handler(r: Any) -> Any:
        return await api.user(r, "u2")

    return asyncio.run(_guard("")(request, handler))


def test_a_user_request_is_answered_by_the_partitions_owner_or_told_to_retry() -> None:
    import json

    response = _ask_user({}, None, forwarded=False)  # no assignment yet
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["error"] == "no worker owns partition 2 now: retry"
    # Forwarded here, but the partition has just moved away: retry, never a wrong answer.
    response = _ask_user({2: "http://me:8080"}, {0, 1}, forwarded=True)
    assert response.status == 503
    assert json.loads(response.body)["error"] == "partition 2 is moving to another worker: retry"
    response = _ask_user({2: "http://me:8080"}, {2}, forwarded=False)  # this worker's own user
    assert response.status == 200 and json.loads(response.body)["reason"] == "trending"
    assert response.headers["X-Sessionrec-Answered-By"] == "http://me:8080"
