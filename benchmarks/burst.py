"""`sessionrec bench burst`: a catalog burst and a model swap while events flow.

One broker and one worker; the generator sends events at a fixed rate throughout. A while in,
a catalog burst of new items is produced to `items` all at once; once it is applied, a new
model version is made current. Meanwhile a probe asks the worker's `/healthz` every
HEALTH_EVERY_S and reads its metrics (the event loop's lag, upserts applied, swaps). Events are
grouped by when they were produced: before the burst, while the burst was being applied, while
the swap was under way. A second run on a fresh broker and worker, events alone, gives the same
windows undisturbed: the embedded broker slows as its log fills, so "before" alone would flatter.
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sessionrec.models.artifact import current_version, load_model, set_current, version_path
from sessionrec.models.codec import encode
from sessionrec.models.config import Settings
from sessionrec.models.records import Item
from sessionrec.stream.broker import EmbeddedBroker, free_port
from sessionrec.stream.kafka import producer_config
from sessionrec.stream.launch import WorkerProcess, on_local_broker

HEALTH_EVERY_S = 0.1
HEALTH_TIMEOUT_S = 5.0
METRICS_EVERY_S = 0.25
SETTLE_S = 5.0  # after the warm-up, before the "before" window opens
APPLY_TIMEOUT_S = 120.0  # a burst or a swap not done by then is reported as not done


@dataclass(frozen=True, slots=True)
class Window:
    """Events produced within [start, end) (seconds since the load began), and what the probes
    saw then."""

    name: str
    start_s: float
    end_s: float
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    loop_lag_max_ms: float  # the worker's own gauge, its largest value seen in the window
    health_max_ms: float  # the slowest /healthz answer asked in the window


class _Probe(threading.Thread):
    """Asks `/healthz` and reads `/metrics` until stopped; keeps (time, value) series."""

    def __init__(self, api_url: str, metrics_url: str):
        super().__init__(daemon=True)
        self.api_url, self.metrics_url = api_url, metrics_url
        self.health: list[tuple[float, float]] = []  # (time, seconds to answer; inf: none)
        self.metrics: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        next_metrics = 0.0
        while not self.stop.is_set():
            asked = time.time()
            try:
                with urllib.request.urlopen(self.api_url + "/healthz", timeout=HEALTH_TIMEOUT_S):
                    pass
                self.health.append((asked, time.time() - asked))
            except OSError:
                self.health.append((asked, float("inf")))
            if time.time() >= next_metrics:
                next_metrics = time.time() + METRICS_EVERY_S
                self.metrics.append((time.time(), _read_metrics(self.metrics_url)))
            self.stop.wait(HEALTH_EVERY_S)

    def latest(self, name: str) -> float:
        return self.metrics[-1][1].get(name, 0.0) if self.metrics else 0.0

    def when(self, name: str, reaches: float, since: float) -> float | None:
        """The first time after `since` that metric `name` was seen at `reaches` or more."""
        for at, values in self.metrics:
            if at >= since and values.get(name, 0.0) >= reaches:
                return at
        return None


WATCHED = (
    "sessionrec_event_loop_lag_max_seconds",
    "sessionrec_item_upserts_total",
    "sessionrec_model_swaps_total",
)


def _read_metrics(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in WATCHED:
            found[name] = float(value)
    return found


def burst_items(model_dir: Path, n: int, seed: int = 0) -> list[Item]:
    """`n` new items, with the served model's categories and brands, as a catalog import
    would send them."""
    version = current_version(model_dir)
    if version is None:
        raise ValueError(f"no model in {model_dir}")
    vocab = load_model(version_path(model_dir, version)).tables
    categories = vocab.category_vocab.words or ["none"]
    brands = vocab.brand_vocab.words or [None]
    rng = np.random.default_rng(seed)
    return [
        Item(
            f"burst-{i}",
            f"new item {i}",
            str(categories[int(rng.integers(len(categories)))]),
            brands[int(rng.integers(len(brands)))],
            round(float(rng.uniform(1, 200)), 2),
        )
        for i in range(n)
    ]


def _copy_versions(model_dir: Path, into: Path) -> str:
    """Copy the current version into `into` and make a second, identical version beside it
    (another name), to swap to. Returns the second one's name."""
    version = current_version(model_dir)
    assert version is not None  # checked by `burst_items`
    shutil.copytree(version_path(model_dir, version), into / version)
    set_current(into, version)
    swapped = f"{version}-swap"
    shutil.copytree(into / version, into / swapped)
    manifest = orjson.loads((into / swapped / "manifest.json").read_bytes())
    manifest["version"] = swapped
    (into / swapped / "manifest.json").write_bytes(orjson.dumps(manifest))
    return swapped


