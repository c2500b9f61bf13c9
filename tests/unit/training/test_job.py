"""`sessionrec train` end to end on JSONL files, promotion, scheduling and rollback."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sessionrec.cli import main
from sessionrec.models.artifact import (
    current_version,
    doomed_versions,
    list_versions,
    load_index,
    load_model,
    previous_version,
)
from sessionrec.models.codec import encode
from sessionrec.models.config import Settings
from sessionrec.models.index import ItemIndex
from sessionrec.models.ranking import Recommender
from sessionrec.models.session import SessionConfig
from sessionrec.models.shop import make_shop
from sessionrec.training import metrics as training_metrics
from sessionrec.training.data import load_corpus
from sessionrec.training.evaluate import cases_from_sessions, evaluate
from sessionrec.training.job import (
    JobSpec,
    compare,
    rollback,
    run_observed,
    run_once,
    run_scheduled,
    split_holdout,
)
from sessionrec.training.trainer import TrainConfig

FAST = ["--epochs", "2", "--batch-size", "128", "--negatives", "64", "--no-progress"]


def _train(events: Path, catalog: Path, out: Path, *flags: str) -> int:
    return main(
        [
            "train",
            "--format",
            "jsonl",
            "--data",
            str(events),
            "--catalog",
            str(catalog),
            "--out",
            str(out),
            *FAST,
            *flags,
        ]
    )


@pytest.fixture(scope="module")
def shop_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shop")
    shop = make_shop(seed=5, users=120)
    events, catalog = root / "events.jsonl", root / "catalog.jsonl"
    events.write_bytes(b"\n".join(encode(e) for e in shop.events) + b"\n{broken\n")
    catalog.write_bytes(b"\n".join(encode(i) for i in shop.items) + b"\n")
    return events, catalog


def test_train_jsonl_writes_a_current_version(
    shop_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, catalog = shop_files
    out = tmp_path / "models"
    code = _train(events, catalog, out)
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["promoted"] and current_version(out) == metrics["version"]
    manifest = json.loads((out / metrics["version"] / "manifest.json").read_text())
    assert manifest["data"]["rejected"] == {"event: payload is not JSON": 1}
    assert manifest["hyperparameters"]["epochs"] == 2 and "holdout" in manifest["metrics"]
    # The run is in the training metrics.
    value = training_metrics.REGISTRY.get_sample_value
    assert value("sessionrec_training_runs_total", {"outcome": "promoted"}) >= 1
    assert (
        value(
            "sessionrec_training_version_info", {"version": metrics["version"], "promoted": "true"}
        )
        == 1
    )
    holdout = manifest["metrics"]["holdout"]
    assert (
        value("sessionrec_training_holdout_score", {"metric": "mrr_at_20"}) == holdout["mrr_at_20"]
    )
    assert value("sessionrec_training_holdout_cases") == holdout["cases"] > 0


def test_failed_scheduled_run_keeps_the_current_model(shop_files, tmp_path: Path) -> None:
    events, catalog = shop_files
    out = tmp_path / "models"
    assert _train(events, catalog, out) == 0
    before = current_version(out)
    failed = training_metrics.REGISTRY.get_sample_value
    before_failed = failed("sessionrec_training_runs_total", {"outcome": "failed"}) or 0.0
    spec = JobSpec("jsonl", str(tmp_path / "missing.jsonl"), None, out)
    run_scheduled(spec, Settings(), TrainConfig(epochs=1, progress=False), "1s", max_runs=1)
    assert current_version(out) == before and list_versions(out) == [before]
    assert failed("sessionrec_training_runs_total", {"outcome": "failed"}) == before_failed + 1


def test_a_run_pushes_its_metrics_to_a_pushgateway(shop_files, tmp_path: Path) -> None:
    """A real HTTP server stands in for the Pushgateway: it takes what is pushed."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pushed: list[tuple[str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            pushed.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        events, catalog = shop_files
        gateway = f"http://127.0.0.1:{server.server_address[1]}"
        spec = JobSpec("jsonl", str(events), str(catalog), tmp_path / "m", pushgateway=gateway)
        run = run_observed(spec, Settings(), TrainConfig(epochs=1, batch_size=128, progress=False))
        # A gateway that is gone: the run stands, the failed push is only logged.
        spec = dataclasses.replace(spec, pushgateway="http://127.0.0.1:9")
        assert run_observed(spec, Settings(), TrainConfig(epochs=1, progress=False))["version"]
    finally:
        server.shutdown()
    ((path, body),) = pushed
    assert path == "/metrics/job/sessionrec-train"
    info = next(line for line in body.decode().splitlines() if "version_info{" in line)
    assert f'version="{run["version"]}"' in info and 'promoted="true"' in info
    assert b"sessionrec_training_last_success_timestamp_seconds" in body
    # What the run read: the corpus its log line describes.
    from sessionrec.models.session import SessionConfig
    from sessionrec.training.data import load_corpus

    corpus = load_corpus("jsonl", str(events), str(catalog), SessionConfig())
    read = training_metrics.REGISTRY.get_sample_value
    assert read("sessionrec_training_data", {"kind": "sessions"}) == len(corpus.sessions) > 0
    assert read("sessionrec_training_data", {"kind": "events"}) == sum(
        len(s.items) for s in corpus.sessions
    )
    assert read("sessionrec_training_data", {"kind": "catalog_items"}) == len(corpus.items) > 0
    assert corpus.last_ts is not None
    assert read("sessionrec_training_data_timestamp_seconds", {"edge": "last"}) == (
        corpus.last_ts / 1000
    )
    for reason, n in corpus.rejected.items():
        assert read("sessionrec_training_rejected_rows", {"reason": reason}) == n
    assert b'sessionrec_training_data{kind="catalog_items"}' in body


