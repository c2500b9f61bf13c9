from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionrec.models.codec import (
    DecodeError,
    answer_shared,
    decode_event,
    decode_item,
    decode_recommendation,
    encode,
    encode_answer,
    encode_answers,
)
from sessionrec.models.records import Event, Intent, Item, Recommendation, RecommendedItem

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def test_event_round_trip_and_schema() -> None:
    event = Event("u1", "i9", "cart", 1_700_000_000_000, params={"k": 5})
    raw = encode(event)
    assert decode_event(raw) == event
    jsonschema.validate(json.loads(raw), _schema("event"))


def test_item_round_trip_and_schema() -> None:
    item = Item("i9", name="red shoe", category="shoes", brand="Acme", price=19.5)
    raw = encode(item)
    assert decode_item(raw) == item
    jsonschema.validate(json.loads(raw), _schema("item"))


def test_recommendation_round_trip_and_schema() -> None:
    rec = Recommendation(
        user_id="u1",
        session_id="s-1",
        items=[RecommendedItem(item_id="i2", score=0.91, intent=0)],
        intents=[Intent(0, ["i9"], 1.0, category="shoes")],
        model_version="v1",
        event_ts=1_700_000_000_000,
        emitted_ts=1_700_000_000_020,
        item_id="i9",
        type="view",
    )
    raw = encode(rec)
    assert decode_recommendation(raw) == rec
    jsonschema.validate(json.loads(raw), _schema("recommendation"))


def test_an_answer_sent_for_several_events_is_the_record_of_each() -> None:
    answer = Recommendation(
        user_id="u1",
        session_id="s-1",
        items=[RecommendedItem(item_id="i2", score=0.91, intent=0)],
        intents=[Intent(0, ["i9", "i8"], 1.0, category="shoes")],
        model_version="v1",
        event_ts=0,
        emitted_ts=1_700_000_000_020,
        extra={"note": 1},
    )
    events = [
        Event("u1", "i9", "view", 1_700_000_000_000),
        Event("u1", "i8", "cart", 1_700_000_000_001),
    ]
    sent = encode_answers(answer, events)
    for raw, event in zip(sent, events, strict=True):
        expected = dataclasses.replace(
            answer, item_id=event.item_id, type=event.type, event_ts=event.ts
        )
        assert json.loads(raw) == json.loads(encode(expected))
        assert decode_recommendation(raw) == expected
        jsonschema.validate(json.loads(raw), _schema("recommendation"))
    # The query API's answer is the same record without the event's fields.
    api = encode_answer("u1", 5, answer.emitted_ts, answer_shared(answer))
    assert json.loads(api) == json.loads(encode(dataclasses.replace(answer, event_ts=5)))


def test_iso_timestamp_is_accepted() -> None:
    event = decode_event(b'{"user_id":"u","item_id":"i","type":"view","ts":"2024-01-02T03:04:05Z"}')
    assert event.ts == 1_704_164_645_000


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"item_id":"i","type":"view","ts":1700000000000}', "'user_id' is missing"),
        (
            b'{"user_id":"u","item_id":"i","type":"like","ts":1700000000000}',
            "field 'type' is 'like'",
        ),
        (b'{"user_id":"u","item_id":"i","type":"view","ts":"soon"}', "field 'ts' is 'soon'"),
        (b'{"user_id":"u","item_id":"i","type":"view","ts":1700000000}', "between 2000 and 2100"),
        (b'{"user_id":"u","item_id":"i","type":"view","ts":true}', "field 'ts' is True"),
        (b"[1,2]", "expected an object"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"user_id": 1.5, "item_id":"i","type":"view","ts":1700000000000}', "'user_id' is 1.5"),
        (b"{" + b'"a":"' + b"x" * 70_000 + b'"}', "expected at most"),
        (b"not json", "not JSON"),
    ],
)
def test_bad_events_name_the_problem(raw: bytes, needle: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(raw)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize("price", ["-1", '"abc"', '"inf"', "1e13", "[1]"])
def test_bad_prices_are_rejected(price: str) -> None:
    with pytest.raises(DecodeError, match="field 'price'"):
        decode_item(f'{{"item_id":"i","price":{price}}}'.encode())


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_bytes_give_one_line_errors(raw: bytes) -> None:
    try:
        decode_event(raw)
    except DecodeError as exc:
        assert "\n" not in str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(
            [
                "user_id",
                "item_id",
                "type",
                "ts",
                "params",
                "context",
                "session_id",
                "schema_version",
            ],
            json_values,
        ),
    )
)
def test_wrong_types_never_escape(data: dict) -> None:
    _decode_or_explain(data)


def _decode_or_explain(data: dict) -> None:
    raw = json.dumps(data).encode()
    try:
        event = decode_event(raw)
    except DecodeError as exc:
        assert "\n" not in str(exc)
    else:
        jsonschema.validate(json.loads(encode(event)), _schema("event"))


@given(
    st.text(min_size=1, max_size=40).filter(str.strip),
    st.text(min_size=1, max_size=40).filter(str.strip),
    st.sampled_from(["view", "cart", "buy", "remove_from_cart"]),
    st.integers(946_684_800_000, 4_102_444_800_000),
)
def test_event_round_trip_property(user: str, item: str, kind: str, ts: int) -> None:
    event = Event(user, item, kind, ts)  # type: ignore[arg-type]
    assert decode_event(encode(event)) == event


@pytest.mark.parametrize(
    "event",
    [
        {"user_id": "u", "item_id": "i", "type": "view", "ts": 1_700_000_000_000},
        {"user_id": 7, "item_id": 12345, "type": "buy", "ts": 1_700_000_000_000},
        {"user_id": "u", "item_id": "i", "type": "view", "ts": 1_700_000_000_000.5},
        {"user_id": "u", "item_id": "i", "type": "view", "ts": "2024-01-02T03:04:05Z"},
        {"user_id": "u", "item_id": "i", "type": "view", "ts": 1},
        {"user_id": "", "item_id": "i", "type": "view", "ts": 1_700_000_000_000},
        {"user_id": "u", "item_id": True, "type": "view", "ts": 1_700_000_000_000},
        {"user_id": "u", "item_id": "i", "type": "like", "ts": 1_700_000_000_000},
        {"user_id": "u", "item_id": "i", "type": "view", "ts": True},
        {"user_id": "u", "item_id": "i", "type": "view", "ts": 1_700_000_000_000, "params": []},
        {"user_id": "u" * 257, "item_id": "i", "type": "view", "ts": 1_700_000_000_000},
    ],
)
def test_the_event_schema_and_the_decoder_agree(event: dict) -> None:
    assert _accepted_by_schema(event, "event") == _decodes(decode_event, event), event


def _accepted_by_schema(record: dict, name: str) -> bool:
    try:
        jsonschema.validate(record, _schema(name))
    except jsonschema.ValidationError:
        return False
    return True


def _decodes(decoder: Any, record: dict) -> bool:
    try:
        decoder(json.dumps(record).encode())
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "item",
    [
        {"item_id": "i", "name": "tent", "price": 12.5},
        {"item_id": 5, "category": 3, "price": "12.50"},
        {"item_id": "i", "price": "cheap"},
        {"item_id": "i", "price": -1},
        {"item_id": "", "name": "x"},
        {"item_id": "i", "deleted": "yes"},
        {"item_id": "i", "brand": ["a"]},
    ],
)
def test_the_item_schema_and_the_decoder_agree(item: dict) -> None:
    assert _accepted_by_schema(item, "item") == _decodes(decode_item, item), item
