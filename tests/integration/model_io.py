"""Model versions for the integration tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson


def renamed_version(source: Path, name: str, into: Path) -> Path:
    """A copy of the version directory `source` as version `name` in `into`."""
    target = into / name
    shutil.copytree(source, target)
    manifest = orjson.loads((target / "manifest.json").read_bytes())
    (target / "manifest.json").write_bytes(orjson.dumps({**manifest, "version": name}))
    return target
