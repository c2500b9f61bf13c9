"""Typed records for the three messages: events, items, recommendations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

SCHEMA_VERSION = 1

EventType = Literal["view", "cart", "remove_from_cart", "buy"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "cart", "remove_from_cart", "buy")


@dataclass(slots=True)
class Event:
    """One interaction of a user with an item. `ts` is event time in epoch milliseconds."""

    user_id: str
    item_id: str
    type: EventType
    ts: int
    session_id: str | None = None
    context: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog upsert. Missing metadata is `None`; `deleted` removes the item from serving."""

    item_id: str
    name: str | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    deleted: bool = False
    schema_version: int = SCHEMA_VERSION


class RecommendedItem(TypedDict):
    """One item of a recommendation, as the message carries it (a plain dict: an answer holds
    k of them, built and encoded for every event)."""

    item_id: str
    score: float
    intent: int


@dataclass(slots=True)
class Intent:
    """A cluster of the session's items: its members, weight and dominant metadata."""

    id: int
    members: list[str]
    weight: float
    category: str | None = None
    brand: str | None = None
    past: bool = False


@dataclass(slots=True)
class Recommendation:
    user_id: str
    session_id: str
    items: list[RecommendedItem]
    intents: list[Intent]
    model_version: str
    event_ts: int
    emitted_ts: int
    item_id: str | None = None
    type: str | None = None
    reason: str = "session"
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
