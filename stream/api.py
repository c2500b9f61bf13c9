"""The workers' HTTP query API, served by faust's web server (aiohttp) on every worker.

    GET  /v1/users/{user_id}/recommendations   the user's answer now (routed to its owner)
    GET  /v1/items/{item_id}/similar           items like one item (answered by any worker)
    POST /v1/sessions/recommendations          an anonymous session's answer (nothing stored)
    GET  /healthz, /readyz, /openapi.json

A user's session lives on the worker that owns the user's partition of `events`. A request
for a user that reaches another worker is forwarded once to the owner, whose URL every worker
learns from the consumer group's assignment (faust's assignor shares each member's URL); a
forwarded request is answered where it lands. `stream.app` serves the routes as faust pages.
Answers are built by `stream.pipeline.Pipeline` with the code that answers events, so a user's
answer equals the last one on the topic when asked with the same parameters.

Query parameters (GET) and the body's `params` (POST) are the query-time parameters an
event's `params` takes; filters narrow the answer (models/filters.py). Bad input gets a 400
whose JSON `error` names the parameter; every error is JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ..models.codec import MAX_ID_CHARS, answer_shared, encode, encode_answer
from ..models.config import QueryDefaults, Settings
from ..models.filters import LIST_FILTERS, NUMBER_FILTERS, Filters, filters_from
from ..models.ranking import PARAMETER_KINDS, params_from
from ..models.records import EVENT_TYPES, Recommendation
from . import metrics, openapi
from .kafka import partition_of
from .pipeline import Pipeline

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 512 * 1024
FORWARD_TIMEOUT_S = 2.0
RETRY_AFTER_S = 1
FORWARDED = "X-Sessionrec-Forwarded-By"  # set on a request forwarded to a partition's owner
# A forwarded request's nonce, time and signature, and the owner's signature of its answer.
NONCE, SIGNED_AT, SIGNATURE = "X-Sessionrec-Nonce", "X-Sessionrec-Time", "X-Sessionrec-Signature"
SIGNED_WITHIN_S = 30.0  # a forwarded request signed longer ago than this is refused
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})  # no token needed
JSON = "application/json"


class RequestError(ValueError):
    """A request the API refuses: HTTP `status` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def api_url(settings: Settings, port: int) -> str:
    """The URL other workers reach this one at (`api.url`, or the address and port)."""
    if settings.api.url:
        return settings.api.url
    host = settings.api.address
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{port}"


def web_options(settings: Settings) -> dict[str, Any]:
    """aiohttp application options: the body limit and the middleware that checks the token
    and turns every error into JSON (those of aiohttp's HTTP parser too: `json_parse_errors`)."""
    json_parse_errors()
    guard = _guard(settings.api.token, cluster_key(settings))
    return {"client_max_size": MAX_BODY_BYTES, "middlewares": [guard]}


