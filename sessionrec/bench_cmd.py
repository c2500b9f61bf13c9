"""`sessionrec bench stream|training|quality|all`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.config import Settings

DEFAULT_DATA = "../shared/data/diginetica"


def _ensure_model(data: Path, model_dir: Path, settings: Settings) -> None:
    from models.artifact import current_version

    if current_version(model_dir) is not None:
        return
    from training.job import JobSpec, run_once
    from training.trainer import TrainConfig

    print(f"no model in {model_dir}: training one on {data} first", file=sys.stderr)
    run_once(
        JobSpec("srgnn", str(data), None, model_dir, holdout=0.0),
        settings,
        TrainConfig(weights=settings.weights, progress=sys.stderr.isatty()),
    )


def cmd_bench_stream(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from stream.bench import HEADER, bench_stream, srgnn_sessions

    data, model_dir, out = Path(args.data), Path(args.model_dir_bench), Path(args.out)
    if not (data / "test.tsv").exists():
        raise ValueError(f"--data {data}: expected an SR-GNN directory with test.tsv")
    _ensure_model(data, model_dir, settings)
    rates = [float(r) for r in args.rates.split(",")]
    print(
        f"stream benchmark: {args.seconds:.0f}s per rate, {args.users} users walking real "
        f"sessions of {data.name}; rate 0 = as fast as the generator can"
    )
    print(HEADER)
    results, raw, _ = bench_stream(
        settings, model_dir, srgnn_sessions(data), rates, args.seconds, args.users, out
    )
    return {
        "stream": [dataclasses.asdict(r) for r in results],
        "stream_latencies_ms": {str(k): v for k, v in raw.items()},
    }


def _write(out: Path, name: str, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    slim = {k: v for k, v in results.items() if not k.endswith("latencies_ms")}
    path.write_text(json.dumps(slim, indent=2, default=str))
    print(f"results written to {path}", file=sys.stderr)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    results: dict[str, Any] = {}
    parts = ["stream"] if args.part == "stream" else [args.part]
    if args.part == "all":
        parts = ["quality", "training", "stream"]
    for part in parts:
        handler = {"stream": cmd_bench_stream}.get(part)
        if handler is None:
            raise ValueError(f"bench part {part!r} is not available")
        results.update(handler(args, settings))
    _write(Path(args.out), f"results-{args.part}.json", results)
    return 0


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks, side by side with the peers",
        description="Measure quality, training cost and streaming latency on "
        "this machine. Each part prints its table and writes JSON under --out.",
    )
    p.add_argument("part", choices=["stream", "training", "quality", "all"])
    p.add_argument("--data", default=DEFAULT_DATA, help=f"SR-GNN directory ({DEFAULT_DATA})")
    p.add_argument("--out", default="bench-out", help="where results go (default bench-out)")
    p.add_argument(
        "--models",
        dest="model_dir_bench",
        default="var/models/diginetica",
        help="model to serve (trained on --data if absent)",
    )
    p.add_argument(
        "--rates",
        default="1000,2000,5000,0",
        help="events/s to try, comma-separated; 0 = as fast as possible",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="seconds per rate")
    p.add_argument("--users", type=int, default=20000, help="simulated users")
    common(p)
    p.set_defaults(handler=run_bench)
