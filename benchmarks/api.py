"""`sessionrec bench api`: the query API of one worker asked over HTTP while the worker also
takes a steady event load, next to the same event load alone.

Runs, each on a broker and worker of its own: events alone, events with /healthz requests (the
HTTP server's floor), with user requests, with similar-item requests, with session requests,
with similar-item and session requests to a `sessionrec serve` process beside the worker
(`@serve`), events alone again. The requests
come from a real HTTP client (aiohttp) in a process of its own, on a fixed schedule (open
loop: a slow answer does not delay the next request); each request's latency is from the
moment it was due to its whole answer read, so time a request waited for the client counts.
All on this machine: the broker, the worker, the event generator and the HTTP client share
its cores.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sessionrec.models.config import Settings
from sessionrec.stream.broker import EmbeddedBroker
from sessionrec.stream.launch import WorkerProcess, on_local_broker

# What each run asks alongside the events: /healthz first, the HTTP server's floor (no
# ranking), then the three query endpoints of the worker, then the two stateless ones of a
# `sessionrec serve` process beside it (@serve), as docs/operating.md advises to deploy them.
ENDPOINTS = ("health", "user", "item", "session", "item@serve", "session@serve")
SESSION_EVENTS = 4  # events of one ad-hoc session request
REQUEST_TIMEOUT_S = 5.0
# Gorse's published benchmark (its documentation): item-based neighbours, /10 items, mean.
GORSE_ITEM_MEAN_MS = 2.21


@dataclass(frozen=True, slots=True)
class ApiResult:
    endpoint: str  # health, user, item or session
    rate: float  # requests/s offered
    sent: int
    ok: int  # answered 200
    failed: int  # other status, or no answer within REQUEST_TIMEOUT_S
    from_session: int  # answers with reason "session" (the rest: trending)
    answered_per_s: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_pct: float  # the HTTP client's own CPU, in % of one core (it shares the machine)


def _paths(endpoint: str, users: int, items: list[str], n: int, seed: int) -> list[Any]:
    """`n` requests of one kind: a GET path, or (path, body) for a session."""
    endpoint = endpoint.partition("@")[0]
    rng = np.random.default_rng(seed)
    if endpoint == "health":
        return ["/healthz"] * n
    if endpoint == "user":
        return [f"/v1/users/bench-{rng.integers(users)}/recommendations" for _ in range(n)]
    if endpoint == "item":
        return [f"/v1/items/{items[rng.integers(len(items))]}/similar?k=10" for _ in range(n)]
    out = []
    for _ in range(n):
        chosen = [items[i] for i in rng.integers(len(items), size=SESSION_EVENTS)]
        body = {"events": [{"item_id": i, "type": "view"} for i in chosen]}
        out.append(("/v1/sessions/recommendations", orjson.dumps(body)))
    return out


def ask(
    url: str,
    endpoint: str,
    rate: float,
    seconds: float,
    users: int,
    items: list[str],
    token: str,
    out: Any,  # a multiprocessing queue: (latencies ms, failed, from session, sent, CPU s)
) -> None:
    """The HTTP client (own process): `rate` requests/s for `seconds`, each on its own task."""
    n = int(rate * seconds)
    requests = _paths(endpoint, users, items, n, seed=11)
    cpu = time.process_time()
    latencies, failed, from_session, sent = asyncio.run(_ask_all(url, requests, rate, token))
    out.put((latencies, failed, from_session, sent, time.process_time() - cpu))


async def _ask_all(
    url: str, requests: list[Any], rate: float, token: str
) -> tuple[list[float], int, int, int]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    latencies: list[float] = []
    failed = from_session = 0

    async with aiohttp.ClientSession(timeout=timeout, headers=headers, connector=connector) as s:

        async def one(request: Any, due: float) -> None:
            nonlocal failed, from_session
            try:
                if isinstance(request, tuple):
                    answer = s.post(url + request[0], data=request[1])
                else:
                    answer = s.get(url + request)
                async with answer as response:
                    body = await response.read()
                    from_session += b'"reason":"session"' in body
                    if response.status != 200:
                        failed += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
                return
            latencies.append((time.perf_counter() - due) * 1000)

        start = time.perf_counter() + 0.1
        tasks = []
        for i, request in enumerate(requests):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(one(request, due)))
        await asyncio.gather(*tasks)
    return latencies, failed, from_session, len(requests)


def summary(
    endpoint: str, rate: float, got: tuple[list[float], int, int, int, float], span_s: float
) -> ApiResult:
    latencies, failed, from_session, sent, client_s = got
    lat = np.array(latencies or [0.0])
    p50, p99 = np.percentile(lat, [50, 99])
    return ApiResult(
        endpoint,
        rate,
        sent,
        len(latencies),
        failed,
        from_session,
        len(latencies) / max(span_s, 1e-9),
        float(lat.mean()),
        float(p50),
        float(p99),
        float(lat.max()),
        100 * client_s / max(span_s, 1e-9),
    )


def bench_api(
    settings: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    event_rate: float,
    request_rate: float,
    seconds: float,
    users: int,
    log_dir: Path,
    rounds: int = 1,
) -> tuple[list[ApiResult], list[dict[str, Any]]]:
    """`rounds` times: events alone, then with each endpoint's requests, then alone again,
    each run on a broker and worker of its own (the embedded broker serves a reader more
    slowly as its log fills, so a run on one broker would also pay for the runs before it).
    Returns the API results and each run's events (`benchmarks.stream.RateResult` as a dict,
    with `alongside`: the endpoint asked meanwhile, or "none", and the worker's CPU)."""
    items = sorted({item for session in sessions for item in session})
    results: list[ApiResult] = []
    events: list[dict[str, Any]] = []
    for _ in range(rounds):
        for alongside in ("none", *ENDPOINTS, "none"):
            load = Load(event_rate, request_rate, seconds, users)
            asked, run = _run(settings, model_dir, sessions, items, alongside, load, log_dir)
            if asked is not None:
                results.append(asked)
                print(_row(asked), flush=True)
            events.append(run)
            print(
                f"  events {run['rate']:,.0f}/s alongside {alongside}: p50 {run['p50_ms']:.1f} "
                f"ms, p99 {run['p99_ms']:.1f} ms, {run['received']}/{run['sent']} answered, "
                f"worker {run['worker_cpu_pct']:.0f}% of a core",
                flush=True,
            )
    return results, events


