"""One place for Kafka client settings: the [kafka] table reaches every client, secrets stay
secret, and what the worker's faust client cannot honour is refused at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sessionrec.cli import main
from sessionrec.models.config import Settings, to_env
from sessionrec.settings import SettingsError, load_settings
from sessionrec.stream.faust_adapter import broker_credentials, make_app
from sessionrec.stream.kafka import consumer_config, producer_config
from sessionrec.stream.topics import TopicSpec, _differences, topic_specs

SECRET = "hunter2-do-not-show"


def test_the_kafka_table_and_environment_reach_every_client_config(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    cfg.write_text(
        '[kafka]\n"security.protocol" = "SASL_SSL"\n"sasl.mechanism" = "SCRAM-SHA-512"\n'
        f'"sasl.username" = "shop"\n"sasl.password.file" = "{secret_file}"\n'
        '"linger.ms" = 20\n"enable.idempotence" = true\n'
    )
    env = {"SESSIONREC_KAFKA_CLIENT_ID": "shop-1", "SESSIONREC_KAFKA_SSL_CA_LOCATION": "/ca.pem"}
    settings = load_settings(str(cfg), env, {"bootstrap": "k1:9093"})
    props = dict(settings.kafka)
    assert props["sasl.password"] == SECRET and props["client.id"] == "shop-1"
    assert props["ssl.ca.location"] == "/ca.pem" and props["enable.idempotence"] == "true"
    producer = producer_config(settings)
    consumer = consumer_config(settings, "g")
    for config in (producer, consumer, settings.client_config()):
        assert config["bootstrap.servers"] == "k1:9093"
        assert config["security.protocol"] == "SASL_SSL" and config["sasl.password"] == SECRET
    assert producer["linger.ms"] == "20"  # the table wins over the project's defaults
    assert consumer["group.id"] == "g"  # but not over what the client needs
    assert SECRET not in repr(settings) and "'***'" in repr(settings)
    assert load_settings(None, to_env(settings), {}) == settings


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ('"Security Protocol" = "SSL"', "'kafka.Security Protocol' is not a client property"),
        ('"bootstrap.servers" = "x:1"', "use 'bootstrap' instead"),
        ('"sasl.password.file" = "/nonexistent/pw"', "cannot read /nonexistent/pw"),
        ('"ssl.ca.location" = ["a"]', "'kafka.ssl.ca.location' is not a single value"),
    ],
)
def test_bad_kafka_settings_are_one_line_errors(tmp_path: Path, table: str, reason: str) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"[kafka]\n{table}\n")
    with pytest.raises(SettingsError, match=reason):
        load_settings(str(cfg), {}, {})


def test_faust_gets_the_credentials_the_table_describes() -> None:
    import faust

    assert broker_credentials({}) is None
    sasl = broker_credentials(
        {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "shop",
            "sasl.password": SECRET,
        }
    )
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.username, sasl.password, sasl.mechanism.value) == ("shop", SECRET, "SCRAM-SHA-256")
    assert SECRET not in repr(sasl)


def test_faust_gets_a_tls_context_from_the_ca_and_client_certificate(tmp_path: Path) -> None:
    import faust

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = broker_credentials(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": str(cert),
            "ssl.certificate.location": str(cert),
            "ssl.key.location": str(key),
            "ssl.endpoint.identification.algorithm": "none",
        }
    )
    assert isinstance(tls, faust.SSLCredentials) and tls.context.check_hostname is False
    with pytest.raises(ValueError, match=r"kafka.ssl.\*': cannot load the TLS files"):
        broker_credentials({"security.protocol": "SSL", "ssl.ca.location": str(key) + ".nope"})


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"ssl.keystore.location": "k.p12"}, "'kafka.ssl.keystore.location' cannot be honoured"),
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"}, "is 'GSSAPI'"),
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}, "'OAUTHBEARER'"),
        ({"security.protocol": "TLS"}, "'kafka.security.protocol' is 'TLS'"),
    ],
)
def test_what_the_workers_client_cannot_honour_is_refused(props: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        broker_credentials(props)


def test_a_password_never_shows_in_help_or_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONREC_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("SESSIONREC_PARTITIONS", "0")  # a bad setting beside it
    with pytest.raises(SystemExit):
        main(["topics", "--help"])
    assert main(["topics", "--timeout", "1"]) == 2
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "partitions" in out.err
    monkeypatch.setenv("SESSIONREC_PARTITIONS", "1")
    free = "127.0.0.1:1"
    assert main(["topics", "--timeout", "1", "--bootstrap", free]) == 2
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and f"Kafka at {free} did not answer" in out.err


def test_every_client_is_built_from_the_settings() -> None:
    """No product module builds a Kafka client from bootstrap.servers alone."""
    root = Path(__file__).resolve().parents[2]
    allowed = {
        root / "models" / "config.py",  # client_config: the one place
        root / "stream" / "broker.py",  # the embedded broker's own local plaintext listener
        root / "sessionrec" / "settings.py",  # refuses the property in [kafka]
    }
    for package in ("models", "stream", "training", "sessionrec", "benchmarks"):
        for path in (root / package).rglob("*.py"):
            if path not in allowed:
                assert '"bootstrap.servers"' not in path.read_text(), path
    assert Settings().client_config()["bootstrap.servers"] == Settings().bootstrap


def test_the_topic_layout_comes_from_the_file_and_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        "partitions = 12\n[topic_layout]\nreplication_factor = 3\n"
        "[topic_layout.recommendations]\ncompact = true\nretention_hours = 72\n"
        "[topic_layout.events]\nretention_hours = 168\n"
    )
    env = {"SESSIONREC_TOPIC_LAYOUT_DLQ_PARTITIONS": "2"}
    settings = load_settings(str(cfg), env, {})
    specs = {s.name: s for s in topic_specs(settings)}
    recs, events = specs["recommendations"], specs["events"]
    assert recs.replication_factor == events.replication_factor == 3
    assert dict(recs.config) == {"cleanup.policy": "compact,delete", "retention.ms": "259200000"}
    assert dict(events.config) == {"retention.ms": str(168 * 3_600_000)}
    assert (events.partitions, specs["events.dlq"].partitions) == (12, 2)
    assert specs["model-updates"].partitions == 1
    assert dict(specs["items"].config) == {"cleanup.policy": "compact"}
    app = make_app(settings, 5, 8080, "http://worker-1:8080", {})
    assert app.conf.topic_replication_factor == 3  # the table's changelog
    assert load_settings(None, to_env(settings), {}) == settings


@pytest.mark.parametrize(
    ("toml", "reason"),
    [
        ("[topic_layout.events]\npartitions = 8\n", "the session table is partitioned as events"),
        ("[topic_layout]\nreplication_factor = 0\n", "'topic_layout.replication_factor' is 0"),
        ("[topic_layout.dlq]\nretention_hours = -5\n", "'topic_layout.dlq.retention_hours"),
        ("[topic_layout.sessions]\ncompact = 2\n", "expected true or false"),
    ],
)
def test_bad_topic_layouts_are_one_line_errors(tmp_path: Path, toml: str, reason: str) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(toml)
    with pytest.raises(SettingsError, match=reason):
        load_settings(str(cfg), {}, {})


def test_existing_topics_are_compared_with_their_spec() -> None:
    spec = TopicSpec("t", 6, (("cleanup.policy", "compact"), ("retention.ms", "-1")), 3)
    same = {"cleanup.policy": "compact", "retention.ms": "-1"}
    assert _differences(spec, 6, 3, same) == []
    assert _differences(spec, 4, 1, {"cleanup.policy": "delete"}) == [
        "4 partitions, the settings ask for 6",
        "replication factor 1, the settings ask for 3",
        "cleanup.policy delete, the settings ask for compact",
        "retention.ms unset, the settings ask for -1",
    ]
    # No retention in the spec: whatever the broker keeps is not a difference.
    assert _differences(TopicSpec("t", 1), 1, 1, {"retention.ms": "604800000"}) == []
