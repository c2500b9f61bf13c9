"""`sessionrec serve`: the stateless half of the query API, in a process of its own.

Similar items and ad-hoc sessions need no user's state: any process that holds the model and the
catalog can answer them. This one joins no consumer group and reads no events. It loads the
current version from the model store, follows `items` and `model-updates` with the worker's
watcher (`stream.watch`), and answers

    GET  /v1/items/{item_id}/similar
    POST /v1/sessions/recommendations
    GET  /healthz, /readyz, /openapi.json

with the workers' code (`stream.api`, `stream.pipeline`), so its answers equal theirs;
catalog upserts reach its index as in a worker (`stream.catalog`), off its event loop. A
user's request (`/v1/users/...`) belongs to the workers, who hold the sessions: here it gets a
404 that says so. Run as many as the request rate needs behind a Service of their own: the
stream workers then spend nothing on these requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from ..models.config import Settings
from ..models.store import RemoteStore
from . import metrics
from .api import Api, RequestError, api_url, web_options
from .broker import free_port
from .pipeline import Pipeline
from .watch import Watcher, load_model

log = logging.getLogger(__name__)
UPDATES_CHECK_S = 0.5  # how often a loaded model and catalog upserts are taken
USER_PATH = "/v1/users/{user_id}/recommendations"


async def _workers_only(request: web.Request, **_: Any) -> web.StreamResponse:
    raise RequestError(
        404, "a user's recommendations are answered by the stream workers (their Service)"
    )


def build(
    settings: Settings, model_dir: Path, port: int, store: RemoteStore | None = None
) -> tuple[web.Application, Pipeline, Watcher, Api]:
    """The application, listening on `port`, over a pipeline that holds no sessions and a
    watcher that feeds it."""
    serving = load_model(settings, model_dir)
    pipeline = Pipeline(settings, serving, {})
    watcher = Watcher(settings, model_dir, serving, store)
    pipeline.connect(outbox=_NoOutputs(), updates=watcher)
    metrics.observe_model(serving)
    api = Api(settings, pipeline, api_url(settings, port), lambda: {}, lambda: True)
    app = web.Application(**web_options(settings))
    for path, method, handler in api.routes():
        chosen = _workers_only if path == USER_PATH else handler

        async def route(request: web.Request, _handler: Any = chosen) -> web.StreamResponse:
            response: web.StreamResponse = await _handler(request, **request.match_info)
            return response

        app.router.add_route(method.upper(), path, route)
    return app, pipeline, watcher, api


async def serve(settings: Settings, model_dir: Path, store: RemoteStore | None = None) -> None:
    """Answer requests until SIGINT/SIGTERM."""
    port = settings.api.port or free_port(settings.api.address)
    app, pipeline, watcher, api = build(settings, model_dir, port, store)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.api.address, port).start()
    watcher.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    probe = asyncio.ensure_future(metrics.probe_loop())
    log.info(
        "query API on %s for similar items and sessions (listening on %s:%d)",
        api.url,
        settings.api.address,
        port,
    )
    try:
        while not stop.is_set():
            pipeline.between_batches()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), UPDATES_CHECK_S)
    finally:
        log.info("stopping")
        probe.cancel()
        watcher.stop()
        await runner.cleanup()
        await api.close()
        pipeline.searcher.shutdown(wait=False)


class _NoOutputs:
    """This process publishes nothing: the pipeline's outbox, never sent to."""

    def send(self, messages: list[Any]) -> asyncio.Future[None]:
        raise RuntimeError("sessionrec serve publishes nothing")

    def take_retried(self) -> int:
        return 0

    def take_dropped(self) -> dict[str, int]:
        return {}
