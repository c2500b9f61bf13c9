"""The query API's OpenAPI 3.1 description, built from the parameters and filters the code
takes; served at /openapi.json and kept in docs/openapi.json (a test holds them equal; write
it again with `python -m sessionrec.stream.openapi > docs/openapi.json`)."""

from __future__ import annotations

import json
from typing import Any

from ..models.codec import MAX_ID_CHARS
from ..models.config import Api, Limits, QueryDefaults, field_notes
from ..models.filters import LIST_FILTERS, MAX_FILTER_VALUES, NUMBER_FILTERS
from ..models.ranking import PARAMETER_KINDS
from ..models.records import EVENT_TYPES

_KIND = {bool: "boolean", int: "integer", float: "number"}
_FILTER_TEXT = {
    "categories": "only items of these categories (repeat the key for several)",
    "not_categories": "no items of these categories",
    "brands": "only items of these brands",
    "not_brands": "no items of these brands",
    "exclude": "never these item ids",
    "min_price": "only items with a price of at least this (items without a price are left out)",
    "max_price": "only items with a price of at most this",
}

_ITEMS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["item_id", "score", "intent"],
        "properties": {
            "item_id": {"type": "string"},
            "score": {"type": "number"},
            "intent": {"type": "integer", "description": "the intent that found it; -1: trending"},
        },
    },
}
_INTENTS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["id", "members", "weight"],
        "properties": {
            "id": {"type": "integer"},
            "members": {"type": "array", "items": {"type": "string"}},
            "weight": {"type": "number"},
            "category": {"type": ["string", "null"]},
            "brand": {"type": ["string", "null"]},
            "past": {"type": "boolean"},
        },
    },
}
_COMMON = {
    "items": _ITEMS,
    "model_version": {"type": "string", "description": "'none' before a model is loaded"},
    "reason": {
        "enum": ["session", "trending", "filtered"],
        "description": "session: from the items asked about; trending: nothing to go on "
        "(an unknown user, an empty session, no model yet); filtered: trending items that pass "
        "the filters, which match too few items (under 1 in 1,000) for the index to be searched",
    },
    "emitted_ts": {"type": "integer", "description": "when it was answered, ms since epoch"},
    "schema_version": {"const": 1},
}
_ERROR = {
    "description": "the request was refused",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error", "status"],
                "properties": {
                    "error": {"type": "string", "description": "one line naming what was wrong"},
                    "status": {"type": "integer"},
                },
            }
        }
    },
}


def _answer(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {**_COMMON, **properties}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query_parameters() -> list[dict[str, Any]]:
    defaults, limits, notes = QueryDefaults(), Limits(), field_notes(QueryDefaults)
    out: list[dict[str, Any]] = []
    for name in QueryDefaults.__slots__:
        value = getattr(defaults, name)
        schema: dict[str, Any] = {"type": _KIND[type(value)], "default": value}
        if name == "k":
            schema.update(minimum=1, maximum=limits.max_k)
        text = f"{notes[name]} (the default is the `query.{name}` setting)"
        out.append({"name": name, "in": "query", "description": text, "schema": schema})
    for name in LIST_FILTERS:
        array = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_FILTER_VALUES}
        out.append(
            {
                "name": name,
                "in": "query",
                "description": _FILTER_TEXT[name],
                "style": "form",
                "explode": True,
                "schema": array,
            }
        )
    for name in NUMBER_FILTERS:
        schema = {"type": "number", "minimum": 0}
        out.append(
            {"name": name, "in": "query", "description": _FILTER_TEXT[name], "schema": schema}
        )
    return out


def _path_id(name: str, text: str) -> dict[str, Any]:
    schema = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    return {"name": name, "in": "path", "required": True, "description": text, "schema": schema}


def _body() -> dict[str, Any]:
    event = {
        "type": "object",
        "required": ["item_id"],
        "properties": {
            "item_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
            "type": {"enum": list(EVENT_TYPES), "default": "view"},
        },
    }
    params = {name: {"type": _KIND[kind]} for name, kind in PARAMETER_KINDS.items()}
    filters: dict[str, Any] = {
        name: {"type": "array", "items": {"type": "string"}} for name in LIST_FILTERS
    }
    filters.update({name: {"type": "number", "minimum": 0} for name in NUMBER_FILTERS})
    schema = {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {
                "type": "array",
                "items": event,
                "maxItems": Api().max_items,
                "description": "the session's events, oldest first (`api.max_items` at most)",
            },
            "params": {"type": "object", "properties": params, "additionalProperties": False},
            "filters": {"type": "object", "properties": filters, "additionalProperties": False},
        },
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _spec() -> dict[str, Any]:
    errors = {"400": _ERROR, "401": _ERROR}
    user = _answer(
        "the user's answer now, as the `recommendations` topic would carry it",
        {
            "user_id": {"type": "string"},
            "session_id": {"type": "string", "description": "'none': no open session"},
            "intents": _INTENTS,
            "event_ts": {"type": "integer", "description": "the session's last event time"},
        },
    )
    similar = _answer("items like the item", {"item_id": {"type": "string"}})
    session = _answer("the session's answer", {"intents": _INTENTS})
    ready = {
        "description": "ready (200) once a model is loaded and the session table recovered; "
        "else 503",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    health = {"description": "the worker's event loop answers"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sessionrec query API",
            "version": "1",
            "description": "Served by every stream worker. A user's request may reach any "
            "worker: it is answered by the worker that owns the user's partition. With the "
            "`api.token` setting, every path but /healthz, /readyz and /openapi.json needs "
            "`Authorization: Bearer <token>`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/users/{user_id}/recommendations": {
                "get": {
                    "summary": "Recommendations for a user now (session and past intents)",
                    "parameters": [_path_id("user_id", "as in the events"), *_query_parameters()],
                    "responses": {"200": user, **errors, "503": _ERROR},
                }
            },
            "/v1/items/{item_id}/similar": {
                "get": {
                    "summary": "Items similar to one item (a product page)",
                    "parameters": [_path_id("item_id", "a catalog item"), *_query_parameters()],
                    "responses": {"200": similar, **errors, "404": _ERROR},
                }
            },
            "/v1/sessions/recommendations": {
                "post": {
                    "summary": "Recommendations for an anonymous session (nothing is stored)",
                    "requestBody": _body(),
                    "responses": {"200": session, **errors, "413": _ERROR},
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": health}}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {"200": ready, "503": ready}}},
        },
    }


SPEC: dict[str, Any] = _spec()


def text() -> str:
    """The description as docs/openapi.json holds it."""
    return json.dumps(SPEC, indent=2) + "\n"


if __name__ == "__main__":
    print(text(), end="")
