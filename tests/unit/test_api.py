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
        ([("past_weight", "nan")], "params: past_weight is nan, expected a number from 0 to 100"),
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

    return asyncio.run(_guard("", b"")(request, handler))


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


def test_forwarding_carries_no_token_and_refuses_a_rogue_members_answer() -> None:
    """A member that announces its own URL gets a forwarded request without the client's
    token, and its answer (unsigned) never reaches the client; the honest owner's does."""
    import asyncio
    import dataclasses

    import aiohttp
    from aiohttp import web

    from sessionrec.stream.api import FORWARDED, Api, web_options
    from sessionrec.stream.broker import free_port
    from sessionrec.stream.pipeline import Pipeline

    token = "client-token-never-forwarded"
    settings = dataclasses.replace(Settings(), api=dataclasses.replace(Settings().api, token=token))
    seen: list[dict[str, str]] = []

    async def rogue(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"user_id": "u2", "items": [{"item_id": "spam"}]})

    async def serve(app: web.Application, port: int) -> web.AppRunner:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def worker(url: str, owner: str) -> tuple[Api, web.Application]:
        pipeline = Pipeline(settings, None, {})
        pipeline.table.own({0, 1, 2, 3})
        api = Api(settings, pipeline, url, lambda: {2: owner}, lambda: True)
        app = web.Application(**web_options(settings))
        for path, method, handler in api.routes():

            async def route(request: web.Request, _h: Any = handler) -> web.StreamResponse:
                return await _h(request, **request.match_info)

            app.router.add_route(method.upper(), path, route)
        return api, app

    async def scenario() -> list[tuple[int, str]]:
        ports = [free_port("127.0.0.1") for _ in range(4)]
        a_url, b_url, r_url, c_url = (f"http://127.0.0.1:{p}" for p in ports)
        rogue_app = web.Application()
        rogue_app.router.add_get("/{tail:.*}", rogue)
        a, a_app = worker(a_url, r_url)  # believes the rogue owns partition 2
        b, b_app = worker(b_url, b_url)  # the honest owner
        c, c_app = worker(c_url, b_url)  # forwards to the honest owner
        runners = [
            await serve(app, p)
            for app, p in zip((a_app, b_app, rogue_app, c_app), ports, strict=True)
        ]
        path = "/v1/users/u2/recommendations"
        out = []
        try:
            async with aiohttp.ClientSession() as http:
                auth = {"Authorization": f"Bearer {token}"}
                for url, headers in (
                    (a_url, auth),
                    (c_url, auth),
                    (b_url, {FORWARDED: "http://forger"}),  # no signature: not a member
                ):
                    async with http.get(url + path, headers=headers) as response:
                        out.append((response.status, await response.text()))
        finally:
            for runner in runners:
                await runner.cleanup()
            for api in (a, b, c):
                await api.close()
        return out

    (rogue_status, rogue_body), (ok_status, ok_body), (forged, _) = asyncio.run(scenario())
    assert rogue_status == 502 and "spam" not in rogue_body
    assert "did not sign its answer with the cluster key" in rogue_body
    assert len(seen) == 1 and "Authorization" not in seen[0]
    assert not any(token in value for value in seen[0].values())
    assert ok_status == 200 and '"reason":"trending"' in ok_body
    assert forged == 401


def test_a_request_the_http_parser_refuses_is_answered_in_json() -> None:
    import asyncio
    import json

    from aiohttp import web

    from sessionrec.stream.api import web_options
    from sessionrec.stream.broker import free_port

    async def scenario() -> bytes:
        port = free_port("127.0.0.1")
        runner = web.AppRunner(web.Application(**web_options(Settings())))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    head, _, body = asyncio.run(scenario()).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400" and b"Content-Type: application/json" in head
    error = json.loads(body)
    assert error["status"] == 400 and error["error"].startswith("malformed HTTP request: ")
