"""The query API of real workers on the embedded broker, asked over real HTTP.

Two workers share the partitions: every user is asked of both, so half the requests reach the
worker that does not own the user and must be forwarded. Each answer must be the one the
stream gave for the user's latest event."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from sessionrec.models.artifact import current_version, load_model, version_path
from sessionrec.models.codec import decode_recommendation, encode
from sessionrec.models.config import Api, Settings
from sessionrec.models.records import Event
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.kafka import partition_of
from sessionrec.stream.openapi import text as openapi_text
from sessionrec.stream.topics import create_topics, topic_specs
from tests.integration.kafka_io import consume, produce, unique_settings
from tests.integration.test_worker import worker_factory  # noqa: F401  # a fixture

HTTP_TIMEOUT_S = 10.0
USERS = 120


def http(
    url: str, body: Any = None, token: str | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of a GET, or of a POST when `body` or `raw` is given."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _sessions(model_dir: Path, start_ts: int) -> list[Event]:
    """USERS users, 2 to 4 events each, all within a few minutes (no session closes)."""
    items = load_model(version_path(model_dir, current_version(model_dir))).item_ids
    rng = np.random.default_rng(3)
    events = []
    for u in range(USERS):
        for step in range(int(rng.integers(2, 5))):
            kind = "cart" if step == 2 else "view"
            item = items[int(rng.integers(len(items)))]
            events.append(Event(f"api-user-{u}", item, kind, start_ts + u * 100 + step * 10_000))
    return sorted(events, key=lambda e: e.ts)


def _setup(broker: EmbeddedBroker, unique: str, model_dir: Path, **api: Any) -> Settings:
    settings = unique_settings(broker.bootstrap, unique, str(model_dir))
    settings = dataclasses.replace(settings, api=Api(port=0, **api))
    create_topics(settings, topic_specs(settings))
    return settings


def _latest_answers(settings: Settings, events: list[Event]) -> dict[str, Any]:
    wanted = {(e.user_id, e.ts) for e in events}

    def all_answered(values: list[bytes]) -> bool:
        return wanted <= {(m["user_id"], m["event_ts"]) for m in map(orjson.loads, values)}

    raw = consume(settings.bootstrap, settings.topics.recommendations, all_answered, idle_s=60)
    latest: dict[str, Any] = {}
    for rec in map(decode_recommendation, raw):
        if rec.event_ts >= getattr(latest.get(rec.user_id), "event_ts", -1):
            latest[rec.user_id] = rec
    assert {user for user, _ in wanted} <= set(latest)
    return latest


def test_any_worker_answers_for_any_user_as_the_stream_did(
    broker: EmbeddedBroker,
    unique: str,
    retailrocket_model: Path,
    worker_factory,  # noqa: F811
) -> None:
    settings = _setup(broker, unique, retailrocket_model)
    workers = [worker_factory(settings), worker_factory(settings)]
    urls = [w.api_url() for w in workers]
    events = _sessions(retailrocket_model, start_ts=1_700_000_000_000)
    produce(settings, events)
    latest = _latest_answers(settings, events)

    answered_by: dict[int, set[str]] = {}  # partition -> the workers whose answers came back
    for user, streamed in latest.items():
        topic = orjson.loads(encode(streamed))
        # A list never holds the item in hand (the event's own item, by default).
        assert streamed.item_id not in {i["item_id"] for i in topic["items"]}
        for url in urls:
            # Without parameters: the stream's own answer, kept (emitted_ts included) ...
            status, kept, headers = http(f"{url}/v1/users/{user}/recommendations")
            assert status == 200, kept
            assert kept == {k: v for k, v in topic.items() if k not in ("item_id", "type")}
            # ... and ranked again with the same parameters, the same list (trending items
            # are those of the moment asked).
            status, ranked, _ = http(f"{url}/v1/users/{user}/recommendations?k=20")
            assert status == 200 and ranked["reason"] == topic["reason"], ranked
            if topic["reason"] == "session":
                for field in ("items", "intents", "session_id", "model_version"):
                    assert ranked[field] == topic[field], (user, field)
            partition = partition_of(user.encode(), settings.partitions)
            answered_by.setdefault(partition, set()).add(headers["X-Sessionrec-Answered-By"])
    assert sum(r.reason == "session" for r in latest.values()) > USERS // 2
    # Each partition was answered by one worker, whichever was asked; both workers own some.
    assert all(len(by) == 1 for by in answered_by.values()), answered_by
    assert {url for by in answered_by.values() for url in by} == set(urls)

    # The same parameters an event may carry give the same list; filters narrow it.
    user = next(u for u, r in latest.items() if r.reason == "session")
    status, few, _ = http(f"{urls[0]}/v1/users/{user}/recommendations?k=3&diversity=0.5")
    assert status == 200 and len(few["items"]) == 3
    first = few["items"][0]["item_id"]
    status, other, _ = http(f"{urls[1]}/v1/users/{user}/recommendations?k=3&exclude={first}")
    assert status == 200 and first not in {i["item_id"] for i in other["items"]}


def test_errors_limits_token_health_and_the_description(
    broker: EmbeddedBroker,
    unique: str,
    retailrocket_model: Path,
    worker_factory,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "s3cret-" + unique
    settings = _setup(broker, unique, retailrocket_model, token=token, max_items=5)
    worker = worker_factory(settings)
    url = worker.api_url()
    item = load_model(version_path(retailrocket_model, current_version(retailrocket_model)))
    known = item.item_ids[0]

    # Health and readiness need no token; the rest does.
    assert http(f"{url}/healthz")[:2] == (200, {"status": "ok"})
    status, ready, _ = http(f"{url}/readyz")
    assert status == 200 and ready["ready"] and ready["model_version"]
    status, body, headers = http(f"{url}/v1/items/{known}/similar")
    assert status == 401 and body["error"] == "missing or wrong bearer token"
    assert headers["WWW-Authenticate"] == "Bearer"
    assert http(f"{url}/v1/items/{known}/similar", token="wrong")[0] == 401
    assert token not in worker.log_path.read_text()

    status, similar, _ = http(f"{url}/v1/items/{known}/similar?k=5", token=token)
    assert status == 200 and len(similar["items"]) == 5 and similar["reason"] == "session"
    assert known not in {i["item_id"] for i in similar["items"]}

    # An unknown user gets trending items, and says so; an unknown item is a 404.
    status, stranger, _ = http(f"{url}/v1/users/nobody-{unique}/recommendations", token=token)
    assert status == 200 and stranger["reason"] == "trending" and stranger["session_id"] == "none"
    status, body, _ = http(f"{url}/v1/items/no-such-item/similar", token=token)
    assert (status, body["error"]) == (404, "item 'no-such-item' is not in the catalog")

    # Bad parameters are named; sizes are bounded.
    bad = {
        "k=0": "params: k is 0, expected 1 to 100",
        "k=many": "k is 'many', expected int",
        "colour=red": "unknown parameter 'colour'",
        "min_price=9&max_price=1": "filters: min_price 9 is above max_price 1",
        "exclude_seen=maybe": "exclude_seen is 'maybe', expected true or false",
    }
    for query, message in bad.items():
        status, body, _ = http(f"{url}/v1/items/{known}/similar?{query}", token=token)
        assert (status, body["error"]) == (400, message), query
    session = f"{url}/v1/sessions/recommendations"
    events = [{"item_id": known, "type": "view"}]
    status, anonymous, _ = http(session, {"events": events, "params": {"k": 4}}, token=token)
    assert status == 200 and len(anonymous["items"]) == 4 and anonymous["reason"] == "session"
    status, body, _ = http(session, {"events": events * 6}, token=token)
    assert (status, body["error"]) == (400, "events has 6 items, at most 5")
    status, body, _ = http(session, {"events": [{"item_id": known, "type": "like"}]}, token=token)
    assert status == 400 and "events[0].type is 'like'" in body["error"]
    status, body, _ = http(session, raw=b"{not json", token=token)
    assert (status, body["error"]) == (400, "body is not JSON")
    status, body, _ = http(session, raw=b"x" * (1024 * 1024), token=token)
    assert status == 413 and body["status"] == 413
    status, body, _ = http(f"{url}/v2/nothing", token=token)
    assert (status, body["error"]) == (404, "no such path: /v2/nothing")

    # The description is served (tests/unit/test_api.py holds docs/openapi.json to it).
    status, spec, _ = http(f"{url}/openapi.json")
    assert status == 200 and spec == json.loads(openapi_text())
    # The worker is still serving after all that.
    assert http(f"{url}/v1/items/{known}/similar?k=2", token=token)[0] == 200

    # `sessionrec recommend` asks the same API, with the token from the settings.
    from sessionrec.cli import main

    monkeypatch.setenv("SESSIONREC_API_TOKEN", token)
    assert main(["recommend", "--item", known, "-k", "3", "--url", url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("session answer, model ") and len(listed) == 4
    assert main(["recommend", "--item", "no-such-item", "--url", url]) == 2
    assert "answered 404: item 'no-such-item' is not in the catalog" in capsys.readouterr().err


def test_partition_of_agrees_with_the_producers_partitioner(
    broker: EmbeddedBroker, unique: str
) -> None:
    settings = _setup(broker, unique, Path("unused"))
    users = [f"user-{i}" for i in range(60)] + ["ü", "a b", ""]
    delivered: list[tuple[int, int, bytes]] = []
    produce(settings, [Event(u or "x", "i", "view", 1) for u in users], delivered=delivered)
    by_user = {orjson.loads(value)["user_id"]: partition for partition, _, value in delivered}
    assert len(set(by_user.values())) == settings.partitions
    for user, partition in by_user.items():
        assert partition == partition_of(user.encode(), settings.partitions), user


def test_serve_answers_similar_items_and_sessions_as_the_workers_do(
    broker: EmbeddedBroker,
    unique: str,
    retailrocket_model: Path,
    worker_factory,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`sessionrec serve` joins no consumer group and holds no sessions: its similar-item and
    session answers are the workers', a catalog upsert reaches it, a user's request is
    refused with the reason."""
    import sys
    import time

    from sessionrec.models.records import Item
    from sessionrec.stream.launch import WorkerProcess
    from tests.integration.kafka_io import produce_items

    settings = _setup(broker, unique, retailrocket_model)
    worker = worker_factory(settings).api_url()
    command = [sys.executable, "-m", "sessionrec.cli", "serve"]
    server = WorkerProcess(settings, tmp_path / "serve.log", command).start()
    try:
        served = server.api_url()
        deadline = time.monotonic() + 60
        while http(f"{served}/readyz")[0] != 200:
            assert time.monotonic() < deadline, server.tail_log()
            time.sleep(0.2)
        items = load_model(version_path(retailrocket_model, current_version(retailrocket_model)))
        for item in items.item_ids[:20]:
            got = [http(f"{url}/v1/items/{item}/similar?k=10") for url in (worker, served)]
            assert got[0][0] == got[1][0] == 200, got
            assert got[0][1]["items"] == got[1][1]["items"]
        session = {"events": [{"item_id": i, "type": "view"} for i in items.item_ids[:3]]}
        asked = [http(f"{url}/v1/sessions/recommendations", session) for url in (worker, served)]
        assert asked[0][1]["items"] == asked[1][1]["items"] and asked[1][1]["reason"] == "session"
        status, body, _ = http(f"{served}/v1/users/u1/recommendations")
        assert status == 404 and "stream workers" in body["error"]
        # A new catalog item is answered for once the watcher has it (404 before).
        assert http(f"{served}/v1/items/brand-new/similar")[0] == 404
        produce_items(settings, [Item("brand-new", name="new", category="c")])
        while http(f"{served}/v1/items/brand-new/similar")[0] != 200:
            assert time.monotonic() < deadline + 60, server.tail_log()
            time.sleep(0.2)
    finally:
        server.stop()
