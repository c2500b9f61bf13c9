"""Build the one `Settings` object: defaults < TOML file < SESSIONREC_* environment < flags.

The environment names come from `models.config.env_fields` (derived from the field paths).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.config import Settings, env_fields, env_names

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
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise SettingsError(f"setting '{path}' is {value!r}, expected a table")
            changes[key] = _apply(current, value, f"{path}.")
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
    return out


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
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file '{path}' is not valid TOML ({exc})") from None
        settings = _apply(settings, table)
    settings = _apply(settings, _from_env(env))
    settings = _apply(settings, {k: v for k, v in flags.items() if v is not None})
    _validate(settings)
    result: Settings = settings
    return result


def _validate(settings: Settings) -> None:
    if settings.partitions < 1:
        raise SettingsError(f"setting 'partitions' is {settings.partitions}, expected at least 1")
    if settings.session_gap_minutes <= 0:
        raise SettingsError(
            f"setting 'session_gap_minutes' is {settings.session_gap_minutes}, expected > 0"
        )
    if settings.max_session_len < 2:
        raise SettingsError(
            f"setting 'max_session_len' is {settings.max_session_len}, expected at least 2"
        )
    if not 1 <= settings.index_ef <= 10_000:
        raise SettingsError(f"setting 'index_ef' is {settings.index_ef}, expected 1 to 10000")
    if settings.query.k < 1 or settings.query.k > 1000:
        raise SettingsError(f"setting 'query.k' is {settings.query.k}, expected 1 to 1000")
    if not 0.0 <= settings.query.diversity <= 1.0:
        raise SettingsError(
            f"setting 'query.diversity' is {settings.query.diversity}, expected 0 to 1"
        )
    if settings.log_format not in {"text", "json"}:
        raise SettingsError(
            f"setting 'log_format' is {settings.log_format!r}, expected text or json"
        )
    if not settings.bootstrap.strip():
        raise SettingsError("setting 'bootstrap' is empty, expected host:port[,host:port]")