def _produce(settings: Settings, items: list[Item]) -> None:
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    for item in items:
        while True:
            try:
                producer.produce(
                    settings.topics.items, key=item.item_id.encode(), value=encode(item)
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def catalog_burst_and_swap(
    settings: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    rate: float,
    seconds: float,
    burst: int,
    users: int,
    log_dir: Path,
) -> dict[str, Any]:
    """Events at `rate` for `seconds`, twice, each run on a broker and worker of its own: with
    `burst` new items produced BURST_AT_S in and a model swap SWAP_AFTER_S after the burst is
    applied, then the same without either (the embedded broker slows as its log fills, so a
    window is compared with the same window of the quiet run too). Returns both runs' windows,
    the burst's and the swap's durations, and what went unanswered."""
    items = burst_items(model_dir, burst)
    busy = _run(settings, model_dir, sessions, rate, seconds, users, log_dir, items)
    quiet = _run(settings, model_dir, sessions, rate, seconds, users, log_dir, None)
    edges, t0, (received, probe) = busy.pop("edges"), quiet.pop("t0"), quiet.pop("raw")
    quiet["windows"] = [
        asdict(_window(n, t0 + a, t0 + b, t0, received, probe)) for n, a, b in edges
    ]
    return {"burst_items": burst, "rate": rate, "seconds": seconds, "busy": busy, "quiet": quiet}


BURST_AT_S = 10.0
SWAP_AFTER_S = 3.0


def _run(
    settings: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    rate: float,
    seconds: float,
    users: int,
    log_dir: Path,
    items: list[Item] | None,
) -> dict[str, Any]:
    """One run: with `items`, the burst and the swap; without, events alone."""
    from sessionrec.benchmarks.stream import run_rate

    served = log_dir / "burst-models"
    shutil.rmtree(served, ignore_errors=True)
    served.mkdir(parents=True)
    swapped = _copy_versions(model_dir, served)
    marks: dict[str, float] = {}
    name = "busy" if items else "quiet"
    with EmbeddedBroker(port=0) as broker:
        local = replace(
            on_local_broker(settings, broker.bootstrap, served), metrics_port=free_port()
        )
        worker = WorkerProcess(local, log_dir / f"burst-worker-{name}.log").start()
        try:
            worker.wait_ready()
            run_rate(local, sessions, 200, 3.0, users)  # warm up
            probe = _Probe(worker.api_url(), f"http://127.0.0.1:{local.metrics_port}/metrics")
            probe.start()
            time.sleep(SETTLE_S)

            def disturb() -> None:
                marks["load"] = time.time()
                if items is None:
                    return
                time.sleep(BURST_AT_S)
                base = probe.latest("sessionrec_item_upserts_total")
                marks["burst"] = time.time()
                _produce(local, items)
                marks["produced"] = time.time()
                done = _wait(
                    probe, "sessionrec_item_upserts_total", base + len(items), marks["burst"]
                )
                marks["burst_done"] = done
                time.sleep(SWAP_AFTER_S)
                swaps = probe.latest("sessionrec_model_swaps_total")
                marks["swap"] = time.time()
                set_current(served, swapped)
                marks["swap_done"] = _wait(
                    probe, "sessionrec_model_swaps_total", swaps + 1, marks["swap"]
                )

            received: list[tuple[float, int]] = []
            thread = threading.Thread(target=disturb, daemon=True)
            result, _ = run_rate(
                local, sessions, rate, seconds, users, thread.start, received=received
            )
            thread.join(APPLY_TIMEOUT_S)
            probe.stop.set()
            probe.join()
        finally:
            worker.stop()
    t0 = marks["load"]
    out: dict[str, Any] = {
        "sent": result.sent,
        "received": result.received,
        "unanswered": max(0, result.sent - result.received),
        "health_max_ms": 1000 * max((s for _, s in probe.health), default=0.0),
        "health_failed": sum(1 for _, s in probe.health if s == float("inf")),
    }
    if items is None:
        return {**out, "t0": t0, "raw": (received, probe)}
    end = t0 + seconds
    edges = [
        ("before", 1.0, marks["burst"] - t0),
        ("burst", marks["burst"] - t0, min(marks["burst_done"], end) - t0),
        ("swap", marks["swap"] - t0, min(marks["swap_done"], end) - t0),
        ("whole run", 0.0, seconds),
    ]
    windows = [asdict(_window(n, t0 + a, t0 + b, t0, received, probe)) for n, a, b in edges]
    return {
        **out,
        "burst_produce_s": marks["produced"] - marks["burst"],
        "burst_applied_s": marks["burst_done"] - marks["burst"],
        "swap_s": marks["swap_done"] - marks["swap"],
        "windows": windows,
        "edges": edges,
    }


def _wait(probe: _Probe, name: str, reaches: float, since: float) -> float:
    """When the metric reached the value (time.time()), or +inf after APPLY_TIMEOUT_S."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        at = probe.when(name, reaches, since)
        if at is not None:
            return at
        time.sleep(METRICS_EVERY_S)
    return float("inf")


def _window(
    name: str,
    start: float,
    end: float,
    t0: float,
    received: list[tuple[float, int]],
    probe: _Probe,
) -> Window:
    lat = np.array(
        [lat for lat, at in received if start * 1000 <= at - lat < end * 1000], dtype=np.float64
    )
    pct = np.percentile(lat, [50, 99]) if len(lat) else np.zeros(2)
    lags = [v.get(WATCHED[0], 0.0) for at, v in probe.metrics if start <= at <= end + 1.0]
    health = [s for at, s in probe.health if start <= at <= end]
    return Window(
        name,
        round(start - t0, 2),
        round(end - t0, 2),
        len(lat),
        float(pct[0]),
        float(pct[1]),
        float(lat.max()) if len(lat) else 0.0,
        1000 * max(lags, default=0.0),
        1000 * max(health, default=0.0),
    )


HEADER = (
    f"{'run':>5} {'window':>10} {'from s':>7} {'to s':>7} {'events':>7} {'p50 ms':>8} "
    f"{'p99 ms':>8} {'max ms':>8} {'loop lag ms':>11} {'healthz ms':>10}"
)


def row(run: str, w: dict[str, Any]) -> str:
    return (
        f"{run:>5} {w['name']:>10} {w['start_s']:>7.1f} {w['end_s']:>7.1f} {w['events']:>7} "
        f"{w['p50_ms']:>8.1f} {w['p99_ms']:>8.1f} {w['max_ms']:>8.1f} "
        f"{w['loop_lag_max_ms']:>11.1f} {w['health_max_ms']:>10.1f}"
    )
