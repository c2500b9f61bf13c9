"""docs/settings.md is the settings object's own reference: current, and a meaning for every
key."""

from __future__ import annotations

from pathlib import Path

from sessionrec.models.config import env_names
from sessionrec.settings_reference import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_reference_is_current() -> None:
    assert DOC.read_text() == reference(), (
        "docs/settings.md is stale: python -m sessionrec.settings_reference > docs/settings.md"
    )


def test_every_setting_has_a_row_with_its_meaning() -> None:
    rows = [line for line in reference().splitlines() if line.startswith("| `")]
    env_of_rows = [row.split(" | ")[1].strip("`") for row in rows]
    assert sorted(env_of_rows) == sorted(env_names())
    for row in rows:
        key, _, default, meaning = row.strip("| ").split(" | ")
        assert default and len(meaning) > 10, f"{key} has no meaning in models/config.py"