@dataclass(frozen=True, slots=True)
class Load:
    event_rate: float
    request_rate: float
    seconds: float
    users: int


def _run(
    settings: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    items: list[str],
    alongside: str,
    load: Load,
    log_dir: Path,
) -> tuple[ApiResult | None, dict[str, Any]]:
    """One run on a fresh broker and worker: the events, and `alongside` requests (or none)."""
    from sessionrec.benchmarks.stream import run_rate

    ctx = mp.get_context("spawn")
    asked = None
    server = None
    with EmbeddedBroker(port=0) as broker:
        local = on_local_broker(settings, broker.bootstrap, model_dir)
        worker = WorkerProcess(local, log_dir / f"api-worker-{alongside}.log").start()
        try:
            worker.wait_ready()
            url = worker.api_url()
            if alongside.endswith("@serve"):
                server = _serve(local, log_dir / f"api-serve-{alongside}.log")
                url = server.api_url()
            run_rate(local, sessions, 200, 3.0, load.users)  # warm up
            queue = ctx.Queue()
            client = None
            if alongside != "none":
                rate, token = load.request_rate, local.api.token
                args = (url, alongside, rate, load.seconds, load.users, items, token, queue)
                client = ctx.Process(target=ask, args=args)
            cpu, started = worker.cpu_seconds(), time.monotonic()
            result, _ = run_rate(
                local,
                sessions,
                load.event_rate,
                load.seconds,
                load.users,
                client.start if client else None,
            )
            worker_pct = 100 * (worker.cpu_seconds() - cpu) / (time.monotonic() - started)
            if client is not None:
                got = queue.get(timeout=60)
                asked = summary(alongside, load.request_rate, got, load.seconds)
                client.join()
        finally:
            worker.stop()
            if server is not None:
                server.stop()
    return asked, {**asdict(result), "alongside": alongside, "worker_cpu_pct": worker_pct}


def _serve(settings: Settings, log: Path) -> WorkerProcess:
    """A `sessionrec serve` process on the worker's broker and models, once it is ready."""
    import sys
    import urllib.request

    server = WorkerProcess(settings, log, [sys.executable, "-m", "sessionrec.cli", "serve"])
    url = server.start().api_url()
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5):
                return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"sessionrec serve not ready: {server.tail_log()}") from None
            time.sleep(0.2)


HEADER = (
    f"{'endpoint':>13} {'req/s':>7} {'sent':>7} {'ok':>7} {'failed':>6} {'session':>7} "
    f"{'answered/s':>10} "
    f"{'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} {'client':>7}"
)


def _row(r: ApiResult) -> str:
    return (
        f"{r.endpoint:>13} {r.rate:>7,.0f} {r.sent:>7} {r.ok:>7} {r.failed:>6} "
        f"{r.from_session:>7} "
        f"{r.answered_per_s:>10,.0f} {r.mean_ms:>8.2f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
        f"{r.max_ms:>8.1f} {r.client_cpu_pct:>6.0f}%"
    )
