from __future__ import annotations

from pathlib import Path

import pytest

from sessionrec.cli import main
from sessionrec.settings import SettingsError, env_names, load_settings


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('bootstrap = "toml:1"\npartitions = 3\n[weights]\nview = 0.3\n[query]\nk = 7\n')
    s = load_settings(
        str(cfg), {"SESSIONREC_PARTITIONS": "5", "SESSIONREC_QUERY_K": "9"}, {"partitions": 6}
    )
    assert s.bootstrap == "toml:1"
    assert s.partitions == 6
    assert s.query.k == 9
    assert s.weights.view == 0.3
    assert s.weights.remove_from_cart == -0.5
    assert s.session_gap_ms == 20 * 60_000


def test_settings_are_frozen() -> None:
    s = load_settings(None, {}, {})
    with pytest.raises(AttributeError):
        s.partitions = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SESSIONREC_PARTITIONS": "many"}, "setting 'partitions' is 'many'"),
        ({"SESSIONREC_PARTITIONS": "0"}, "setting 'partitions' is 0, expected 1 to 10000"),
        ({"SESSIONREC_QUERY_EXCLUDE_SEEN": "perhaps"}, "expected true or false"),
        ({"SESSIONREC_QUERY_DIVERSITY": "2"}, "'query.diversity' is 2.0, expected 0 to 1"),
        ({"SESSIONREC_INDEX_EF": "0"}, "setting 'index_ef' is 0, expected 1 to 10000"),
        ({"SESSIONREC_SESSION_GAP_MINUTES": "inf"}, "'session_gap_minutes' is inf, expected"),
        ({"SESSIONREC_SESSION_GAP_MINUTES": "nan"}, "'session_gap_minutes' is nan, expected"),
        ({"SESSIONREC_METRICS_PORT": "70000"}, "'metrics_port' is 70000, expected 0 to 65535"),
        ({"SESSIONREC_WEIGHTS_VIEW": "nan"}, "'weights.view' is nan"),
        (
            {"SESSIONREC_QUERY_NAME_WEIGHT": "inf"},
            "'query.name_weight' is inf, expected a number from 0 to 100",
        ),
        ({"SESSIONREC_QUERY_MAX_INTENTS": "-1"}, "'query.max_intents' is -1, expected 1 to 5"),
        ({"SESSIONREC_QUERY_PAST_WEIGHT": "-0.5"}, "'query.past_weight' is -0.5"),
        ({"SESSIONREC_QUERY_K": "500"}, "'query.k' is 500, expected 1 to 100"),
        ({"SESSIONREC_TOPICS_EVENTS": ""}, "'topics.events' is '', expected a Kafka topic name"),
        ({"SESSIONREC_TOPICS_DLQ": "a/b"}, "'topics.dlq' is 'a/b'"),
        ({"SESSIONREC_LIMITS_MAX_K": "0"}, "'limits.max_k' is 0, expected 1 to 10000"),
        ({"SESSIONREC_STANDBY_REPLICAS": "-1"}, "'standby_replicas' is -1, expected 0 to 10"),
        ({"SESSIONREC_SESSION_TIMEOUT_S": "0.5"}, "'session_timeout_s' is 0.5, expected 1"),
        ({"SESSIONREC_API_PORT": "-1"}, "'api.port' is -1, expected 0 to 65535"),
        ({"SESSIONREC_API_URL": "worker-1:8080"}, "'api.url' is 'worker-1:8080', expected http"),
        ({"SESSIONREC_API_MAX_ITEMS": "0"}, "'api.max_items' is 0, expected 1"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(None, env, {})


def test_a_config_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="is a directory, expected a TOML file"):
        load_settings(str(tmp_path), {}, {})


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("bootstrapp = 'x'\n")
    with pytest.raises(SettingsError, match="unknown setting 'bootstrapp'"):
        load_settings(str(cfg), {}, {})


def test_env_names_cover_nested_settings() -> None:
    names = env_names()
    assert "SESSIONREC_BOOTSTRAP" in names and "SESSIONREC_WEIGHTS_BUY" in names


def test_the_api_token_is_read_and_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    from sessionrec.cli import build_parser

    settings = load_settings(None, {"SESSIONREC_API_TOKEN": "t0ps3cret"}, {})
    assert settings.api.token == "t0ps3cret"
    assert "t0ps3cret" not in repr(settings) and "t0ps3cret" not in str(settings.api)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--help"])
    assert "t0ps3cret" not in capsys.readouterr().out


def test_a_child_process_environment_reproduces_every_setting() -> None:
    """What `demo` and `bench` hand their workers: every setting, none forgotten."""
    from sessionrec.models.config import EventWeights, QueryDefaults, Settings, Topics, to_env

    settings = Settings(
        bootstrap="b:1",
        partitions=3,
        session_gap_minutes=7.5,
        max_session_len=9,
        index_ef=33,
        model_dir="m",
        metrics_port=0,
        worker_group="g",
        log_format="json",
        topics=Topics(events="e", dlq="d"),
        weights=EventWeights(view=0.25, remove_from_cart=-0.75),
        query=QueryDefaults(k=7, diversity=0.5, exclude_seen=True, price_weight=0.5),
    )
    env = to_env(settings)
    assert sorted(env) == sorted(env_names())
    assert load_settings(None, env, {}) == settings
    assert load_settings(None, to_env(Settings()), {}) == Settings()


def test_cli_reports_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topics", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sessionrec: error: config file") and "\n" not in err


def test_help_explains_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("broker", "topics", "demo"):
        assert command in text


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--rates", "abc", "argument --rates: 'abc' is not a comma-separated list of events/s"),
        ("--rates", "500,-1", "argument --rates: '500,-1': each rate is events/s >= 0"),
        ("--rates", ",", "argument --rates: ',' names no rate"),
        ("--one-partition-rates", "x", "argument --one-partition-rates: 'x' is not"),
        ("--seconds", "0", "argument --seconds: '0': must be above 0"),
        ("--users", "two", "argument --users: 'two' is not a whole number"),
        ("--handover-sessions", "-1", "argument --handover-sessions: '-1': must be 0 or more"),
    ],
)
def test_bench_flags_are_checked_before_anything_runs(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "stream", flag, value])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
