"""The training job: load, train, evaluate on held-out sessions, export, promote, announce."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..models.artifact import (
    ArtifactError,
    current_version,
    previous_version,
    prune_versions,
    set_current,
    version_path,
)
from ..models.config import Settings
from ..models.index import ItemIndex
from ..models.serving import load_serving
from ..models.session import SessionConfig
from ..models.store import RemoteStore, is_remote, mirror
from . import metrics as training_metrics
from .data import Corpus, load_corpus
from .evaluate import (
    Case,
    cases_from_sessions,
    metrics_from_ranks,
    metrics_of,
    target_ranks,
    trained_recommender,
)
from .export import export
from .trainer import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobSpec:
    fmt: str
    data: str | None
    catalog: str | None
    out: Path  # with a remote `store`: the local directory versions are made in first
    holdout: float = 0.05
    announce: bool = False
    store: RemoteStore | None = None
    pushgateway: str | None = None  # a Pushgateway's URL for the training metrics


def split_holdout(corpus: Corpus, fraction: float) -> tuple[Corpus, Corpus]:
    """The most recent `fraction` of sessions (by start time, else file order) held out."""
    sessions = corpus.sessions
    if all(s.start_ts is not None for s in sessions):
        sessions = sorted(sessions, key=lambda s: s.start_ts or 0)
    cut = len(sessions) - int(len(sessions) * fraction)
    train_part = Corpus(
        sessions[:cut], corpus.items, corpus.rejected, corpus.first_ts, corpus.last_ts
    )
    return train_part, Corpus(sessions[cut:], corpus.items)


def _current_ranks(model_dir: Path, cases: list[Case], settings: Settings) -> np.ndarray | None:
    """The current version's target ranks on `cases` (None if there is no usable one)."""
    try:
        version = current_version(model_dir)
        if version is None:
            return None
        serving = load_serving(model_dir / version, settings.weights, ef=settings.index_ef)
    except ArtifactError as exc:
        log.warning("current model %s is unusable (%s); the new one will replace it", version, exc)
        return None
    return target_ranks(serving.recommender, cases)


def _copy_current(store: RemoteStore, directory: Path) -> None:
    """The store's current version into `directory`, to compare the new one with."""
    try:
        mirror(store, directory)
    except Exception as exc:  # the new version is made anyway, without a comparison
        log.warning("cannot copy the current model from %s (%s)", store.url, exc)


def compare(new_ranks: np.ndarray, old_ranks: np.ndarray, k: int = 20) -> dict[str, Any]:
    """Paired comparison of two models' hits in the top k on the same cases: `lost` cases only
    the old one hits, `won` cases only the new one does. `worse` when the new one loses
    significantly more than it wins (McNemar's test, z > 2): on a holdout of a few dozen
    cases one target more or less is noise, not a regression."""
    new_hit = (new_ranks >= 0) & (new_ranks < k)
    old_hit = (old_ranks >= 0) & (old_ranks < k)
    lost = int((old_hit & ~new_hit).sum())
    won = int((new_hit & ~old_hit).sum())
    return {
        f"recall_at_{k}": metrics_from_ranks(old_ranks, (k,))[f"recall_at_{k}"],
        "lost": lost,
        "won": won,
        "worse": lost - won > 2.0 * math.sqrt(lost + won),
    }


def run_observed(spec: JobSpec, settings: Settings, config: TrainConfig) -> dict[str, Any]:
    """`run_once`, recorded in the training metrics (`training.metrics`) and pushed to
    `spec.pushgateway` if one is named, whether it succeeds or fails."""
    run = None
    try:
        run = run_once(spec, settings, config)
        return run
    finally:
        training_metrics.observe(run)
        training_metrics.push(spec.pushgateway)


