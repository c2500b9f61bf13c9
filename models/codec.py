"""The one codec module: orjson with options set once, and validating decoders.

Every decoder raises `DecodeError` with a one-line message naming the field, the value and what
was expected; it never lets another exception escape for any input bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from .records import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Event,
    EventType,
    Intent,
    Item,
    Recommendation,
    RecommendedItem,
)
from .session import Session

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 2048
# Epoch milliseconds between 2000-01-01 and 2100-01-01: anything else is a unit or clock error.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
MAX_PRICE = 1e12

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class DecodeError(ValueError):
    """A record could not be decoded; the message is one line a user can act on."""


def encode(record: Event | Item | Recommendation | dict[str, Any]) -> bytes:
    """Serialise a record (dataclass or dict) to JSON bytes, dropping `None` optionals."""
    if isinstance(record, dict):
        return orjson.dumps(record, option=_DUMP_OPTIONS)
    return orjson.dumps(_compact(record), option=_DUMP_OPTIONS)


def encode_answers(
    answer: Recommendation, events: Sequence[Event], shared: bytes | None = None
) -> list[bytes]:
    """`answer` as sent for each of the events it answers: the same recommendation, with each
    event's `item_id`, `type` and `event_ts`. Each message is what `encode` gives for that
    record; the part all of them share (`answer_shared`) is encoded once."""
    shared = shared or answer_shared(answer)
    out = []
    for event in events:
        head = orjson.dumps(
            {
                "user_id": answer.user_id,
                "item_id": event.item_id,
                "type": event.type,
                "event_ts": event.ts,
                "emitted_ts": answer.emitted_ts,
            }
        )
        out.append(head[:-1] + b"," + shared)
    return out


def answer_shared(answer: Recommendation) -> bytes:
    """The fields of an answer that are not about one event or one user, as JSON object
    members without the opening brace (what `encode_answers` and `encode_answer` append)."""
    return orjson.dumps(
        {
            "items": answer.items,
            "intents": answer.intents,
            "reason": answer.reason,
            "model_version": answer.model_version,
            "session_id": answer.session_id,
            "schema_version": answer.schema_version,
            **({"extra": answer.extra} if answer.extra else {}),
        },
        option=_DUMP_OPTIONS,
    )[1:]


def encode_answer(user_id: str, event_ts: int, emitted_ts: int, shared: bytes) -> bytes:
    """A user's answer as the query API gives it: the message of `encode_answers` without
    the event's `item_id` and `type`."""
    head = orjson.dumps({"user_id": user_id, "event_ts": event_ts, "emitted_ts": emitted_ts})
    return head[:-1] + b"," + shared


