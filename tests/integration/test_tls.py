"""Kafka over TLS: the embedded broker behind stunnel (Debian's stunnel4) terminating TLS,
advertising stunnel's port, so every client reaches it only through TLS."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from sessionrec.cli import main
from sessionrec.models.config import Settings
from sessionrec.models.records import Event
from sessionrec.stream.broker import EmbeddedBroker, free_port, wait_for_kafka
from sessionrec.stream.launch import WorkerProcess
from sessionrec.stream.replay import produce_events
from sessionrec.stream.topics import create_topics, topic_specs
from tests.integration.kafka_io import unique_settings

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
READY_S = 60.0


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for localhost and 127.0.0.1."""
    ca, ca_key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    san = directory / f"{name}.ext"
    san.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}-ca", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(key), "-out", str(csr))  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-extfile", str(san), "-out", str(cert))  # fmt: skip
    return ca, cert, key


@contextmanager
def _behind_stunnel(
    directory: Path, ca: Path, cert: Path, key: Path, client_ca: Path | None = None
) -> Iterator[str]:
    """An embedded broker reachable only through stunnel's TLS port (which it advertises);
    with `client_ca`, stunnel also asks every client for a certificate that CA signed."""
    if STUNNEL is None:  # CI installs it (.ci/run); elsewhere `apt-get install stunnel4`
        if os.environ.get("CI"):
            pytest.fail("stunnel4 is not installed")
        pytest.skip("stunnel4 is not installed: apt-get install stunnel4 to run the TLS tests")
    port = free_port()
    with EmbeddedBroker(port=0, advertised=f"127.0.0.1:{port}") as broker:
        conf = directory / f"stunnel-{port}.conf"
        mutual = f"verify = 2\nCAfile = {client_ca}\n" if client_ca else ""
        conf.write_text(
            f"foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\n"
            f"connect = {broker.bootstrap}\ncert = {cert}\nkey = {key}\n{mutual}"
        )
        proxy = subprocess.Popen(
            [STUNNEL, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            yield f"127.0.0.1:{port}"
        finally:
            proxy.terminate()
            proxy.wait(10)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(TLS bootstrap, the CA that signed the broker's certificate, another CA)."""
    directory = tmp_path_factory.mktemp("tls")
    ca, cert, key = _certificates(directory, "broker")
    other_ca, _, _ = _certificates(directory, "other")
    with _behind_stunnel(directory, ca, cert, key) as bootstrap:
        wait_for_kafka(Settings(bootstrap=bootstrap, kafka=_tls(ca)).client_config(), 20)
        yield bootstrap, ca, other_ca


def _tls(ca: Path) -> tuple[tuple[str, str], ...]:
    return (("security.protocol", "SSL"), ("ssl.ca.location", str(ca)))


def test_the_worker_and_the_tools_work_over_tls(
    tls_broker: tuple[str, Path, Path], unique: str, retailrocket_model: Path, tmp_path: Path
) -> None:
    bootstrap, ca, _ = tls_broker
    plain = unique_settings(bootstrap, unique, str(retailrocket_model))
    settings = dataclasses.replace(plain, kafka=_tls(ca))
    assert create_topics(settings, topic_specs(settings))
    _a_worker_answers_every_event(settings, tmp_path, 40)


def _a_worker_answers_every_event(settings: Settings, tmp_path: Path, count: int) -> None:
    """Start a worker, produce `count` events (replay's producer), read every answer."""
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(READY_S)
        t0 = 1_700_000_000_000
        events = [Event(f"tls-{i % 7}", "285930", "view", t0 + i * 1000) for i in range(count)]
        assert produce_events(settings, settings.topics.events, events) == count
        values = _consume_tls(settings, settings.topics.recommendations, count)
        answered = {(m["user_id"], m["event_ts"]) for m in map(orjson.loads, values)}
        assert {(e.user_id, e.ts) for e in events} <= answered
    finally:
        worker.stop()


def _consume_tls(settings: Settings, topic: str, count: int) -> list[bytes]:
    from confluent_kafka import Consumer

    from sessionrec.stream.kafka import consumer_config

    consumer = Consumer(consumer_config(settings, f"tls-{time.time_ns()}"))
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(values) < count and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if not msg.error() and msg.value() is not None:
                    values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_an_untrusted_certificate_or_plaintext_fails_in_one_line(
    tls_broker: tuple[str, Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bootstrap, _, other_ca = tls_broker
    monkeypatch.setenv("SESSIONREC_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("SESSIONREC_KAFKA_SSL_CA_LOCATION", str(other_ca))
    started = time.monotonic()
    assert main(["topics", "--timeout", "5", "--bootstrap", bootstrap]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sessionrec: error: Kafka at {bootstrap}")
    assert "refused the connection" in err[0] and "certificate verify failed" in err[0]
    monkeypatch.delenv("SESSIONREC_KAFKA_SECURITY_PROTOCOL")
    monkeypatch.delenv("SESSIONREC_KAFKA_SSL_CA_LOCATION")
    assert main(["topics", "--timeout", "5", "--bootstrap", bootstrap]) == 2  # plaintext
    assert capsys.readouterr().err.strip().startswith(f"sessionrec: error: Kafka at {bootstrap}")


def test_tail_and_training_from_topics_work_over_tls(
    tls_broker: tuple[str, Path, Path],
    unique: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from confluent_kafka import Producer

    from sessionrec.models.codec import encode, encode_session
    from sessionrec.models.records import Item
    from sessionrec.models.session import Click, Session
    from sessionrec.stream.kafka import producer_config
    from sessionrec.stream.tail import tail

    bootstrap, ca, _ = tls_broker
    settings = dataclasses.replace(
        unique_settings(bootstrap, unique, str(tmp_path / "models")), kafka=_tls(ca)
    )
    create_topics(settings, topic_specs(settings))
    producer = Producer(producer_config(settings))
    t0 = 1_700_000_000_000
    for s in range(120):  # sessions over a ring of 12 items, as the worker closes them
        items = [f"ring-{(s + j) % 12}" for j in range(4)]
        clicks = tuple(Click(t0 + 1000 * j, j, item, "view") for j, item in enumerate(items))
        producer.produce(
            settings.topics.sessions, key=b"u", value=encode_session(Session(f"s{s}", "u", clicks))
        )
        answer = {"user_id": "u", "session_id": "s", "items": [], "intents": [],
                  "model_version": "v", "event_ts": t0 + s, "emitted_ts": t0 + s}  # fmt: skip
        producer.produce(settings.topics.recommendations, key=b"u", value=encode(answer))
    for n in range(12):
        item = Item(f"ring-{n}", name=f"ring {n}", category="rings")
        producer.produce(settings.topics.items, key=item.item_id.encode(), value=encode(item))
    assert producer.flush(20) == 0
    capsys.readouterr()
    assert tail(settings, as_json=True, from_beginning=True, limit=5, timeout_s=30) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    for name, value in _env(settings).items():
        monkeypatch.setenv(name, value)
    flags = ["--format", "topic", "--out", str(tmp_path / "models"), "--epochs", "2"]
    assert main(["train", *flags, "--holdout", "0", "--no-progress"]) == 0
    assert list((tmp_path / "models").glob("*/manifest.json"))


def _env(settings: Settings) -> dict[str, str]:
    from sessionrec.models.config import to_env

    return to_env(settings)


def test_the_worker_and_the_tools_work_over_mutual_tls(
    tmp_path: Path,
    unique: str,
    retailrocket_model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutual TLS as Aiven asks for it: the client shows a certificate signed by a CA the
    broker's side trusts; a client without one is refused in one line."""
    ca, cert, key = _certificates(tmp_path, "broker")
    client_ca, client_cert, client_key = _certificates(tmp_path, "client")
    with _behind_stunnel(tmp_path, ca, cert, key, client_ca=client_ca) as bootstrap:
        mutual = (
            *_tls(ca),
            ("ssl.certificate.location", str(client_cert)),
            ("ssl.key.location", str(client_key)),
        )
        plain = unique_settings(bootstrap, unique, str(retailrocket_model))
        settings = dataclasses.replace(plain, kafka=tuple(sorted(mutual)))
        wait_for_kafka(settings.client_config(), 20)
        assert create_topics(settings, topic_specs(settings))
        _a_worker_answers_every_event(settings, tmp_path, 20)

        capsys.readouterr()
        no_certificate = dataclasses.replace(settings, kafka=_tls(ca))
        for name, value in _env(no_certificate).items():
            monkeypatch.setenv(name, value)
        assert main(["topics", "--timeout", "5"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"sessionrec: error: Kafka at {bootstrap}"), err
        assert "certificate required" in err[0]