def run_once(spec: JobSpec, settings: Settings, config: TrainConfig) -> dict[str, Any]:
    """One training run. Returns its metrics; raises on failure (CURRENT is then unchanged)."""
    started = time.perf_counter()
    gap = SessionConfig(settings.session_gap_ms, settings.max_session_len)
    corpus = load_corpus(
        spec.fmt,
        spec.data,
        spec.catalog,
        gap,
        settings,
        settings.topics.sessions,
        settings.topics.items,
    )
    log.info("data: %s", corpus.report())
    training_metrics.observe_data(
        len(corpus.sessions),
        sum(len(s.items) for s in corpus.sessions),
        len(corpus.items),
        dict(corpus.rejected),
        corpus.first_ts,
        corpus.last_ts,
    )
    train_part, holdout = split_holdout(corpus, spec.holdout)
    trained = train(train_part, config)
    metrics: dict[str, Any] = dict(trained.stats)
    # One index, built once: the holdout scores the very index the artifact will serve.
    index = ItemIndex.build(list(trained.item_ids), trained.vectors)
    versus = None
    if holdout.sessions:
        rec = trained_recommender(trained, settings.weights, index=index)
        cases = cases_from_sessions(holdout.sessions)
        ranks = target_ranks(rec, cases)
        metrics["holdout"] = metrics_of(rec, cases, ranks)
        if spec.store is not None:
            _copy_current(spec.store, spec.out)
        old_ranks = _current_ranks(spec.out, cases, settings)
        if old_ranks is not None:
            versus = compare(ranks, old_ranks)
    promote = versus is None or not versus["worse"]
    manifest = {
        "data": {
            "format": spec.fmt,
            "path": spec.data,
            "catalog": spec.catalog,
            "sessions": len(train_part.sessions),
            "holdout_sessions": len(holdout.sessions),
            "first_ts": corpus.first_ts,
            "last_ts": corpus.last_ts,
            "rejected": dict(corpus.rejected),
        },
        "hyperparameters": {k: v for k, v in asdict(config).items() if k != "progress"},
        "metrics": metrics,
        # The current version on the same holdout: its Recall@20 (over all cases) and the
        # cases each model alone got right.
        "versus_current": versus,
    }
    path, _ = export(trained, spec.out, manifest, make_current=promote, index=index)
    if spec.store is not None:  # the version complete in the store before CURRENT names it
        spec.store.upload(path)
        if promote:
            spec.store.set_current(path.name)
        spec.store.prune(settings.keep_versions)
    prune_versions(spec.out, settings.keep_versions)
    metrics.update(version=path.name, promoted=promote, seconds=time.perf_counter() - started)
    if versus is not None and versus["worse"]:
        log.warning(
            "model %s is significantly worse than the current one on the holdout "
            "(it misses %d targets the current one lists, and lists %d it misses): not promoted",
            path.name,
            versus["lost"],
            versus["won"],
        )
    elif spec.announce:
        announce(settings, path.name)
    return metrics


def announce(settings: Settings, version: str) -> None:
    """Tell running workers on `model-updates` that a new version is current."""
    from confluent_kafka import Producer

    from ..models.codec import encode

    producer = Producer(settings.client_config({"log_level": 3, "enable.idempotence": True}))
    producer.produce(
        settings.topics.model_updates,
        value=encode(
            {
                "version": version,
                "model_dir": settings.model_dir
                if is_remote(settings.model_dir)
                else str(Path(settings.model_dir).resolve()),
                "ts": int(time.time() * 1000),
            }
        ),
    )
    if producer.flush(10):
        log.warning("could not announce model %s on %s", version, settings.topics.model_updates)


def parse_every(text: str) -> timedelta | str:
    """'24h', '30m', '90s', '2d' as an interval; anything with spaces as a cron expression."""
    text = text.strip()
    if " " in text:
        from croniter import croniter

        if not croniter.is_valid(text):
            raise ValueError(f"--every {text!r} is not a valid cron expression")
        return text
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise ValueError(
            f"--every {text!r}: expected a duration like 24h, 30m, 90s or a cron "
            "expression like '0 3 * * *'"
        )
    seconds = float(text[:-1]) * units[text[-1]]
    if seconds <= 0:
        raise ValueError(f"--every {text!r}: expected a positive duration")
    return timedelta(seconds=seconds)


def next_run(every: timedelta | str, now: datetime) -> datetime:
    if isinstance(every, timedelta):
        return now + every
    from croniter import croniter

    nxt: datetime = croniter(every, now).get_next(datetime)
    return nxt


def run_scheduled(
    spec: JobSpec,
    settings: Settings,
    config: TrainConfig,
    every: timedelta | str,
    max_runs: int | None = None,
    wait: bool = False,
) -> None:
    """Run now (with `wait`: at the first scheduled time), then on the schedule, forever (or
    `max_runs` times). A failed run is logged and the previous model stays current."""
    runs = 0
    if wait:
        _sleep_until_next(every)
    while max_runs is None or runs < max_runs:
        runs += 1
        try:
            metrics = run_observed(spec, settings, config)
            log.info(
                "run %d: model %s, promoted=%s, holdout %s",
                runs,
                metrics["version"],
                metrics["promoted"],
                metrics.get("holdout"),
            )
        except Exception as exc:
            log.error("run %d failed, the previous model stays current: %s", runs, exc)
        if max_runs is not None and runs >= max_runs:
            break
        _sleep_until_next(every)


def _sleep_until_next(every: timedelta | str) -> None:
    now = datetime.now(UTC)
    wake = next_run(every, now)
    log.info("next training run at %s", wake.isoformat(timespec="seconds"))
    time.sleep(max(0.0, (wake - now).total_seconds()))


def rollback(
    model_dir: Path, version: str | None, settings: Settings, store: RemoteStore | None = None
) -> str:
    """Make `version` (default: the version served before CURRENT) current again, once it
    verifies (checksums, shapes, index); raise `ArtifactError` saying why not. With a remote
    `store`, the store's CURRENT is switched, after the version is copied into `model_dir`
    and checked there."""
    if version is None:
        version = store.previous() if store is not None else previous_version(model_dir)
        if version is None:
            where = store.url if store is not None else model_dir
            raise ArtifactError(f"no version was served before CURRENT in {where}: name one")
    if store is not None:
        store.download(version, model_dir)
    load_serving(version_path(model_dir, version), settings.weights, ef=settings.index_ef)
    if store is not None:
        store.set_current(version)
    else:
        set_current(model_dir, version)
    return version
