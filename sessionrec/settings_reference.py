"""The settings reference, docs/settings.md, made from the settings object itself: every key, its
environment name, its default and its meaning (the comment beside or above its field in
models/config.py, the one place each setting is defined). Write it again after a change of
settings with `python -m sessionrec.settings_reference > docs/settings.md`; a test holds the
file equal to what this prints."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from sessionrec.models.config import SECRET_SETTINGS, Settings, env_fields, field_notes


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _rows(obj: Any, path: tuple[str, ...], env: dict[tuple[str, ...], str]) -> list[str]:
    """One table row per setting of `obj` (a settings record at `path`), tables within it
    (a topic's layout) included."""
    rows = []
    notes = field_notes(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows += _rows(value, (*path, f.name), env)
            continue
        key = ".".join((*path, f.name))
        meaning = notes.get(f.name, "")
        if len(path) == 2:  # a topic's layout: say which topic
            meaning = f"{meaning} (the `{path[1]}` topic)"
        if key in SECRET_SETTINGS:
            meaning += " A secret: never shown in logs, errors or `--help`."
        rows.append(f"| `{key}` | `{env[(*path, f.name)]}` | {_default(value)} | {meaning} |")
    return rows


def reference() -> str:
    settings = Settings()
    env = {path: name for name, path in env_fields(settings)}
    out = [
        "# Settings reference",
        "",
        "<!-- Made by `python -m sessionrec.settings_reference > docs/settings.md` from",
        "     models/config.py; tests/unit/test_settings_reference.py holds it current. -->",
        "",
        "Every command reads one settings object: the defaults below, then a TOML file",
        "(`--config FILE`), then `SESSIONREC_*` environment variables, then flags. In a TOML",
        "file a dotted key is a table: `query.k` is `k = 20` under `[query]`, and",
        "`topic_layout.events.partitions` is `partitions = 12` under `[topic_layout.events]`.",
        "A bad value is a one-line error naming the setting.",
        "",
    ]
    header = ["| key | environment | default | meaning |", "| --- | --- | --- | --- |"]
    top_notes = field_notes(Settings)
    top = [
        f"| `{f.name}` | `{env[(f.name,)]}` | {_default(getattr(settings, f.name))} | "
        f"{top_notes.get(f.name, '')} |"
        for f in dataclasses.fields(settings)
        if (f.name,) in env  # the tables below, and [kafka], have rows of their own
    ]
    out += ["## Top level", "", *header, *top, ""]
    for f in dataclasses.fields(settings):
        table = getattr(settings, f.name)
        if dataclasses.is_dataclass(table):
            doc = inspect.cleandoc(type(table).__doc__ or "").replace("\n", " ")
            out += [f"## `[{f.name}]`", "", doc, "", *header, *_rows(table, (f.name,), env), ""]
    out += [
        "## `[kafka]`",
        "",
        "Any librdkafka client property, by its documented name (`security.protocol`,",
        "`sasl.mechanism`, `ssl.ca.location`, ...), for every Kafka client sessionrec builds. In",
        "the environment: `SESSIONREC_KAFKA_` and the name in capitals with `_` for `.`",
        "(`SESSIONREC_KAFKA_SECURITY_PROTOCOL`). Passwords and secrets among them are never",
        "shown. docs/kafka.md has examples for TLS and SASL.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(reference(), end="")