def _compact(record: Event | Item | Recommendation) -> dict[str, Any]:
    """Top-level fields without the unset optionals; nested records stay as orjson writes them."""
    out: dict[str, Any] = {}
    for name in record.__slots__:
        value = getattr(record, name)
        if value is not None and not (name == "extra" and not value):
            out[name] = value
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """Parse JSON bytes into a dict, or raise `DecodeError` saying why not."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise DecodeError(
            f"{what}: payload is {len(raw)} bytes, expected at most {MAX_PAYLOAD_BYTES}"
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: payload is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{what}: payload is not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DecodeError(f"{what}: payload is JSON {type(data).__name__}, expected an object")
    return data


def _text(data: dict[str, Any], key: str, what: str, *, required: bool, limit: int) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise DecodeError(f"{what}: field '{key}' is missing, expected a non-empty string")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DecodeError(f"{what}: field '{key}' is {_short(value)}, expected a string")
    text = str(value)
    if required and not text.strip():
        raise DecodeError(f"{what}: field '{key}' is empty, expected a non-empty string")
    if len(text) > limit:
        raise DecodeError(
            f"{what}: field '{key}' has {len(text)} characters, expected at most {limit}"
        )
    return text


def parse_ts(value: object, what: str = "event") -> int:
    """Event time as epoch milliseconds, from an integer/float or an ISO-8601 string."""
    if isinstance(value, bool) or value is None:
        raise DecodeError(f"{what}: field 'ts' is {_short(value)}, expected epoch milliseconds")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise DecodeError(
                f"{what}: field 'ts' is {_short(value)}, expected epoch milliseconds or ISO-8601"
            ) from None
        if parsed.tzinfo is None:
            raise DecodeError(f"{what}: field 'ts' is {_short(value)}, expected a UTC offset")
        ms = int(parsed.timestamp() * 1000)
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise DecodeError(f"{what}: field 'ts' is {_short(value)}, expected a finite number")
        ms = int(value)
    else:
        raise DecodeError(f"{what}: field 'ts' is {_short(value)}, expected epoch milliseconds")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise DecodeError(
            f"{what}: field 'ts' is {_short(value)}, expected epoch milliseconds "
            "between 2000 and 2100"
        )
    return ms


def _optional_dict(data: dict[str, Any], key: str, what: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise DecodeError(f"{what}: field '{key}' is {_short(value)}, expected an object")


def _check_version(data: dict[str, Any], what: str) -> None:
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DecodeError(
            f"{what}: field 'schema_version' is {_short(version)}, expected {SCHEMA_VERSION}"
        )


def decode_event(raw: bytes | str) -> Event:
    """Decode and validate one event; raise `DecodeError` on anything wrong."""
    data = load_object(raw, "event")
    return event_from_dict(data)


def event_from_dict(data: dict[str, Any]) -> Event:
    _check_version(data, "event")
    user_id = _text(data, "user_id", "event", required=True, limit=MAX_ID_CHARS)
    item_id = _text(data, "item_id", "event", required=True, limit=MAX_ID_CHARS)
    kind = data.get("type")
    if kind not in EVENT_TYPES:
        raise DecodeError(
            f"event: field 'type' is {_short(kind)}, expected one of {', '.join(EVENT_TYPES)}"
        )
    event_type: EventType = kind
    session_id = _text(data, "session_id", "event", required=False, limit=MAX_ID_CHARS)
    assert user_id is not None and item_id is not None
    return Event(
        user_id=user_id,
        item_id=item_id,
        type=event_type,
        ts=parse_ts(data.get("ts")),
        session_id=session_id,
        context=_optional_dict(data, "context", "event"),
        params=_optional_dict(data, "params", "event"),
    )


def parse_price(value: object, what: str = "item") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DecodeError(f"{what}: field 'price' is {_short(value)}, expected a number")
    try:
        price = float(value)
    except ValueError:
        raise DecodeError(f"{what}: field 'price' is {_short(value)}, expected a number") from None
    if not math.isfinite(price) or price < 0 or price > MAX_PRICE:
        raise DecodeError(
            f"{what}: field 'price' is {_short(value)}, expected a number from 0 to {MAX_PRICE:g}"
        )
    return price


def decode_item(raw: bytes | str) -> Item:
    data = load_object(raw, "item")
    return item_from_dict(data)


def item_from_dict(data: dict[str, Any]) -> Item:
    _check_version(data, "item")
    item_id = _text(data, "item_id", "item", required=True, limit=MAX_ID_CHARS)
    deleted = data.get("deleted", False)
    if not isinstance(deleted, bool):
        raise DecodeError(f"item: field 'deleted' is {_short(deleted)}, expected true or false")
    assert item_id is not None
    return Item(
        item_id=item_id,
        name=_text(data, "name", "item", required=False, limit=MAX_TEXT_CHARS),
        category=_text(data, "category", "item", required=False, limit=MAX_TEXT_CHARS),
        brand=_text(data, "brand", "item", required=False, limit=MAX_TEXT_CHARS),
        price=parse_price(data.get("price")),
        deleted=deleted,
    )


def decode_recommendation(raw: bytes | str) -> Recommendation:
    data = load_object(raw, "recommendation")
    _check_version(data, "recommendation")
    try:
        items = [
            RecommendedItem(
                item_id=str(i["item_id"]), score=float(i["score"]), intent=int(i["intent"])
            )
            for i in data["items"]
        ]
        intents = [
            Intent(
                id=int(i["id"]),
                members=[str(m) for m in i["members"]],
                weight=float(i["weight"]),
                category=i.get("category"),
                brand=i.get("brand"),
                past=bool(i.get("past", False)),
            )
            for i in data["intents"]
        ]
        return Recommendation(
            user_id=str(data["user_id"]),
            session_id=str(data["session_id"]),
            items=items,
            intents=intents,
            model_version=str(data["model_version"]),
            event_ts=int(data["event_ts"]),
            emitted_ts=int(data["emitted_ts"]),
            item_id=data.get("item_id"),
            type=data.get("type"),
            reason=str(data.get("reason", "session")),
            extra=dict(data.get("extra") or {}),
        )
    except KeyError as exc:
        raise DecodeError(f"recommendation: field {exc} is missing") from None
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"recommendation: malformed field ({exc})") from None


def encode_session(session: Session) -> bytes:
    """A closed session for the `sessions` topic (the training job's input)."""
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "session_id": session.session_id,
            "user_id": session.user_id,
            "items": [c.item_id for c in session.clicks],
            "types": [c.type for c in session.clicks],
            "ts": [c.ts for c in session.clicks],
            "dropped": session.dropped,
        }
    )


def decode_session(raw: bytes | str) -> tuple[str, list[str], list[str], int]:
    """(user_id, item ids, event types, start ts) of a closed session message."""
    data = load_object(raw, "session")
    items, types, ts = data.get("items"), data.get("types"), data.get("ts")
    if not isinstance(items, list) or not isinstance(types, list) or not isinstance(ts, list):
        raise DecodeError("session: fields 'items', 'types' and 'ts' must be lists")
    if not (len(items) == len(types) == len(ts)) or not items:
        raise DecodeError(
            f"session: 'items', 'types', 'ts' differ in length or are empty "
            f"({len(items)}, {len(types)}, {len(ts)})"
        )
    if any(t not in EVENT_TYPES for t in types):
        raise DecodeError(f"session: 'types' holds a value outside {', '.join(EVENT_TYPES)}")
    return (
        str(data.get("user_id", "")),
        [str(i) for i in items],
        [str(t) for t in types],
        parse_ts(ts[0], "session"),
    )