def json_parse_errors() -> None:
    """Answer a request aiohttp's HTTP parser refuses (a malformed request line or header,
    before any middleware runs) with the API's JSON error and one log line, where aiohttp
    answers plain text and logs a traceback. Replaces `RequestHandler.handle_error` for the
    client errors (status < 500) of every aiohttp server in the process (the worker's, which
    faust builds, and `sessionrec serve`'s); server errors keep aiohttp's own handling."""
    from aiohttp import web_protocol

    handler = web_protocol.RequestHandler
    if getattr(handler.handle_error, "sessionrec", False):
        return
    original = handler.handle_error

    def handle_error(
        self: Any,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return original(self, request, status, exc, message)
        why = message or (type(exc).__name__ if exc is not None else "malformed")
        why = (why.splitlines() or ["malformed"])[0][:200]
        log.warning("query API: refused a malformed HTTP request from %s: %s", request.remote, why)
        response = error(status, f"malformed HTTP request: {why}")
        response.force_close()
        return response

    handle_error.sessionrec = True  # type: ignore[attr-defined]
    handler.handle_error = handle_error  # type: ignore[method-assign]


def cluster_key(settings: Settings) -> bytes:
    """The key the workers sign forwarded requests and their answers with: `api.cluster_secret`,
    else one derived from `api.token` (never the token itself, which a request never carries to
    another worker); empty when neither is set."""
    if settings.api.cluster_secret:
        return settings.api.cluster_secret.encode()
    if settings.api.token:
        return hmac.digest(settings.api.token.encode(), b"sessionrec forwarding", "sha256")
    return b""


def _sign(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\n".join(parts).encode(), "sha256").hexdigest()


def forwarded_by_member(key: bytes, request: web.Request) -> bool:
    """Whether `request` was forwarded by a worker that holds the cluster key, recently."""
    h = request.headers
    try:
        fresh = abs(time.time() - float(h.get(SIGNED_AT, "nan"))) <= SIGNED_WITHIN_S
    except ValueError:
        return False
    want = _sign(key, h.get(NONCE, ""), h.get(SIGNED_AT, ""), request.method, request.path_qs)
    return bool(key) and fresh and hmac.compare_digest(h.get(SIGNATURE, ""), want)


def _answer_signature(key: bytes, nonce: str, status: int, body: bytes) -> str:
    return _sign(key, nonce, str(status), hashlib.sha256(body).hexdigest())


def _guard(token: str, key: bytes) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        response = await _checked_call(request, handler)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        metrics.observe_request(route, response.status, time.perf_counter() - started)
        return response

    async def _checked_call(request: web.Request, handler: Any) -> web.StreamResponse:
        if FORWARDED in request.headers and key and not forwarded_by_member(key, request):
            return error(401, "forwarded request not signed with the cluster key (or too old)")
        if token and request.path not in OPEN_PATHS and FORWARDED not in request.headers:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error(401, "missing or wrong bearer token", WWW_Authenticate="Bearer")
        try:
            response: web.StreamResponse = await handler(request)
        except RequestError as exc:
            if exc.status == 503:  # the group is moving partitions: soon answered again
                return error(503, str(exc), Retry_After=str(RETRY_AFTER_S))
            return error(exc.status, str(exc))
        except web.HTTPNotFound:
            return error(404, f"no such path: {request.path[:200]}")
        except web.HTTPException as exc:  # wrong method, body too large
            return error(exc.status, f"{exc.reason}: {request.method} {request.path[:200]}")
        except Exception as exc:  # a fault here: logged, answered, and the worker goes on
            log.error(
                "query API: %s %s failed (%s: %s)",
                request.method,
                request.path[:200],
                type(exc).__name__,
                exc,
            )
            return error(500, "internal error (the worker logged it)")
        return response

    return guard


def error(status: int, message: str, **headers: str) -> web.Response:
    head = {name.replace("_", "-"): value for name, value in headers.items()}
    body = orjson.dumps({"error": message, "status": status})
    return web.Response(body=body, status=status, content_type=JSON, headers=head)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


# -- Parameters --------------------------------------------------------------------------------


def query_args(settings: Settings, query: Mapping[str, str]) -> tuple[QueryDefaults, Filters]:
    """A GET request's query string as parameters and filters: list filters repeat their key
    (`?brands=a&brands=b`); anything unknown or malformed raises RequestError 400."""
    params: dict[str, Any] = {}
    filters: dict[str, Any] = {}
    getall = getattr(query, "getall", None)
    for name in dict.fromkeys(query):
        value = query[name]
        if name in LIST_FILTERS:
            filters[name] = list(getall(name)) if getall else [value]
        elif name in NUMBER_FILTERS:
            filters[name] = _number(name, value, float)
        elif name in PARAMETER_KINDS:
            params[name] = _number(name, value, PARAMETER_KINDS[name])
        else:
            raise RequestError(400, f"unknown parameter {name[:40]!r}")
    return _checked(settings, params, filters)


def _number(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise RequestError(400, f"{name} is {text[:40]!r}, expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise RequestError(400, f"{name} is {text[:40]!r}, expected {kind.__name__}") from None


def _checked(
    settings: Settings, params: dict[str, Any] | None, filters: dict[str, Any] | None
) -> tuple[QueryDefaults, Filters]:
    try:
        return (
            params_from(settings.query, params, settings.limits),
            filters_from(filters),
        )
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


def session_body(
    settings: Settings, raw: bytes
) -> tuple[list[tuple[str, str]], QueryDefaults, Filters]:
    """A session request's body: its events as (item_id, type), parameters and filters."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body is not a JSON object")
    unknown = set(data) - {"events", "params", "filters"}
    if unknown:
        raise RequestError(400, f"body has unknown field {sorted(unknown)[0][:40]!r}")
    events = data.get("events")
    if not isinstance(events, list):
        found = "missing" if events is None else f"{str(events)[:40]!r}"
        raise RequestError(400, f"body field 'events' is {found}, expected a list")
    if len(events) > settings.api.max_items:
        raise RequestError(400, f"events has {len(events)} items, at most {settings.api.max_items}")
    clicks = [_click(i, e) for i, e in enumerate(events)]
    for name in ("params", "filters"):
        if not isinstance(data.get(name, {}), dict):
            raise RequestError(400, f"body field {name!r} is not an object")
    params, filters = _checked(settings, data.get("params"), data.get("filters"))
    return clicks, params, filters


def _click(i: int, event: Any) -> tuple[str, str]:
    if not isinstance(event, dict):
        raise RequestError(400, f"events[{i}] is not an object")
    item, kind = event.get("item_id"), event.get("type", "view")
    if not isinstance(item, str) or not 0 < len(item) <= MAX_ID_CHARS:
        raise RequestError(400, f"events[{i}].item_id is not a string of 1 to {MAX_ID_CHARS}")
    if kind not in EVENT_TYPES:
        raise RequestError(
            400, f"events[{i}].type is {str(kind)[:40]!r}, expected one of {', '.join(EVENT_TYPES)}"
        )
    return item, kind


# -- Answers -----------------------------------------------------------------------------------


ANSWERED_BY = "X-Sessionrec-Answered-By"  # the URL of the worker that answered
# The fields of an answer about no user (similar items, an ad-hoc session).
ANONYMOUS_FIELDS = ("items", "intents", "model_version", "emitted_ts", "reason", "schema_version")


def _answer(body: bytes, by: str) -> web.Response:
    """An encoded answer, saying which worker answered."""
    response = web.Response(body=body, content_type=JSON)
    response.headers[ANSWERED_BY] = by
    return response


def _anonymous(answer: Recommendation, *drop: str) -> bytes:
    return encode({name: getattr(answer, name) for name in ANONYMOUS_FIELDS if name not in drop})


class Api:
    """The routes, over one worker's pipeline. `owners` gives each partition of `events`
    the URL of the worker it is assigned to; `recovered` says whether the session table has
    been restored."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        url: str,
        owners: Callable[[], dict[int, str]],
        recovered: Callable[[], bool],
    ):
        self.settings = settings
        self.pipeline = pipeline
        self.url = url
        self.owners = owners
        self.recovered = recovered
        self.key = cluster_key(settings)
        self._client: aiohttp.ClientSession | None = None
        self._refused: set[str] = set()  # members whose answers failed their signature

    def routes(self) -> list[tuple[str, str, Callable[..., Awaitable[web.StreamResponse]]]]:
        """(path, method, handler): a handler takes the request and the path's fields."""
        return [
            ("/v1/users/{user_id}/recommendations", "get", self.user),
            ("/v1/items/{item_id}/similar", "get", self.similar),
            ("/v1/sessions/recommendations", "post", self.session),
            ("/healthz", "get", self.health),
            ("/readyz", "get", self.ready),
            ("/openapi.json", "get", self.description),
        ]

    async def user(self, request: web.Request, user_id: str) -> web.StreamResponse:
        params, filters = query_args(self.settings, request.query)
        partition = partition_of(user_id.encode(), self.settings.partitions)
        if not request.headers.get(FORWARDED):
            owner = self.owners().get(partition)
            if owner is None:
                raise RequestError(503, f"no worker owns partition {partition} now: retry")
            if owner != self.url:
                return await self._forward(request, owner, partition)
        owned = self.pipeline.table.owned
        if owned is not None and partition not in owned:
            raise RequestError(503, f"partition {partition} is moving to another worker: retry")
        body = None if request.query else self.pipeline.latest_answer(user_id)
        if body is None:
            answer = self.pipeline.for_user(user_id, params, filters)
            body = encode_answer(user_id, answer.event_ts, answer.emitted_ts, answer_shared(answer))
        response = _answer(body, self.url)
        if request.headers.get(FORWARDED) and self.key:
            nonce = request.headers.get(NONCE, "")
            response.headers[SIGNATURE] = _answer_signature(self.key, nonce, 200, body)
        return response

    async def _forward(self, request: web.Request, owner: str, partition: int) -> web.Response:
        """Ask the partition's owner, signed with the cluster key (the client's token stays
        here), and pass its answer on only if the owner signed it with the same key: a member
        that announces its own URL without the key gets no token and answers nobody."""
        if self._client is None:
            timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
            self._client = aiohttp.ClientSession(timeout=timeout)
        headers = {FORWARDED: self.url}
        nonce, signed_at = secrets.token_hex(16), f"{time.time():.3f}"
        if self.key:
            signature = _sign(self.key, nonce, signed_at, "GET", request.path_qs)
            headers.update({NONCE: nonce, SIGNED_AT: signed_at, SIGNATURE: signature})
        try:
            async with self._client.get(owner + request.path_qs, headers=headers) as response:
                body = await response.read()
                signed = response.headers.get(SIGNATURE, "")
                status = response.status
                answered_by = response.headers.get(ANSWERED_BY, owner)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RequestError(
                503, f"the owner of partition {partition} did not answer ({type(exc).__name__})"
            ) from None
        if self.key and status == 200:
            want = _answer_signature(self.key, nonce, status, body)
            if not hmac.compare_digest(signed, want):
                self._distrust(owner, partition)
                raise RequestError(
                    502,
                    f"the worker announced as the owner of partition {partition} did not "
                    "sign its answer with the cluster key",
                )
        forwarded = web.Response(body=body, status=status, content_type=JSON)
        forwarded.headers[ANSWERED_BY] = answered_by
        return forwarded

    def _distrust(self, owner: str, partition: int) -> None:
        if owner not in self._refused:
            self._refused.add(owner)
            log.warning(
                "query API: %s, announced as the owner of partition %d, answered without the "
                "cluster key's signature; its answers are refused (is api.cluster_secret the "
                "same on every worker?)",
                owner[:200],
                partition,
            )

    async def similar(self, request: web.Request, item_id: str) -> web.StreamResponse:
        params, filters = query_args(self.settings, request.query)
        answer = self.pipeline.similar(item_id, params, filters)
        if answer is None:
            raise RequestError(404, f"item {item_id[:MAX_ID_CHARS]!r} is not in the catalog")
        return _answer(_anonymous(answer, "intents"), self.url)

    async def session(self, request: web.Request) -> web.StreamResponse:
        clicks, params, filters = session_body(self.settings, await request.read())
        answer = self.pipeline.for_session(clicks, params, filters)
        return _answer(_anonymous(answer), self.url)

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        serving = self.pipeline.serving
        recovered = self.recovered()
        state = {
            "ready": serving is not None and recovered,
            "model_version": serving.version if serving is not None else None,
            "recovered": recovered,
        }
        return _json(state, 200 if state["ready"] else 503)

    async def description(self, request: web.Request) -> web.Response:
        return _json(openapi.SPEC)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
