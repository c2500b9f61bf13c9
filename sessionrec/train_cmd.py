"""`sessionrec train`, `eval` and `models` subcommands (torch is imported only when they run)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionrec.models.config import Settings
from sessionrec.training.data import FORMATS

log = logging.getLogger("sessionrec")


def _train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training hyperparameters")
    g.add_argument("--epochs", type=int, help="passes over the sessions (default 5)")
    g.add_argument("--batch-size", type=int, help="cases per step (default 4096)")
    g.add_argument("--negatives", type=int, help="shared uniform negatives per step (default 512)")
    g.add_argument(
        "--batch-negatives",
        type=int,
        help="more shared negatives per step: the targets of this many of the batch's cases "
        "(default 512)",
    )
    g.add_argument("--lr", type=float, help="Adam learning rate (default 0.016)")
    g.add_argument(
        "--fast",
        action="store_true",
        help="train faster at a lower score: 128 + 128 negatives, batches of 8192, lr 0.012, "
        "3 epochs (the benchmark report times and scores it beside the default); flags given "
        "beside it win",
    )
    g.add_argument("--seed", type=int, help="random seed (runs are deterministic)")
    g.add_argument("--threads", type=int, help="torch threads (default 2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_config(args: argparse.Namespace, settings: Settings) -> Any:
    from sessionrec.training.trainer import FAST, TrainConfig

    values = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "negatives": args.negatives,
        "batch_negatives": args.batch_negatives,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
    }
    config = TrainConfig(
        weights=settings.weights, progress=not args.no_progress and sys.stderr.isatty()
    )
    if args.fast:
        config = dataclasses.replace(config, **FAST)
    config = dataclasses.replace(config, **{k: v for k, v in values.items() if v is not None})
    for name in ("epochs", "batch_size", "threads"):
        if getattr(config, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} is {getattr(config, name)}, expected >= 1"
            )
    for name in ("negatives", "batch_negatives"):
        if getattr(config, name) < 0:
            raise ValueError(
                f"--{name.replace('_', '-')} is {getattr(config, name)}, expected >= 0"
            )
    if not config.lr > 0:
        raise ValueError(f"--lr is {config.lr}, expected > 0")
    return config


# What --data names for each format (topic: a topic name).
DATA_KIND = {"srgnn": "directory", "jsonl": "file", "diginetica": "file", "retailrocket": "any"}


def check_paths(fmt: str, data: str | None, catalog: str | None, out: Path) -> None:
    """The kind of every path (file or directory), before any work starts."""
    if data is not None and fmt in DATA_KIND:
        path, kind = Path(data), DATA_KIND[fmt]
        if not path.exists():
            raise ValueError(f"--data {data}: does not exist")
        if kind == "directory" and not path.is_dir():
            raise ValueError(f"--data {data}: is a file, expected a directory for --format {fmt}")
        if kind == "file" and not path.is_file():
            raise ValueError(f"--data {data}: is a directory, expected a file for --format {fmt}")
    if catalog is not None and not Path(catalog).is_file():
        raise ValueError(f"--catalog {catalog}: is not a file")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, expected a model directory")


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.models.artifact import current_version
    from sessionrec.models.store import locate
    from sessionrec.training import metrics as training_metrics
    from sessionrec.training.job import JobSpec, parse_every, run_observed, run_scheduled

    if not 0 <= args.holdout < 1:
        raise ValueError(f"--holdout is {args.holdout}, expected 0 <= holdout < 1")
    if args.wait and not args.every:
        raise ValueError("--wait waits for the schedule of --every: give both")
    if not 0 <= args.metrics_port <= 65_535:
        raise ValueError(f"--metrics-port is {args.metrics_port}, expected 0 to 65535")
    out, store = locate(args.out or settings.model_dir, settings.model_cache)
    config = train_config(args, settings)
    check_paths(args.format, args.data, args.catalog, out)
    spec = JobSpec(
        args.format,
        args.data,
        args.catalog,
        out,
        holdout=args.holdout,
        announce=args.announce,
        store=store,
        pushgateway=args.pushgateway,
    )
    if args.if_no_model:
        existing = store.current() if store is not None else current_version(out)
        if existing is not None:
            log.info("model %s is current already: nothing to train (--if-no-model)", existing)
            return 0
    if args.format == "topic" or args.announce:
        from sessionrec.stream_cmd import reach_kafka

        reach_kafka(settings)
    if args.every:
        every = parse_every(args.every)
        training_metrics.serve(args.metrics_port, settings.metrics_address)
        run_scheduled(spec, settings, config, every, max_runs=args.max_runs, wait=args.wait)
        return 0
    metrics = run_observed(spec, settings, config)
    print(json.dumps({k: v for k, v in metrics.items()}, default=str))
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.training.data import DataError, load_srgnn, load_srgnn_test
    from sessionrec.training.evaluate import cases_from_srgnn, median_of_seeds, validation_split

    if args.format != "srgnn":
        raise DataError("eval reads --format srgnn (train_sessions.txt and test.tsv)")
    if not 0 < args.validation < 1:
        raise ValueError(f"--validation is {args.validation}, expected between 0 and 1")
    if args.seeds < 1:
        raise ValueError(f"--seeds is {args.seeds}, expected >= 1")
    data = Path(args.data)
    corpus = load_srgnn(data)
    rejected: Counter[str] = Counter()
    if args.on == "validation":  # test.tsv is not read: tune here, never on the test cases
        corpus, cases = validation_split(corpus, args.validation)
    else:
        cases = cases_from_srgnn(load_srgnn_test(data / "test.tsv", rejected))
    config = train_config(args, settings)
    log.info("data: %s; %d %s cases", corpus.report(), len(cases), args.on)
    runs = []
    for seed in range(config.seed, config.seed + args.seeds):
        run = _eval_once(corpus, cases, dataclasses.replace(config, seed=seed), settings)
        runs.append({**run, "on": args.on, "rejected_test_lines": sum(rejected.values())})
        if args.seeds > 1:
            log.info(
                "seed %d: Recall@20 %.2f, MRR@20 %.2f", seed, run["recall_at_20"], run["mrr_at_20"]
            )
    out = median_of_seeds(runs) if args.seeds > 1 else runs[0]
    if not args.json:
        for key, value in out.items():
            print(f"{key:>24}: {value}")
    print(json.dumps(out))
    return 0


def _eval_once(corpus: Any, cases: Any, config: Any, settings: Settings) -> dict[str, Any]:
    """Train once and score `cases` over the HNSW index and by exact search."""
    from sessionrec.training.evaluate import evaluate, trained_recommender
    from sessionrec.training.trainer import train

    trained = train(corpus, config)
    approx = trained_recommender(trained, settings.weights)
    started = time.perf_counter()
    result = evaluate(approx, cases, progress="scoring, HNSW" if config.progress else None)
    log.info(
        "scored %d cases on the HNSW index in %.1f s", len(cases), time.perf_counter() - started
    )
    started = time.perf_counter()
    exact = trained_recommender(trained, settings.weights, index=approx.index, exact=True)
    exact_result = evaluate(
        exact, cases, progress="scoring, exact search" if config.progress else None
    )
    log.info("scored them by exact search in %.1f s", time.perf_counter() - started)
    return {
        **result,
        "recall_at_20_exact": exact_result["recall_at_20"],
        "mrr_at_20_exact": exact_result["mrr_at_20"],
        "train_seconds": round(trained.stats["train_seconds"], 2),
        "setup_seconds": round(trained.stats["setup_seconds"], 2),
        "pairs_per_second": round(trained.stats["pairs_per_second"]),
        "epochs": config.epochs,
        # The rest of what the score depends on, so that a result says how it was trained.
        "batch_size": config.batch_size,
        "negatives": config.negatives,
        "batch_negatives": config.batch_negatives,
        "lr": config.lr,
        "seed": config.seed,
    }


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from sessionrec.models.artifact import current_version, list_versions
    from sessionrec.models.store import locate
    from sessionrec.training.job import rollback

    model_dir, store = locate(settings.model_dir, settings.model_cache)
    if args.action == "rollback":
        version = rollback(model_dir, args.version, settings, store)
        print(f"CURRENT -> {version}")
        return 0

    def manifest_of(version: str) -> bytes:
        if store is not None:
            return store.manifest_text(version)
        return (model_dir / version / "manifest.json").read_bytes()

    if store is not None:
        current, versions = store.current(), store.versions()
    else:
        current, versions = current_version(model_dir), list_versions(model_dir)
    for version in versions:
        mark = "*" if version == current else " "
        try:
            manifest = json.loads(manifest_of(version))
            holdout = manifest.get("metrics", {}).get("holdout", {})
            line = f"items={manifest.get('items')}  holdout R@20={holdout.get('recall_at_20', '-')}"
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            line = f"unreadable manifest ({str(exc).splitlines()[0][:80]})"
        print(f"{mark} {version}  {line}")
    return 0


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from sessionrec.training.evaluate import VALIDATION

    p = sub.add_parser(
        "train",
        help="train a model version and make it current",
        description="Train item embeddings from sessions (+ catalog), evaluate "
        "on the most recent held-out sessions, write a versioned artifact "
        "(vectors, feature tables, HNSW index, manifest) and switch CURRENT if "
        "not worse than the current model. With --every, keep running on a "
        "schedule; a failed run keeps the previous model.",
    )
    p.add_argument("--format", choices=FORMATS, required=True, help="input format")
    p.add_argument("--data", help="events/sessions file or directory (topic: sessions topic)")
    p.add_argument(
        "--catalog",
        help="catalog JSONL (item upserts) for --format jsonl, or for --format topic beside the "
        "items topic (whose records of an item are newer)",
    )
    p.add_argument("--out", help="model directory (default: settings model_dir)")
    p.add_argument(
        "--holdout",
        type=float,
        default=0.05,
        help="fraction of the most recent sessions held out to score the new version; it "
        "becomes CURRENT unless it is significantly worse there than the current one "
        "(default 0.05; 0: always)",
    )
    p.add_argument("--every", help="run on a schedule: 24h, 30m, or a cron expression")
    p.add_argument("--max-runs", type=int, help="with --every: stop after N runs")
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --every: wait for the first scheduled time instead of training at once "
        "(a deployment trains its first model from history with --if-no-model)",
    )
    p.add_argument(
        "--if-no-model",
        action="store_true",
        help="do nothing if the model store already has a current version: train the first "
        "model from historical events once, at deployment, before any traffic arrives",
    )
    p.add_argument("--announce", action="store_true", help="announce on model-updates")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="with --every: serve the training metrics (runs, holdout scores, the last "
        "run's time) on this port, at the settings' metrics_address (default 0: off)",
    )
    p.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the training metrics to this Prometheus Pushgateway after each run "
        "(for a job that ends, such as a CronJob)",
    )
    _train_flags(p)
    common(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "eval",
        help="train and score on an SR-GNN split (Recall/MRR@K)",
        description="Train on DIR/train_sessions.txt (+ item_category.tsv), rank "
        "all items for each line of DIR/test.tsv with the serving code, over the "
        "HNSW index and exactly. The last line printed is one JSON object.",
    )
    p.add_argument("--format", choices=["srgnn"], default="srgnn")
    p.add_argument("--data", required=True, help="directory with train_sessions.txt, test.tsv")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument(
        "--on",
        choices=["test", "validation"],
        default="test",
        help="score on DIR/test.tsv (default), or on a validation split: the last "
        "--validation of the training sessions, held out of training (test.tsv is not read; "
        "choose hyperparameters here)",
    )
    p.add_argument(
        "--validation",
        type=float,
        default=VALIDATION,
        help="the fraction of training sessions, the last ones, that --on validation holds "
        f"out (default {VALIDATION})",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train with this many seeds from --seed on; print the median of each score "
        "and the spread of Recall@20 and MRR@20 (default 1)",
    )
    _train_flags(p)
    common(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser(
        "models",
        help="list model versions, or roll back",
        description="List versions in the model directory (* = CURRENT), or "
        "'models rollback [VERSION]' to make an older version current.",
    )
    p.add_argument("action", nargs="?", choices=["list", "rollback"], default="list")
    p.add_argument("version", nargs="?", help="version for rollback (default: the previous)")
    common(p)
    p.set_defaults(handler=cmd_models)
