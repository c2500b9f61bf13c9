"""Build the one `Settings` object: defaults < TOML file < SESSIONREC_* environment < flags.

The environment names come from `models.config.env_fields` (derived from the field paths).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sessionrec.models.config import (
    KAFKA_ENV_PREFIX,
    SECRET_PROPERTIES,
    SECRET_SETTINGS,
    Secret,
    Settings,
    env_fields,
    env_names,
    kafka_property,
)
from sessionrec.models.ranking import query_problem

__all__ = ["SettingsError", "env_names", "load_settings"]


class SettingsError(ValueError):
    """A setting had a value that cannot be used; the message names it."""


def _coerce(path: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"setting '{path}' is {value!r}, expected true or false")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise SettingsError(f"setting '{path}' is {value!r}, expected {kind.__name__}") from None


def _field_types(cls: type) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        hints[f.name] = type(default)
    return hints


def _apply(obj: Any, values: Mapping[str, Any], prefix: str = "") -> Any:
    types = _field_types(type(obj))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in types:
            raise SettingsError(f"unknown setting '{path}'")
        current = getattr(obj, key)
        if path == "kafka":
            changes[key] = _kafka_table(current, value)
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise SettingsError(f"setting '{path}' is {value!r}, expected a table")
            changes[key] = _apply(current, value, f"{path}.")
        elif path in SECRET_SETTINGS:
            changes[key] = Secret(_coerce(path, value, str))
        else:
            changes[key] = _coerce(path, value, types[key])
    return dataclasses.replace(obj, **changes)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment sets, as a nested table like the TOML file's."""
    out: dict[str, Any] = {}
    for name, path in env_fields():
        if name in env:
            table = out
            for part in path[:-1]:
                table = table.setdefault(part, {})
            table[path[-1]] = env[name]
    kafka = {kafka_property(n): v for n, v in env.items() if n.startswith(KAFKA_ENV_PREFIX)}
    if kafka:
        out["kafka"] = kafka
    return out


_PROPERTY = re.compile(r"[a-z][a-z0-9]*(\.[a-z0-9]+)*")
# Not librdkafka's: the file a secret is read from (its first line), e.g. a mounted secret.
FILE_SUFFIX = ".file"


def _kafka_table(current: tuple[tuple[str, str], ...], table: Any) -> tuple[tuple[str, str], ...]:
    """[kafka] properties merged over `current`: names as librdkafka documents them, scalar
    values; `<secret>.file` reads a secret from a file. Secret values are never shown."""
    if not isinstance(table, Mapping):
        raise SettingsError("setting 'kafka' is not a table, expected librdkafka properties")
    props = dict(current)
    for name, value in table.items():
        if not isinstance(name, str) or not _PROPERTY.fullmatch(name):
            raise SettingsError(f"setting 'kafka.{name}' is not a client property name")
        if isinstance(value, Mapping | list) or value is None:
            raise SettingsError(f"setting 'kafka.{name}' is not a single value")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if name.endswith(FILE_SUFFIX) and name[: -len(FILE_SUFFIX)] in SECRET_PROPERTIES:
            name, text = name[: -len(FILE_SUFFIX)], _read_secret(name, text)
        if name == "bootstrap.servers":
            raise SettingsError("setting 'kafka.bootstrap.servers': use 'bootstrap' instead")
        props[name] = Secret(text) if name in SECRET_PROPERTIES else text
    return tuple(sorted(props.items()))