def test_a_first_model_is_trained_once(shop_files, tmp_path: Path) -> None:
    """--if-no-model trains only while the store has no current version (a deployment's first
    model from history); --wait leaves the first run to the schedule."""
    events, catalog = shop_files
    out = tmp_path / "models"
    assert _train(events, catalog, out, "--if-no-model") == 0
    made = list_versions(out)
    assert len(made) == 1
    assert _train(events, catalog, out, "--if-no-model") == 0  # a model is current: nothing
    assert list_versions(out) == made

    import time
    from datetime import timedelta

    spec = JobSpec("jsonl", str(events), str(catalog), out)
    started = time.monotonic()
    config = TrainConfig(epochs=1, progress=False)
    run_scheduled(spec, Settings(), config, timedelta(seconds=2), 1, wait=True)
    assert time.monotonic() - started >= 1.0 and len(list_versions(out)) == 2


def test_rollback_to_the_previous_version(shop_files, tmp_path: Path) -> None:
    events, catalog = shop_files
    out = tmp_path / "models"
    for _ in range(2):
        assert _train(events, catalog, out) == 0
    first, second = list_versions(out)
    assert current_version(out) == second
    assert rollback(out, None, Settings()) == first and current_version(out) == first
    assert rollback(out, None, Settings()) == second  # back to the version served before


def test_retention_keeps_the_newest_and_never_current_nor_previous() -> None:
    versions = ["v1", "v2", "v3", "v4", "v5"]
    assert doomed_versions(versions, 2, "v5", "v4") == ["v1", "v2", "v3"]
    assert doomed_versions(versions, 2, "v1", "v5") == ["v2", "v3"]  # rolled back to v1
    assert doomed_versions(versions, 1, "v2", "v3") == ["v1", "v4"]
    assert doomed_versions(versions, 0, "v5", "v4") == []  # 0: keep every version
    assert doomed_versions(versions, 10, None, None) == []


