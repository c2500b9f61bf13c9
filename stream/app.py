"""The stream worker: a faust app that feeds `events` through `stream.pipeline.Pipeline`.

faust runs the consumer group, restores the session table (key: user, JSON; value: the
encoded state) from its changelog and runs the timers; everything it does beyond its public
API is in `stream.faust_adapter`. Each state is written with the partition of the event that
changed it, so the changelog's partitions line up with those of `events` and a restarted
worker restores exactly the users it serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any, NamedTuple, cast

import faust
from faust.types import TP
from faust.web import View

from ..models.config import Settings
from ..models.store import RemoteStore
from . import faust_adapter, metrics
from .api import Api, api_url, web_options
from .broker import free_port
from .kafka import Outbox, producer_config
from .pipeline import Pipeline
from .topics import SESSION_TABLE, TopicsGone, TopicWatch
from .watch import Watcher, load_model

log = logging.getLogger(__name__)
BATCH_MAX = 500
# A batch waits up to this long for more events: fewer, larger batches mean fewer, larger
# record batches for the outputs and the changelog, which the embedded broker serves cheaper.
BATCH_WITHIN_S = 0.02
QUIET_WITHIN_S = 0.005  # after a batch of a few events: light load, answer sooner
LINGER_MS = 5  # librdkafka's default: a batch's outputs go out as one request per partition
DELIVERY_ATTEMPTS = 5
IDLE_CHECK_S = 10.0
UPDATES_CHECK_S = 1.0
STATS_LOG_S = 10.0
GAUGES_S = 5.0
CLOSE_TIMEOUT_S = 30.0
TOPIC_CHECK_S = 10.0  # how often the worker checks that its topics are still on the broker


class Worker(NamedTuple):
    app: faust.App
    pipeline: Pipeline
    watcher: Watcher
    outbox: Outbox
    api: Api
    fatal: list[str]  # why the worker stopped itself, if it did


def build_app(
    settings: Settings,
    model_dir: Path,
    pipeline_type: type[Pipeline] = Pipeline,
    model_store: RemoteStore | None = None,
) -> Worker:
    """The worker, serving versions from `model_dir` (with a remote `model_store`: the cache
    its versions are copied into); `pipeline_type` replaces the pipeline (the benchmarks'
    faust floor)."""
    # Port 0: one free now, so that the URL announced to the group is the one served.
    port = settings.api.port or free_port(settings.api.address)
    url = api_url(settings, port)
    app = faust_adapter.make_app(settings, LINGER_MS, port, url, web_options(settings))
    serving = load_model(settings, model_dir)
    table = app.Table(SESSION_TABLE, partitions=settings.partitions, value_type=bytes)
    sessions, changelog = faust_adapter.session_store(table)
    pipeline = pipeline_type(settings, serving, sessions, changelog)
    held = faust_adapter.keep_standbys(table, pipeline.table.changed)
    watcher = Watcher(settings, model_dir, serving, model_store)
    outbox = Outbox(
        producer_config(settings, **{"linger.ms": LINGER_MS}),
        DELIVERY_ATTEMPTS,
        delivered={changelog: held},
    )
    events_topic = settings.topics.events
    pipeline.connect(outbox, watcher, faust_adapter.highwater(app, events_topic))
    metrics.observe_model(serving)
    events = app.topic(
        events_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    async def own(_app: faust.App, assigned: set[TP], **_: Any) -> None:
        """Only the partitions of `events` assigned now are this worker's to close."""
        pipeline.assigned({tp.partition for tp in assigned if tp.topic == events_topic})

    app.on_partitions_assigned.connect(cast(Any, own))  # faust's type names no arguments
    api = Api(
        settings,
        pipeline,
        url,
        owners=lambda: faust_adapter.partition_owners(app, events_topic),
        recovered=lambda: faust_adapter.recovered(app),
    )
    serve_pages(app, api)

    @app.agent(events)
    async def handle(stream: Any) -> None:
        batches = faust_adapter.take_batches(stream, BATCH_MAX, BATCH_WITHIN_S, QUIET_WITHIN_S)
        await pipeline.run(batches, stream.ack)

    @app.timer(interval=IDLE_CHECK_S)
    async def close_idle_sessions() -> None:
        out = pipeline.close_idle()
        if out.states or out.expired:
            await pipeline.publish(out)
            pipeline.count()

    @app.timer(interval=UPDATES_CHECK_S)
    async def follow_updates() -> None:
        pipeline.between_batches()

    @app.timer(interval=GAUGES_S)
    async def refresh_gauges() -> None:
        pipeline.refresh_gauges()  # idle partitions' lag, users restored from the changelog

    @app.timer(interval=STATS_LOG_S)
    async def log_stats() -> None:
        if pipeline.stats.events:
            log.info("%s", pipeline.stats.line())
        pipeline.stats.reset()

    topics = TopicWatch(settings, [events_topic])
    fatal: list[str] = []

    @app.timer(interval=TOPIC_CHECK_S)
    async def check_topics() -> None:
        problem = await asyncio.to_thread(topics.check)
        if problem and not fatal:
            fatal.append(problem)
            log.error("stopping: %s", problem)
            os.kill(os.getpid(), signal.SIGTERM)  # faust's own clean stop

    @app.task
    async def probe_loop() -> None:
        await metrics.probe_loop()

    @app.task
    async def start() -> None:
        watcher.start()
        faust_adapter.on_start(app)
        log.info("query API on %s (listening on %s:%d)", url, settings.api.address, port)

    async def stop_api(_app: faust.App, **_: Any) -> None:
        await api.close()

    app.on_before_shutdown.connect(cast(Any, stop_api))

    return Worker(app, pipeline, watcher, outbox, api, fatal)


def serve_pages(app: faust.App, api: Api) -> None:
    """The API's routes as pages of faust's web server."""
    for path, method, handler in api.routes():

        async def respond(_view: View, request: Any, _handler: Any = handler, **fields: Any) -> Any:
            return await _handler(request, **fields)

        app.page(path)(type(handler.__name__, (View,), {method: respond}))


def run_worker(
    settings: Settings,
    model_dir: Path,
    loglevel: str = "info",
    logging_config: dict[str, Any] | None = None,
    pipeline_type: type[Pipeline] = Pipeline,
    model_store: RemoteStore | None = None,
) -> None:
    """Run one worker until SIGINT/SIGTERM. `logging_config` (dictConfig) replaces faust's
    default console logging, e.g. for JSON lines."""
    metrics.serve(settings.metrics_port, settings.metrics_address)
    built = build_app(settings, model_dir, pipeline_type, model_store)
    worker = faust.Worker(built.app, loglevel=loglevel, quiet=True, logging_config=logging_config)
    try:
        worker.execute_from_commandline()
    finally:
        built.watcher.stop()
        left = built.outbox.close(CLOSE_TIMEOUT_S)
        if left:
            log.warning(
                "%d output messages undelivered at shutdown (their events are read again)", left
            )
        if built.fatal:
            raise TopicsGone(built.fatal[0])