def _read_secret(name: str, path: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise SettingsError(f"setting 'kafka.{name}': cannot read {path} ({reason})") from None
    if not lines or not lines[0]:
        raise SettingsError(f"setting 'kafka.{name}': {path} is empty")
    return lines[0]


def load_settings(
    config_path: str | None, env: Mapping[str, str], flags: Mapping[str, Any]
) -> Settings:
    """Layer the sources in order of precedence and validate the result."""
    settings = Settings()
    if config_path:
        path = Path(config_path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file '{path}' does not exist") from None
        except IsADirectoryError:
            raise SettingsError(
                f"config file '{path}' is a directory, expected a TOML file"
            ) from None
        except PermissionError:
            raise SettingsError(
                f"config file '{path}' cannot be read (permission denied)"
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file '{path}' is not valid TOML ({exc})") from None
        settings = _apply(settings, table)
    settings = _apply(settings, _from_env(env))
    settings = _apply(settings, {k: v for k, v in flags.items() if v is not None})
    _validate(settings)
    result: Settings = settings
    return result


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _validate(settings: Settings) -> None:
    """Every setting finite and in range, or a one-line error naming it."""
    s, q, lim = settings, settings.query, settings.limits
    _range("partitions", s.partitions, 1, 10_000)
    _range("session_gap_minutes", s.session_gap_minutes, 1e-3, 525_600)  # up to a year
    _range("max_session_len", s.max_session_len, 2, 10_000)
    _range("state_ttl_days", s.state_ttl_days, 1e-3, 36_500)
    _range("index_ef", s.index_ef, 1, 10_000)
    _range("standby_replicas", s.standby_replicas, 0, 10)
    _range("session_timeout_s", s.session_timeout_s, 1.0, 1800.0)
    _range("metrics_port", s.metrics_port, 0, 65_535)
    _range("api.port", s.api.port, 0, 65_535)
    _range("api.max_items", s.api.max_items, 1, 100_000)
    _range("api.cached_answers", s.api.cached_answers, 0, 10_000_000)
    if s.api.url and not re.fullmatch(r"https?://[^/\s]+", s.api.url):
        raise SettingsError(
            f"setting 'api.url' is {s.api.url!r}, expected http://host:port (no path)"
        )
    _range("limits.max_k", lim.max_k, 1, 10_000)
    _range("limits.max_intents", lim.max_intents, 1, 20)
    _range("limits.max_search_depth", lim.max_search_depth, 1, 100_000)
    for name, value in dataclasses.asdict(s.weights).items():
        _range(f"weights.{name}", value, -100.0, 100.0)
    problem = query_problem(q, lim)
    if problem:
        raise SettingsError(
            f"setting 'query.{problem.split(' ', 1)[0]}' {problem.split(' ', 1)[1]}"
        )
    if s.log_format not in {"text", "json"}:
        raise SettingsError(f"setting 'log_format' is {s.log_format!r}, expected text or json")
    if not s.bootstrap.strip():
        raise SettingsError("setting 'bootstrap' is empty, expected host:port[,host:port]")
    for name in ("worker_group", "model_dir"):
        if not getattr(s, name).strip():
            raise SettingsError(f"setting '{name}' is empty")
    layout = s.topic_layout
    _range("topic_layout.replication_factor", layout.replication_factor, 1, 100)
    for name in dataclasses.asdict(s.topics):
        topic = getattr(layout, name)
        _range(f"topic_layout.{name}.partitions", topic.partitions, 0, 10_000)
        hours = topic.retention_hours
        if hours != -1:
            _range(f"topic_layout.{name}.retention_hours (-1: forever)", hours, 0, 876_000)
    if layout.events.partitions not in (0, s.partitions):
        raise SettingsError(
            f"setting 'topic_layout.events.partitions' is {layout.events.partitions}, but "
            f"'partitions' is {s.partitions}: the session table is partitioned as events, "
            "set 'partitions' instead"
        )
    for name, topic in dataclasses.asdict(s.topics).items():
        if not _TOPIC.fullmatch(topic) or topic in {".", ".."}:
            raise SettingsError(
                f"setting 'topics.{name}' is {topic!r}, expected a Kafka topic name "
                "(1 to 249 of letters, digits, '.', '_', '-')"
            )


def _range(name: str, value: float, low: float, high: float) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise SettingsError(f"setting '{name}' is {value!r}, expected {low:g} to {high:g}")
