"""`sessionrec worker`, `replay` and `tail` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.config import Settings

log = logging.getLogger(__name__)


def reach_kafka(settings: Settings) -> None:
    """Stop with one line naming the cause (wrong credentials, untrusted certificate, no
    broker) within CONNECT_TIMEOUT_S, before a client library would retry for ever."""
    from stream.broker import CONNECT_TIMEOUT_S, wait_for_kafka

    wait_for_kafka(settings.client_config(), CONNECT_TIMEOUT_S)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from models.store import locate, mirror
    from stream.app import run_worker
    from stream.topics import partition_problem

    if args.metrics_port is not None:
        settings = dataclasses.replace(settings, metrics_port=args.metrics_port)
    level = "debug" if args.verbose else "info"
    config = None
    if settings.log_format == "json":
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "sessionrec.logs.JsonFormatter"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
            "root": {"level": level.upper(), "handlers": ["console"]},
        }
    reach_kafka(settings)
    problem = partition_problem(settings)
    if problem:
        raise ValueError(problem)
    model_dir, store = locate(settings.model_dir, settings.model_cache)
    if store is not None:
        try:
            mirror(store, model_dir)
        except Exception as exc:  # serve what the cache has; the watcher tries again
            log.error("model store %s: %s; serving what %s has", store.url, exc, model_dir)
    run_worker(settings, model_dir, loglevel=level, logging_config=config, model_store=store)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from stream.replay import produce_events, produce_items
    from training.data import read_events

    events, items, rejected = read_events(
        args.format, Path(args.file), Path(args.catalog) if args.catalog else None
    )
    if args.limit:
        events = events[: args.limit]
    reach_kafka(settings)
    if rejected:
        print(
            "skipped rows: " + ", ".join(f"{n} {r}" for r, n in rejected.most_common()),
            file=sys.stderr,
        )
    if items and not args.no_items:
        produce_items(settings, settings.topics.items, items)
        print(f"produced {len(items)} catalog items to {settings.topics.items}", file=sys.stderr)
    bar = tqdm(total=len(events), unit="ev", desc="replay", file=sys.stderr)
    started = time.perf_counter()
    n = produce_events(
        settings,
        settings.topics.events,
        events,
        rate=args.rate,
        on_sent=lambda i: bar.update(1) if i % 100 == 0 or i == len(events) else None,
    )
    bar.close()
    print(
        f"produced {n} events to {settings.topics.events} in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from stream.tail import tail

    reach_kafka(settings)
    return tail(
        settings,
        as_json=args.json,
        from_beginning=args.from_beginning,
        limit=args.max,
        timeout_s=args.timeout,
    )


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a stream worker (faust)",
        description="Consume events, keep sessions in a changelog-backed table, "
        "publish a recommendation per event. Follows items and model-updates "
        "and swaps models without stopping. Metrics on --metrics-port.",
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 9100, 0 = off)")
    common(p)
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser(
        "replay",
        help="produce events from a file to the events topic",
        description="Read events (and catalog items) from a file and produce "
        "them, keyed by user, in time order, optionally at a fixed rate.",
    )
    p.add_argument("file", help="events file (or directory for retailrocket)")
    p.add_argument("--format", choices=["jsonl", "diginetica", "retailrocket"], required=True)
    p.add_argument("--catalog", help="catalog JSONL for --format jsonl")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--limit", type=int, help="only the first N events")
    p.add_argument("--no-items", action="store_true", help="do not produce catalog items")
    common(p)
    p.set_defaults(handler=cmd_replay)

    p = sub.add_parser(
        "tail",
        help="print recommendations as they arrive",
        description="Follow the recommendations topic; a readable line per "
        "message, or the raw JSON with --json.",
    )
    p.add_argument("--json", action="store_true", help="raw JSON, one message per line")
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message")
    p.add_argument("--max", type=int, help="stop after N messages")
    p.add_argument("--timeout", type=float, help="stop after N seconds without messages")
    common(p)
    p.set_defaults(handler=cmd_tail)