def test_training_runs_delete_versions_beyond_the_retention(
    shop_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    events, catalog = shop_files
    out = tmp_path / "models"
    monkeypatch.setenv("SESSIONREC_KEEP_VERSIONS", "1")
    made = []
    for _ in range(3):
        assert _train(events, catalog, out) == 0
        made.append(current_version(out))
        time.sleep(1.1)  # version names are made of the time, to the second
    assert list_versions(out) == made[1:]  # the newest (CURRENT) and PREVIOUS
    assert previous_version(out) == made[1]


def test_rollback_goes_only_to_a_plain_name_that_verifies(shop_files, tmp_path: Path) -> None:
    import shutil

    from sessionrec.models.artifact import ArtifactError

    events, catalog = shop_files
    out = tmp_path / "models"
    assert _train(events, catalog, out) == 0
    good = current_version(out)
    assert good is not None
    with pytest.raises(ArtifactError, match="no version was served before"):
        rollback(out, None, Settings())
    outside = tmp_path / "evil"
    shutil.copytree(out / good, outside)
    for name in ("../evil", str(outside), "", "a/b"):
        with pytest.raises(ArtifactError, match="is not a plain name"):
            rollback(out, name, Settings())
    corrupt = out / "v-corrupt"
    shutil.copytree(out / good, corrupt)
    with (corrupt / "vectors.npy").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    with pytest.raises(ArtifactError, match=r"vectors\.npy does not match its checksum"):
        rollback(out, "v-corrupt", Settings())
    assert current_version(out) == good


def test_bad_flag_values_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--format", "jsonl", "--data", "x", "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sessionrec: error: --epochs is 0, expected >= 1"
    assert main(["train", "--format", "jsonl", "--data", "x", "--holdout", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sessionrec: error: --holdout is 1.5, expected 0 <= holdout < 1"
    assert main(["train", "--format", "jsonl", "--data", "x", "--batch-negatives", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sessionrec: error: --batch-negatives is -1, expected >= 0"
    assert main(["train", "--format", "jsonl", "--data", "x", "--lr", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sessionrec: error: --lr is 0.0, expected > 0"
    assert main(["train", "--format", "jsonl", "--data", "x", "--wait"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sessionrec: error: --wait waits for the schedule of --every: give both"
    assert main(["train", "--format", "jsonl", "--data", "x", "--metrics-port", "70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sessionrec: error: --metrics-port is 70000, expected 0 to 65535"


def test_fast_sets_its_hyperparameters_and_flags_beside_it_win() -> None:
    from sessionrec.cli import build_parser
    from sessionrec.train_cmd import train_config
    from sessionrec.training.trainer import FAST

    def config(*flags: str) -> TrainConfig:
        args = build_parser().parse_args(["train", "--format", "srgnn", "--data", "x", *flags])
        out: TrainConfig = train_config(args, Settings())
        return out

    default, fast = config(), config("--fast")
    assert (default.negatives, default.batch_size) == (512, 4096)
    assert {name: getattr(fast, name) for name in FAST} == FAST
    assert (default.epochs, fast.epochs) == (5, 3) and fast.temperature == default.temperature
    assert config("--fast", "--lr", "0.02").lr == 0.02
    assert config("--fast", "--epochs", "5").epochs == 5


def test_a_worker_searches_the_model_with_the_configured_beam(shop_files, tmp_path: Path) -> None:
    from sessionrec.models.config import EventWeights
    from sessionrec.models.serving import load_current

    events, catalog = shop_files
    out = tmp_path / "models"
    assert _train(events, catalog, out) == 0
    default = load_current(out, EventWeights())
    wide = load_current(out, EventWeights(), ef=77)
    assert default is not None and wide is not None
    assert default.index.config.ef == 20 and wide.index.config.ef == 77


def _ranks(hits: list[bool]) -> np.ndarray:
    return np.array([0 if hit else -1 for hit in hits])


def test_one_target_more_or_less_on_a_small_holdout_is_no_regression() -> None:
    old = [True] * 30 + [False] * 30
    new = [False] * 2 + [True] * 28 + [False] * 30  # two targets fewer
    verdict = compare(_ranks(new), _ranks(old))
    assert (verdict["lost"], verdict["won"], verdict["worse"]) == (2, 0, False)
    assert verdict["recall_at_20"] == 50.0


def test_a_clearly_worse_model_is_refused() -> None:
    old = [True] * 30 + [False] * 30
    new = [False] * 12 + [True] * 18 + [True] + [False] * 29  # 12 lost, 1 won
    verdict = compare(_ranks(new), _ranks(old))
    assert (verdict["lost"], verdict["won"], verdict["worse"]) == (12, 1, True)


def test_a_target_listed_below_k_counts_as_missed() -> None:
    verdict = compare(np.array([25, 3]), np.array([4, 3]), k=20)
    assert (verdict["lost"], verdict["won"]) == (1, 0)


def test_the_holdout_score_is_the_saved_artifacts(
    shop_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One index per run: the holdout is scored on the index the version serves with."""
    events, catalog = shop_files
    out = tmp_path / "models"
    spec = JobSpec("jsonl", str(events), str(catalog), out)
    settings = Settings()
    builds: list[int] = []
    build = ItemIndex.build.__func__  # type: ignore[attr-defined]

    def counted(cls, *args, **kwargs):
        builds.append(1)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(ItemIndex, "build", classmethod(counted))
    metrics = run_once(spec, settings, TrainConfig(epochs=2, batch_size=128, progress=False))
    gap = SessionConfig(settings.session_gap_ms, settings.max_session_len)
    corpus = load_corpus("jsonl", str(events), str(catalog), gap, None, "", "")
    _, holdout = split_holdout(corpus, spec.holdout)
    model = load_model(out / metrics["version"])
    rec = Recommender(
        load_index(out / metrics["version"], model),
        model.dims,
        model.position_weights,
        settings.weights,
        transitions=model.transitions,
    )
    assert len(builds) == 1
    assert evaluate(rec, cases_from_sessions(holdout.sessions)) == metrics["holdout"]


def test_the_worker_cost_is_measured_on_the_model_it_serves(shop_files, tmp_path: Path) -> None:
    from sessionrec.benchmarks.stream import worker_cost
    from sessionrec.models.config import EventWeights
    from sessionrec.models.serving import load_current

    events, catalog = shop_files
    out = tmp_path / "models"
    assert _train(events, catalog, out) == 0
    serving = load_current(out, EventWeights())
    assert serving is not None
    ids = serving.index.ids[:40]
    sessions = [ids[i : i + 4] for i in range(0, len(ids), 4)]
    costs = worker_cost(Settings(), out, sessions, users=30, batches=(20, 40), events=200, warm=40)
    # Each batch size with the defaults, then without re-scoring (its peer, same run).
    assert [(c.query, c.batch, c.events) for c in costs] == [
        ("defaults", 20, 200),
        ("defaults, no re-scoring", 20, 200),
        ("defaults", 40, 200),
        ("defaults, no re-scoring", 40, 200),
    ]
    cost = costs[0]
    # Every event is a click on a known item, so each user of a batch (whose events there
    # share one computation) plans at least its whole-session query.
    assert cost.queries_per_event > 0
    parts = cost.prepare_us + cost.search_us + cost.finish_us
    assert cost.total_us == pytest.approx(parts) and cost.total_us > 0
    assert cost.events_per_core_second == pytest.approx(1e6 / cost.total_us)
    with pytest.raises(ValueError, match="no model in"):
        worker_cost(Settings(), tmp_path / "empty", sessions, users=30, batches=(20,))


def _ring_sessions(directory: Path) -> list[list[int]]:
    """train_sessions.txt of 600 sessions that walk up a ring of 60 items (ids 1 to 60): the
    next item is always the one after."""
    rng = np.random.default_rng(0)
    sessions = [[(s + j) % 60 for j in range(int(rng.integers(2, 6)))] for s in range(600)]
    (directory / "train_sessions.txt").write_text(
        "\n".join(" ".join(str(i + 1) for i in s) for s in sessions) + "\n"
    )
    return sessions


def test_eval_prints_its_scores_and_how_it_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ring_sessions(tmp_path)
    tests = [f"{s + 1} {s + 2}\t{s + 3}" for s in range(40)]
    (tmp_path / "test.tsv").write_text("\n".join(tests) + "\nbroken line\n")
    flags = ["--fast", "--batch-size", "64", "--epochs", "15", "--no-progress", "--json"]
    code = main(["eval", "--format", "srgnn", "--data", str(tmp_path), *flags])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["cases"] == 40 and out["rejected_test_lines"] == 1
    # The ring is learnt: the next item is among the first five, through the index and exactly.
    assert out["recall_at_5"] >= 90 and out["recall_at_20_exact"] >= 90
    # --fast's settings, but for the batch size given beside it.
    assert (out["negatives"], out["batch_negatives"], out["batch_size"]) == (128, 128, 64)
    assert (out["lr"], out["epochs"], out["seed"]) == (0.012, 15, 0)


def test_paths_of_the_wrong_kind_are_one_line_errors_before_any_work(
    shop_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, _ = shop_files
    a_file = tmp_path / "model-file"
    a_file.write_text("not a directory")
    cases = [
        (["--format", "jsonl", "--data", str(tmp_path)], "is a directory, expected a file"),
        (["--format", "srgnn", "--data", str(events)], "is a file, expected a directory"),
        (["--format", "jsonl", "--data", str(tmp_path / "nope")], "does not exist"),
        (["--format", "jsonl", "--data", str(events), "--catalog", str(tmp_path)], "not a file"),
        (["--format", "jsonl", "--data", str(events), "--out", str(a_file)], "is a file"),
    ]
    for flags, message in cases:
        assert main(["train", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sessionrec: error: ") and message in err, err
        assert len(err.splitlines()) == 1


def test_training_from_a_topic_with_no_broker_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionrec.stream import broker

    monkeypatch.setattr(broker, "CONNECT_TIMEOUT_S", 2.0)
    nobody = f"127.0.0.1:{broker.free_port()}"
    assert main(["train", "--format", "topic", "--bootstrap", nobody, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"sessionrec: error: Kafka at {nobody} did not answer: ")


def test_models_lists_a_malformed_manifest_as_unreadable(
    shop_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, catalog = shop_files
    out = tmp_path / "models"
    assert _train(events, catalog, out) == 0
    (out / "v-bad").mkdir()
    (out / "v-bad" / "manifest.json").write_text("[1, 2")
    capsys.readouterr()
    assert main(["models", "--model-dir", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  v-bad  unreadable manifest") for line in lines), lines
    assert any(line.startswith("* v") for line in lines)


def test_eval_on_a_validation_split_never_reads_the_test_cases_and_takes_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = _ring_sessions(tmp_path)
    # No test.tsv at all: --on validation scores on the last 10 % of the training sessions.
    flags = ["--fast", "--batch-size", "64", "--epochs", "15", "--no-progress", "--json"]
    code = main(["eval", "--data", str(tmp_path), "--on", "validation", "--seeds", "2", *flags])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    held_out = sessions[540:]  # 60 sessions: every prefix of each is a case
    assert out["on"] == "validation" and out["cases"] == sum(len(s) - 1 for s in held_out)
    assert out["seeds"] == [0, 1] and out["recall_at_5"] >= 90
    low, high = out["recall_at_20_spread"]
    assert low <= out["recall_at_20"] <= high
    assert main(["eval", "--data", str(tmp_path), "--validation", "1.5"]) == 2
    assert "--validation is 1.5, expected between 0 and 1" in capsys.readouterr().err


def test_no_last_success_time_is_exported_before_a_run_makes_a_version() -> None:
    """A 0 would read as "no success since 1970" to the alert on its age."""
    import importlib

    from prometheus_client import generate_latest

    from sessionrec.training import metrics

    fresh = importlib.reload(metrics)  # a registry that has seen no run, as at start
    fresh.observe(None)
    text = generate_latest(fresh.REGISTRY).decode()
    assert "sessionrec_training_last_success_timestamp_seconds" not in text
    assert 'sessionrec_training_runs_total{outcome="failed"} 1.0' in text
    for _ in range(2):
        fresh.observe({"promoted": True, "seconds": 3.0, "version": "v1", "holdout": {}})
    text = generate_latest(fresh.REGISTRY).decode()
    assert "\nsessionrec_training_last_success_timestamp_seconds " in text
