"""`sessionrec worker`, `replay` and `tail` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionrec.models.config import Settings

log = logging.getLogger(__name__)


def reach_kafka(settings: Settings) -> None:
    """Stop with one line naming the cause (wrong credentials, untrusted certificate, no
    broker) within CONNECT_TIMEOUT_S, before a client library would retry for ever."""
    from sessionrec.stream.broker import CONNECT_TIMEOUT_S, wait_for_kafka

    wait_for_kafka(settings.client_config(), CONNECT_TIMEOUT_S)


def _ports(args: argparse.Namespace, settings: Settings) -> Settings:
    if args.metrics_port is not None:
        settings = dataclasses.replace(settings, metrics_port=args.metrics_port)
    if args.api_port is not None:
        api = dataclasses.replace(settings.api, port=args.api_port)
        settings = dataclasses.replace(settings, api=api)
    return settings


def _models(settings: Settings) -> tuple[Path, Any]:
    """The local model directory (with a remote store: its cache, filled now) and the store."""
    from sessionrec.models.store import locate, mirror

    model_dir, store = locate(settings.model_dir, settings.model_cache)
    if store is not None:
        try:
            mirror(store, model_dir, settings.keep_versions)
        except Exception as exc:  # serve what the cache has; the watcher tries again
            log.error("model store %s: %s; serving what %s has", store.url, exc, model_dir)
    return model_dir, store


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from sessionrec.stream import metrics
    from sessionrec.stream.serve import serve

    settings = _ports(args, settings)
    reach_kafka(settings)
    model_dir, store = _models(settings)
    metrics.serve(settings.metrics_port, settings.metrics_address)
    asyncio.run(serve(settings, model_dir, store))
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.stream.app import run_worker
    from sessionrec.stream.topics import partition_problem

    settings = _ports(args, settings)
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
    model_dir, store = _models(settings)
    run_worker(settings, model_dir, loglevel=level, logging_config=config, model_store=store)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from sessionrec.stream.replay import produce_events, produce_items
    from sessionrec.training.data import read_events

    events, items, rejected = read_events(
        args.format, Path(args.file), Path(args.catalog) if args.catalog else None
    )
    if args.limit is not None:
        if args.limit < 0:
            raise ValueError(f"--limit is {args.limit}: give a number of events, 0 or more")
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
        on_sent=progress(bar, len(events)),
    )
    bar.close()
    print(
        f"produced {n} events to {settings.topics.events} in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from collections import Counter

    from tqdm import tqdm

    from sessionrec.stream.replay import produce_items
    from sessionrec.training.data import load_catalog

    rejected: Counter[str] = Counter()
    items = load_catalog(Path(args.file), rejected)
    reach_kafka(settings)
    topic = settings.topics.items
    bar = tqdm(
        total=len(items), unit="item", desc="catalog", file=sys.stderr, disable=args.no_progress
    )
    started = time.perf_counter()
    n = produce_items(settings, topic, items, on_sent=progress(bar, len(items)))
    bar.close()
    bad = ", ".join(f"{count} {reason}" for reason, count in rejected.most_common()) or "none"
    print(
        f"loaded {n:,} catalog items from {args.file} to {topic} in "
        f"{time.perf_counter() - started:.1f}s; rejected rows: {bad}",
        file=sys.stderr,
    )
    return 0


def progress(bar: Any, total: int, every: int = 100) -> Callable[[int], None]:
    """`on_sent` for a progress bar: moves it to the count sent, every `every` events and at
    the last (so that it counts events, and its rate is events per second)."""

    def sent(n: int) -> None:
        if n % every == 0 or n == total:
            bar.update(n - bar.n)

    return sent


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.stream.tail import tail

    reach_kafka(settings)
    return tail(
        settings,
        as_json=args.json,
        from_beginning=args.from_beginning,
        limit=args.max,
        timeout_s=args.timeout,
    )


def cmd_recommend(args: argparse.Namespace, settings: Settings) -> int:
    """Ask a worker's query API and print the answer."""
    import urllib.parse

    query: list[tuple[str, str]] = []
    if args.k is not None:
        query.append(("k", str(args.k)))
    for pair in args.param or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE (e.g. diversity=0.3)")
        query.append((name, value))
    body = None
    if args.user is not None:
        path = f"/v1/users/{urllib.parse.quote(args.user, safe='')}/recommendations"
    elif args.item is not None:
        path = f"/v1/items/{urllib.parse.quote(args.item, safe='')}/similar"
    else:
        events = []
        for entry in args.session:
            item, _, kind = entry.rpartition(":") if ":" in entry else (entry, "", "view")
            events.append({"item_id": item, "type": kind})
        body = json.dumps({"events": events, **_session_args(query)}).encode()
        path, query = "/v1/sessions/recommendations", []
    base = (args.url or settings.api.url or f"http://127.0.0.1:{settings.api.port}").rstrip("/")
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    answer = ask_api(url, body, settings.api.token, args.timeout)
    if args.json:
        print(json.dumps(answer))
        return 0
    print(f"{answer.get('reason')} answer, model {answer.get('model_version')}:")
    intents = {i["id"]: i for i in answer.get("intents", [])}
    for rank, item in enumerate(answer["items"], 1):
        intent = intents.get(item["intent"])
        why = (
            ""
            if item["intent"] < 0
            else (
                f"  intent {item['intent']}"
                if intent is None
                else (
                    f"  intent {item['intent']} ({intent.get('category') or '-'}, "
                    f"{'past' if intent.get('past') else 'now'})"
                )
            )
        )
        print(f"{rank:>3}. {item['item_id']:<20} {item['score']:.3f}{why}")
    return 0


