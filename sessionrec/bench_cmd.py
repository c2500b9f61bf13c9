"""`sessionrec bench quality|training|index|stream|all`: figures side by side with the peers,
measured in one run, written to DIR/report.md, DIR/results.json and PNG plots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionrec.models.config import Settings

DEFAULT_DATA = "../shared/data/diginetica"
DEFAULT_ALSO = "../shared/data/nowplaying"
PIPELINE_CASES = 3000
# Batch sizes the worker's own cost is measured at: about what the worker takes at 2,000
# events/s (a batch per 20 ms), and its largest (under a backlog).
COST_BATCHES = (40, 500)
SCALE_PARTITIONS = 6  # divides evenly among 1, 2 and 3 workers
SCALE_IDLE_S = 10.0  # the workers' CPU with no events is measured this long before the load


def _ensure_model(data: Path, model_dir: Path, settings: Settings) -> None:
    from sessionrec.models.artifact import current_version

    if current_version(model_dir) is not None:
        return
    from sessionrec.training.job import JobSpec, run_once
    from sessionrec.training.trainer import TrainConfig

    print(f"no model in {model_dir}: training one on {data} first", file=sys.stderr)
    run_once(
        JobSpec("srgnn", str(data), None, model_dir, holdout=0.0),
        settings,
        TrainConfig(weights=settings.weights, progress=sys.stderr.isatty()),
    )


def part_quality(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.baselines import metrics_from_lists
    from sessionrec.benchmarks.stream import serve_prefixes
    from sessionrec.benchmarks.training import (
        PUBLISHED,
        PUBLISHED_BY_DATA,
        _recommender_lists,
        across_seeds,
        cold_start,
        quality,
        training_curve,
    )
    from sessionrec.models.artifact import set_current
    from sessionrec.training.evaluate import trained_recommender
    from sessionrec.training.export import export
    from sessionrec.training.trainer import TrainConfig

    data, out = Path(args.data), Path(args.out)
    for directory in args.also:
        problem = _srgnn_problem(directory)
        if problem:
            raise ValueError(f"--also: {problem}")
    config = TrainConfig(weights=settings.weights, progress=False)
    rows, trained, cases, training = quality(data, config, sknn_cases=args.sknn_cases)
    # The same model served by the real pipeline: broker -> worker -> recommendations topic.
    model_dir = out / "models"
    path, _ = export(trained, model_dir, {"data": str(data)})
    set_current(model_dir, path.name)
    sample = cases[:: max(1, len(cases) // PIPELINE_CASES)]
    started = time.perf_counter()
    # The offline protocol counts the prefix's last item as a candidate: so does the worker here.
    protocol = dataclasses.replace(
        settings, query=dataclasses.replace(settings.query, exclude_current=False)
    )
    prefixes = [[i for i, _ in c.prefix] for c in sample]
    served = serve_prefixes(protocol, model_dir, prefixes, out)
    offline = trained_recommender(trained, settings.weights)
    offline_lists = _recommender_lists(offline, sample)
    served_metrics = metrics_from_lists(served, sample)
    pipeline: dict[str, Any] = {
        "cases": len(sample),
        "seconds": round(time.perf_counter() - started, 1),
        "served": served_metrics,
        "offline_same_cases": metrics_from_lists(offline_lists, sample),
        "unanswered": sum(1 for s in served if not s),
    }
    rows.append(
        {
            "method": f"sessionrec, served by the pipeline ({len(sample)} cases)",
            **served_metrics,
        }
    )
    published = [
        {"method": f"{m} (published)", "recall_at_20": r, "mrr_at_20": m20}
        for m, r, m20 in PUBLISHED
    ]
    curve = training_curve(data, config) if args.curve else []
    seeds: list[dict[str, Any]] = []
    for directory in dict.fromkeys([str(data), *args.also]):
        seeds.extend(across_seeds(Path(directory), config, args.seeds))
    cold = cold_start(data, config, trained_recommender(trained, settings.weights))
    return {
        "seeds": seeds,
        "published_by_data": {
            name: [{"method": m, "recall_at_20": r, "mrr_at_20": m20} for m, r, m20 in rows]
            for name, rows in PUBLISHED_BY_DATA.items()
        },
        "cold_start": cold,
        "quality": rows,
        "published": published,
        "training": training,
        "training_curve": curve,
        "pipeline": pipeline,
        "epochs": config.epochs,
    }


def part_index(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.training import index_bench, session_memory, synthetic_vectors
    from sessionrec.models.artifact import current_version, load_model
    from sessionrec.models.index import IndexConfig

    data, model_dir = Path(args.data), Path(args.model_dir_bench)
    _ensure_model(data, model_dir, settings)
    model = load_model(model_dir / str(current_version(model_dir)))
    rows = [index_bench(model.vectors, f"{len(model.item_ids):,} trained items", IndexConfig())]
    print(json.dumps(rows[-1]))
    rows.append(
        index_bench(
            synthetic_vectors(args.synthetic_items),
            f"{args.synthetic_items:,} synthetic items",
            IndexConfig(m=16, ef_construction=64),
        )
    )
    print(json.dumps(rows[-1]))
    sessions = session_memory()
    print(json.dumps(sessions))
    return {"index": rows, "session_memory": sessions}


def part_stream(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.stream import HEADER, bench_stream, srgnn_sessions, worker_cost

    data, model_dir, out = Path(args.data), Path(args.model_dir_bench), Path(args.out)
    if not (data / "test.tsv").exists():
        raise ValueError(f"--data {data}: expected an SR-GNN directory with test.tsv")
    _ensure_model(data, model_dir, settings)
    rates: list[float] = args.rates  # at least one: checked when the flags are read
    print(
        f"stream benchmark: {args.seconds:.0f}s per rate, {args.users} users walking real "
        f"sessions of {data.name}; rate 0 = as fast as the generator can; "
        + ("all rates on one broker" if args.one_broker else "a fresh broker and worker per rate")
    )
    print(HEADER)
    sessions = srgnn_sessions(data)
    results, raw, _ = bench_stream(
        settings,
        model_dir,
        sessions,
        rates,
        args.seconds,
        args.users,
        out,
        args.one_broker,
    )
    single: list[float] = args.one_partition_rates
    if single and settings.partitions != 1:
        # The embedded broker does less work per event with one partition per topic, which a
        # single local worker can use (docs/development.md): the same rates again in that
        # layout, side by side.
        more, more_raw, _ = bench_stream(
            dataclasses.replace(settings, partitions=1),
            model_dir,
            sessions,
            single,
            args.seconds,
            args.users,
            out,
            args.one_broker,
        )
        results, raw = results + more, {**raw, **more_raw}
    if args.echo_rates:
        # The faust floor: the same worker with a pipeline that only echoes (benchmarks/floor.py).
        more, more_raw, _ = bench_stream(
            settings,
            model_dir,
            sessions,
            args.echo_rates,
            args.seconds,
            args.users,
            out,
            args.one_broker,
            echo=True,
        )
        results, raw = results + more, {**raw, **more_raw}
    print("the worker's own code per event, without broker or faust (microseconds of CPU):")
    costs = worker_cost(settings, model_dir, sessions, args.users, COST_BATCHES)
    for cost in costs:
        print(json.dumps(dataclasses.asdict(cost)))
    return {
        "stream": [dataclasses.asdict(r) for r in results],
        "stream_latencies_ms": raw,
        "stream_one_broker": args.one_broker,
        "worker_cost": [dataclasses.asdict(c) for c in costs],
    }


def part_scale(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.stream import HEADER, bench_stream, srgnn_sessions

    data, model_dir, out = Path(args.data), Path(args.model_dir_bench), Path(args.out)
    _ensure_model(data, model_dir, settings)
    started = time.strftime("%F %T")
    layout = dataclasses.replace(settings, partitions=SCALE_PARTITIONS)
    print(
        f"scale: {args.scale_rate:,.0f} events/s for {args.seconds:.0f}s to 1, 2 and 3 workers "
        f"in one group, {SCALE_PARTITIONS} partitions, a fresh broker each"
    )
    print(HEADER)
    sessions = srgnn_sessions(data)
    rows: list[dict[str, Any]] = []
    for workers in (1, 2, 3):
        results, _, _ = bench_stream(
            layout,
            model_dir,
            sessions,
            [args.scale_rate],
            args.seconds,
            args.users,
            out,
            workers=workers,
            idle_s=SCALE_IDLE_S,
        )
        rows.extend(dataclasses.asdict(r) for r in results)
        idle = results[-1].idle_worker_cpu_pct
        print(f"  with no events, before the load: {workers} worker(s) used {idle:.0f}% of a core")
    handovers = _handovers(args, layout, model_dir, sessions, out)
    return {"scale": rows, "handover": handovers, "scale_started": started}


# (standby replicas, session timeout in seconds) of each hand-over run: none, one and two
# standbys at Apache Kafka's smallest default session timeout, then two at half of it.
HANDOVER_RUNS = ((0, 6.0), (1, 6.0), (2, 6.0), (2, 3.0))
HANDOVER_SECONDS, HANDOVER_KILL_AT_S = 40.0, 20.0
UNANSWERED_SHOWN = 5


def _handovers(
    args: argparse.Namespace,
    layout: Settings,
    model_dir: Path,
    sessions: list[list[str]],
    out: Path,
) -> list[dict[str, Any]]:
    from sessionrec.benchmarks.handover import HEADER, WORKERS, handover

    print(
        f"hand-over: {WORKERS} workers, {args.handover_sessions:,} live sessions, "
        f"{args.handover_rate:,.0f} events/s for {HANDOVER_SECONDS:.0f}s, one worker killed -9 "
        f"after {HANDOVER_KILL_AT_S:.0f}s; a fresh broker each"
    )
    print(HEADER)
    runs = []
    for standbys, timeout_s in HANDOVER_RUNS:
        run = handover(
            dataclasses.replace(layout, session_timeout_s=timeout_s),
            model_dir,
            sessions,
            out,
            rate=args.handover_rate,
            seconds=HANDOVER_SECONDS,
            kill_at_s=HANDOVER_KILL_AT_S,
            live_sessions=args.handover_sessions,
            standby_replicas=standbys,
        )
        print(run.row(), flush=True)
        for partition, offset, user, ts in run.unanswered[:UNANSWERED_SHOWN]:
            print(f"  no answer: {user} at {ts} (events partition {partition}, offset {offset})")
        runs.append(dataclasses.asdict(run))
    return runs


def part_api(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.api import HEADER, bench_api
    from sessionrec.benchmarks.stream import srgnn_sessions

    data, model_dir, out = Path(args.data), Path(args.model_dir_bench), Path(args.out)
    _ensure_model(data, model_dir, settings)
    started = time.strftime("%F %T")
    print(
        f"api: {args.api_rate:,.0f} requests/s of each kind for {args.seconds:.0f}s over HTTP "
        f"to one worker that takes {args.api_event_rate:,.0f} events/s meanwhile; the events "
        "alone before and after"
    )
    sessions = srgnn_sessions(data)
    out.mkdir(parents=True, exist_ok=True)
    print(HEADER)
    results, events = bench_api(
        settings,
        model_dir,
        sessions,
        args.api_event_rate,
        args.api_rate,
        args.seconds,
        args.users,
        out,
        args.api_rounds,
    )
    return {
        "api": [dataclasses.asdict(r) for r in results],
        "api_events": events,
        "api_started": started,
    }


def part_burst(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.burst import HEADER, catalog_burst_and_swap, row
    from sessionrec.benchmarks.stream import srgnn_sessions

    data, model_dir, out = Path(args.data), Path(args.model_dir_bench), Path(args.out)
    _ensure_model(data, model_dir, settings)
    print(
        f"burst: {args.burst_rate:,.0f} events/s for {args.burst_seconds:.0f}s to one worker; "
        f"{args.burst_items:,} new catalog items at once 10 s in, a model swap once they are "
        "applied; /healthz asked every 0.1 s; then the same run with neither (quiet)"
    )
    out.mkdir(parents=True, exist_ok=True)
    result = catalog_burst_and_swap(
        settings,
        model_dir,
        srgnn_sessions(data),
        args.burst_rate,
        args.burst_seconds,
        args.burst_items,
        args.users,
        out,
    )
    print(HEADER)
    for run in ("busy", "quiet"):
        for window in result[run]["windows"]:
            print(row(run, window))
    busy, quiet = result["busy"], result["quiet"]
    print(
        f"burst produced in {busy['burst_produce_s']:.1f}s, applied in "
        f"{busy['burst_applied_s']:.1f}s; swap in {busy['swap_s']:.1f}s; unanswered: "
        f"{busy['unanswered']} of {busy['sent']} (quiet run {quiet['unanswered']} of "
        f"{quiet['sent']}); slowest /healthz {busy['health_max_ms']:.0f} ms "
        f"({busy['health_failed']} unanswered)"
    )
    return {"burst": result}


def part_broker(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.stream import broker_cost_as_log_fills

    print(
        "embedded broker: CPU for a trickle of produce requests, read at the head of the log, "
        "as the log fills with one-record batches"
    )
    return {"broker": [dataclasses.asdict(r) for r in broker_cost_as_log_fills()]}


def part_reliability(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from sessionrec.benchmarks.reliability import flood, fuzz, kill9_run, memory_per_user
    from sessionrec.stream.broker import EmbeddedBroker
    from sessionrec.stream.launch import WorkerProcess, on_local_broker

    data, model_dir, out = Path(args.data), Path(args.model_dir_bench), Path(args.out)
    _ensure_model(data, model_dir, settings)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    with EmbeddedBroker(port=0) as broker:
        local = on_local_broker(settings, broker.bootstrap, model_dir, "bench-reliability")
        worker = WorkerProcess(local, out / "reliability-worker.log").start()
        try:
            worker.wait_ready()
            assert worker.proc is not None
            print(f"fuzzing: {args.fuzz_events:,} event records, 2,000 items, 500 model-updates")
            fuzzed = fuzz(local, args.fuzz_events, 2_000, 500)
            result["fuzz"] = dataclasses.asdict(fuzzed)
            result["fuzz"]["worker_exits"] = int(worker.proc.poll() is not None)
            print(json.dumps(result["fuzz"]))
            print("memory: 20,000 new users, one event each")
            result["memory"] = memory_per_user(local, worker.proc.pid, 20_000)
            print(json.dumps(result["memory"]))
        finally:
            worker.stop()
    with EmbeddedBroker(port=0) as broker:
        ttl = dataclasses.replace(settings, state_ttl_days=0.02)  # under half an hour
        local = on_local_broker(ttl, broker.bootstrap, model_dir, "bench-flood")
        worker = WorkerProcess(local, out / "flood-worker.log").start()
        try:
            worker.wait_ready()
            assert worker.proc is not None
            print("flood: 8 rounds of 5,000 one-event users, an hour of event time apart")
            result["flood"] = flood(local, worker.proc.pid, 8, 5_000)
            for row in result["flood"]:
                print(json.dumps(row))
        finally:
            worker.stop()
    runs = []
    for run in range(args.kill_runs):
        with EmbeddedBroker(port=0) as broker:
            local = on_local_broker(settings, broker.bootstrap, model_dir, f"bench-kill-{run}")
            runs.append(kill9_run(local, out / f"kill9-{run}.log"))
            print(json.dumps(runs[-1]))
    result["kill9"] = runs
    return {"reliability": result}


PARTS: dict[str, Callable[[argparse.Namespace, Settings], dict[str, Any]]] = {
    "quality": part_quality,
    "index": part_index,
    "stream": part_stream,
    "scale": part_scale,
    "api": part_api,
    "burst": part_burst,
    "broker": part_broker,
    "reliability": part_reliability,
}


def _rates(text: str) -> list[float]:
    """Comma-separated events/s for a flag: each a number >= 0 (0 = as fast as possible)."""
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of events/s, e.g. 500,1000,0"
        ) from None
    if not all(math.isfinite(r) and r >= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: each rate is events/s >= 0 (0 = flat out)")
    return rates


def _some_rates(text: str) -> list[float]:
    """Like `_rates`, with at least one rate."""
    rates = _rates(text)
    if not rates:
        raise argparse.ArgumentTypeError(f"{text!r} names no rate, e.g. 500,1000,0")
    return rates


def _srgnn_problem(path: str) -> str | None:
    """What keeps `path` from being an SR-GNN directory (None: nothing)."""
    missing = [f for f in ("train_sessions.txt", "test.tsv") if not (Path(path) / f).is_file()]
    if missing:
        return f"{path!r} is not an SR-GNN directory: no {' or '.join(missing)}"
    return None


def _directories(text: str) -> list[str]:
    """Comma-separated SR-GNN directories for a flag."""
    paths = [t.strip() for t in text.split(",") if t.strip()]
    for path in paths:
        problem = _srgnn_problem(path)
        if problem:
            raise argparse.ArgumentTypeError(problem)
    return paths


def _positive(kind: Callable[[str], float], zero_allowed: bool = False) -> Callable[[str], float]:
    """A flag's parser: a number of `kind` above 0 (or 0 and above, with `zero_allowed`)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not (value >= 0 if zero_allowed else value > 0):
            bound = "0 or more" if zero_allowed else "above 0"
            raise argparse.ArgumentTypeError(f"{text!r}: must be {bound}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.benchmarks.report import write_report

    everything = ["quality", "index", "stream", "scale", "api", "burst", "broker", "reliability"]
    parts = everything if args.part == "all" else [args.part]
    if args.part == "training":
        parts = ["quality"]  # training is measured with the quality run: same sessions/epochs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": _machine(),
        "cores": os.cpu_count(),
        "started": time.strftime("%F %T"),
    }
    earlier = out / "results.json"
    if args.merge and earlier.exists():  # the other parts' figures stay as they were measured
        results = {**json.loads(earlier.read_text()), "machine": results["machine"]}
    started = time.perf_counter()
    for part in parts:
        print(f"== {part}", flush=True)
        if args.merge:
            results.setdefault("rerun", {})[part] = time.strftime("%F %T")
        results.update(PARTS[part](args, settings))
        if part == "quality":  # the other parts serve the model just trained and scored
            args.model_dir_bench = str(out / "models")
    if not args.merge:
        results["seconds"] = round(time.perf_counter() - started, 1)
    slim = {k: v for k, v in results.items() if not k.endswith("latencies_ms")}
    (out / "results.json").write_text(json.dumps(slim, indent=2, default=str))
    summary = write_report(results, out)
    print(summary)
    print(f"report: {out / 'report.md'}; results: {out / 'results.json'}")
    return 0


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks, side by side with the peers",
        description="quality: Recall/MRR@5,10,20, coverage and popularity bias "
        "of popularity, V-SkNN, gensim skip-gram and sessionrec (exact, HNSW, "
        "served by the pipeline); training: our trainer vs gensim, same "
        "sessions and epochs; index: build time, memory, recall and queries/s; "
        "stream: throughput and latency per rate through broker and worker; "
        "scale: the same load on 1, 2 and 3 workers in one consumer group, and how long a "
        "killed worker's users wait, with and without standby replicas; "
        "api: the query API's requests/s and latency for each endpoint over HTTP while the "
        "worker takes events, and the events' latency with and without them; "
        "burst: a catalog burst and a model swap while the worker takes events: the events' "
        "latency before and during each, the event loop's lag and /healthz; "
        "broker: the embedded broker's cost as its log fills with small batches; "
        "reliability: hostile records through a live worker, memory per user, a flood of "
        "one-event users with a state time to live, and kill -9 runs. "
        "Writes DIR/report.md, DIR/results.json and plots.",
    )
    p.add_argument(
        "part",
        choices=[
            "quality",
            "training",
            "index",
            "stream",
            "scale",
            "api",
            "burst",
            "broker",
            "reliability",
            "all",
        ],
    )
    p.add_argument("--data", default=DEFAULT_DATA, help=f"SR-GNN directory ({DEFAULT_DATA})")
    p.add_argument("--out", default="bench-out", help="report directory (default bench-out)")
    p.add_argument(
        "--models",
        dest="model_dir_bench",
        default="var/models/diginetica",
        help="model served by the stream/index parts (trained on --data if absent)",
    )
    p.add_argument(
        "--rates",
        type=_some_rates,
        default="500,1000,2000,0",
        help="events/s to try, comma-separated; 0 = as fast as possible",
    )
    p.add_argument(
        "--one-partition-rates",
        type=_rates,
        default="2000",
        help="stream: these rates again with every topic on one partition, as a single local "
        "worker would run (comma-separated; empty to skip; default 2000)",
    )
    p.add_argument(
        "--echo-rates",
        type=_rates,
        default="2000",
        help="stream: these rates again with the faust floor, the worker whose pipeline only "
        "echoes each event's time, to show what faust, the clients and the broker cost "
        "(comma-separated; empty to skip; default 2000)",
    )
    p.add_argument(
        "--scale-rate",
        type=_positive(float),
        default=1000.0,
        help="scale: events/s offered to 1, 2 and 3 workers (default 1000)",
    )
    p.add_argument(
        "--handover-rate",
        type=_positive(float),
        default=600.0,
        help="scale: events/s while one of 3 workers is killed -9 (default 600)",
    )
    p.add_argument(
        "--handover-sessions",
        type=_positive(int, zero_allowed=True),
        default=200_000,
        help="scale: users with an open session before the kill (default 200000)",
    )
    p.add_argument(
        "--api-rate",
        type=_positive(float),
        default=500.0,
        help="api: requests/s of each endpoint (default 500)",
    )
    p.add_argument(
        "--api-event-rate",
        type=_positive(float),
        default=1000.0,
        help="api: events/s the worker takes meanwhile (default 1000)",
    )
    p.add_argument(
        "--api-rounds",
        type=_positive(int),
        default=1,
        help="api: how many times to run the whole sequence (medians are reported; default 1)",
    )
    p.add_argument(
        "--burst-items",
        type=_positive(int),
        default=40_000,
        help="burst: new catalog items produced at once (default 40000)",
    )
    p.add_argument(
        "--burst-rate",
        type=_positive(float),
        default=1000.0,
        help="burst: events/s throughout (default 1000)",
    )
    p.add_argument(
        "--burst-seconds",
        type=_positive(float),
        default=60.0,
        help="burst: seconds of events in each run (default 60)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other parts' figures in DIR/results.json and re-run only this part; "
        "the report names the parts re-run, and when",
    )
    p.add_argument("--seconds", type=_positive(float), default=15.0, help="seconds per rate")
    p.add_argument(
        "--fuzz-events",
        type=_positive(int),
        default=50_000,
        help="reliability: hostile event records to send (default 50000)",
    )
    p.add_argument(
        "--kill-runs",
        type=_positive(int),
        default=2,
        help="reliability: runs with the worker killed -9 under a backlog (default 2)",
    )
    p.add_argument("--users", type=_positive(int), default=20000, help="simulated users")
    p.add_argument(
        "--one-broker",
        action="store_true",
        help="stream: run all rates on one broker and worker (each rate then also pays for the "
        "embedded broker's log of the rates before it); default: a fresh pair per rate",
    )
    p.add_argument(
        "--curve",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="training: also time and score other settings (fewer negatives, other batch "
        "sizes), each next to a gensim run, a few minutes more (default: on)",
    )
    p.add_argument(
        "--seeds",
        type=_positive(int),
        default=3,
        help="quality: train ours with this many seeds on the validation split and on the test "
        "set of --data and of each --also dataset, and give the median and the spread "
        "(default 3)",
    )
    p.add_argument(
        "--also",
        type=_directories,
        default=[DEFAULT_ALSO],  # checked when the quality part starts, not by every part
        help="quality: more SR-GNN directories scored with --seeds seeds beside --data, "
        f"comma-separated; empty to skip (default {DEFAULT_ALSO})",
    )
    p.add_argument(
        "--sknn-cases",
        type=int,
        default=None,
        help="score V-SkNN on about N evenly spread cases (default: all)",
    )
    p.add_argument(
        "--synthetic-items",
        type=int,
        default=1_000_000,
        help="size of the synthetic catalog for the index part",
    )
    common(p)
    p.set_defaults(handler=run_bench)
