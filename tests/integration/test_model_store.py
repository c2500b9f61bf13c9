"""Model versions in an object store: a real S3-compatible server (moto's server mode) started
by the tests. Training uploads, `sessionrec models` lists and rolls back, and a worker copies
each new current version into its cache, checked, and keeps serving the old one when the
copy fails its check."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sessionrec.cli import main
from sessionrec.models.artifact import ArtifactError, current_version, list_versions
from sessionrec.models.codec import decode_recommendation, encode
from sessionrec.models.records import Event
from sessionrec.models.shop import make_shop
from sessionrec.models.store import RemoteStore, mirror
from sessionrec.stream.broker import EmbeddedBroker, free_port
from sessionrec.stream.launch import WorkerProcess
from sessionrec.stream.topics import create_topics, topic_specs
from tests.integration.kafka_io import consume, produce, producer, unique_settings
from tests.integration.model_io import renamed_version

READY_S = 60.0
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "sessionrec-test",
    "AWS_SECRET_ACCESS_KEY": "sessionrec-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """An S3 endpoint (moto's server) with an empty bucket; its address in AWS_ENDPOINT_URL
    and test credentials in the environment, for this process and the workers it starts."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint})
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket="models")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield "s3://models"
    finally:
        server.terminate()
        server.wait(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_versions_go_up_and_come_down_checked(
    s3: str, retailrocket_model: Path, tmp_path: Path
) -> None:
    store = RemoteStore(f"{s3}/checked")
    assert store.current() is None and store.versions() == []
    source = retailrocket_model / str(current_version(retailrocket_model))
    for name in ("v-1", "v-2"):
        store.upload(renamed_version(source, name, tmp_path))
    store.set_current("v-1")
    store.set_current("v-2")
    assert (store.current(), store.previous(), store.versions()) == ("v-2", "v-1", ["v-1", "v-2"])

    cache = tmp_path / "cache"
    assert mirror(store, cache) == "v-2" and current_version(cache) == "v-2"
    assert list_versions(cache) == ["v-2"]

    # A version whose file no longer matches its manifest's checksum is not taken.
    store.upload(renamed_version(source, "v-3", tmp_path))
    store.fs.pipe_file(f"{store.root}/v-3/vectors.npy", b"tampered")
    store.set_current("v-3")
    with pytest.raises(ArtifactError, match=r"vectors\.npy does not match its checksum"):
        mirror(store, cache)
    assert current_version(cache) == "v-2" and list_versions(cache) == ["v-2"]
    assert not [p for p in cache.iterdir() if p.name.startswith(".partial")]

    # Retention: the newest version, CURRENT (v-3) and PREVIOUS (v-2) stay; v-1 goes.
    store.upload(renamed_version(source, "v-4", tmp_path))
    assert store.prune(1) == ["v-1"]
    assert store.versions() == ["v-2", "v-3", "v-4"]
    assert not store.fs.exists(f"{store.root}/v-1")
    assert store.prune(0) == [] and store.prune(1) == []


def test_train_models_and_rollback_on_a_store(
    s3: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = make_shop(seed=5, users=120)
    events, catalog = tmp_path / "events.jsonl", tmp_path / "catalog.jsonl"
    events.write_bytes(b"\n".join(encode(e) for e in shop.events) + b"\n")
    catalog.write_bytes(b"\n".join(encode(i) for i in shop.items) + b"\n")
    url = f"{s3}/trained"
    monkeypatch.setenv("SESSIONREC_MODEL_DIR", url)
    monkeypatch.setenv("SESSIONREC_MODEL_CACHE", str(tmp_path / "staging"))
    train = ["train", "--format", "jsonl", "--data", str(events), "--catalog", str(catalog)]
    fast = ["--epochs", "1", "--batch-size", "128", "--negatives", "64", "--no-progress"]
    assert main([*train, *fast, "--holdout", "0"]) == 0
    time.sleep(1.1)  # version names are made of the time, to the second
    assert main([*train, *fast, "--holdout", "0"]) == 0
    store = RemoteStore(url)
    first, second = store.versions()
    assert store.current() == second and store.previous() == first
    capsys.readouterr()

    assert main(["models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2, listed
    assert listed[0].startswith(f"  {first}  items=") and listed[1].startswith(f"* {second}  ")
    assert main(["models", "rollback"]) == 0
    assert capsys.readouterr().out.strip() == f"CURRENT -> {first}"
    assert store.current() == first


def test_a_worker_follows_the_store_and_refuses_a_bad_copy(
    s3: str, broker: EmbeddedBroker, unique: str, retailrocket_model: Path, tmp_path: Path
) -> None:
    url = f"{s3}/{unique}"
    store = RemoteStore(url)
    source = retailrocket_model / str(current_version(retailrocket_model))
    store.upload(renamed_version(source, "v-a", tmp_path))
    store.set_current("v-a")
    plain = unique_settings(broker.bootstrap, unique, url)
    settings = dataclasses.replace(plain, model_cache=str(tmp_path / "cache"))
    create_topics(settings, topic_specs(settings))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(READY_S)
        t0 = 1_700_000_000_000

        def answered_by(version: str, start: int) -> bool:
            for i in range(start, start + 40):  # events keep coming while the model loads
                produce(settings, [Event("u1", "285930", "view", t0 + i * 1000)])
                raw = consume(
                    settings.bootstrap,
                    settings.topics.recommendations,
                    lambda v, n=i + 1: len(v) >= n,
                )
                if decode_recommendation(raw[-1]).model_version == version:
                    return True
            return False

        assert answered_by("v-a", 0)
        store.upload(renamed_version(source, "v-b", tmp_path))
        store.set_current("v-b")
        announce = producer(settings.bootstrap)
        announce.produce(settings.topics.model_updates, value=orjson.dumps({"version": "v-b"}))
        announce.flush(10)
        assert answered_by("v-b", 40)

        bad = renamed_version(source, "v-c", tmp_path)
        store.upload(bad)
        store.fs.pipe_file(f"{store.root}/v-c/index.hnsw", b"tampered")
        store.set_current("v-c")
        announce.produce(settings.topics.model_updates, value=orjson.dumps({"version": "v-c"}))
        announce.flush(10)
        deadline = time.monotonic() + 30
        while "refused model v-c" not in worker.log_path.read_text():
            assert time.monotonic() < deadline, worker.tail_log()
            time.sleep(0.5)
        produce(settings, [Event("u1", "285930", "view", t0 + 200_000)])
        raw = consume(
            settings.bootstrap,
            settings.topics.recommendations,
            lambda v: bool(v) and decode_recommendation(v[-1]).event_ts == t0 + 200_000,
        )
        assert decode_recommendation(raw[-1]).model_version == "v-b"  # still served
        assert current_version(tmp_path / "cache") == "v-b"
    finally:
        worker.stop()