def ask_api(url: str, body: bytes | None, token: str, timeout_s: float) -> Any:
    """GET `url` of a worker's query API (POST with a JSON `body`) and return the answer's
    JSON; ValueError in one line naming the API's error or why it could not be reached."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise ValueError(f"{url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(
            f"cannot reach the query API at {url} ({reason}): is a worker running?"
        ) from None


def _session_args(query: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """--param pairs as a session request's `params` and `filters` (lists for list filters,
    numbers for the rest; the API names what it refuses)."""
    from sessionrec.models.filters import LIST_FILTERS, NUMBER_FILTERS

    params: dict[str, Any] = {}
    filters: dict[str, Any] = {}
    for name, value in query:
        if name in LIST_FILTERS:
            filters.setdefault(name, []).append(value)
            continue
        try:
            number = json.loads(value)
        except ValueError:
            number = value
        (filters if name in NUMBER_FILTERS else params)[name] = number
    return {"params": params, "filters": filters}


def _port_flags(p: argparse.ArgumentParser) -> None:
    """The flags `_ports` reads."""
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 9100, 0 = off)")
    p.add_argument("--api-port", type=int, help="query API port (default 8080, 0 = any free port)")


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a stream worker (faust)",
        description="Consume events, keep sessions in a changelog-backed table, "
        "publish a recommendation per event. Follows items and model-updates "
        "and swaps models without stopping. Metrics on --metrics-port.",
    )
    _port_flags(p)
    common(p)
    p.set_defaults(handler=cmd_worker)

    p = sub.add_parser(
        "serve",
        help="answer similar-item and session requests apart from the workers",
        description="Serve the query API's stateless requests (GET /v1/items/ID/similar, POST "
        "/v1/sessions/recommendations, /healthz, /readyz) from the current model, following "
        "items and model-updates as a worker does, without joining the workers' consumer "
        "group: the workers' event loops then spend nothing on them. A user's request gets a "
        "404 here (the workers answer it). Run several behind one address for more requests/s.",
    )
    _port_flags(p)
    common(p)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser(
        "recommend",
        help="ask a worker's query API",
        description="Ask the query API of a running worker (any worker: a user's request is "
        "answered by the worker that owns the user) and print the list. The token, if the "
        "API needs one, comes from the api.token setting (SESSIONREC_API_TOKEN).",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--user", help="recommendations for this user now")
    what.add_argument("--item", help="items similar to this item")
    what.add_argument(
        "--session",
        nargs="+",
        metavar="ITEM[:TYPE]",
        help="an anonymous session, oldest first (TYPE: view, cart, remove_from_cart, buy)",
    )
    p.add_argument("-k", type=int, help="how many items")
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a query parameter or filter, e.g. diversity=0.3 or brands=acme (repeatable)",
    )
    p.add_argument("--url", help="the API (default: the api.url setting, or 127.0.0.1:api.port)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    common(p)
    p.set_defaults(handler=cmd_recommend)

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
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="produce only the first N events (0: none, only the catalog items; default: all)",
    )
    p.add_argument("--no-items", action="store_true", help="do not produce catalog items")
    common(p)
    p.set_defaults(handler=cmd_replay)

    p = sub.add_parser(
        "catalog",
        help="send a catalog file to the items topic",
        description="'catalog load FILE': read catalog items (JSONL, one item per line: "
        "item_id, name, category, brand, price; docs/integration.md) and send each to the items "
        "topic, keyed by item id, where workers and training take it. Rows that are not items "
        "are counted by reason and skipped; loading the same file again changes nothing.",
    )
    p.add_argument("action", choices=["load"])
    p.add_argument("file", help="catalog JSONL file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    common(p)
    p.set_defaults(handler=cmd_catalog)

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
