"""The package boundaries of the design card hold."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_MODELS = {"faust", "confluent_kafka", "torch", "aiokafka"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_models_import_no_io_frameworks_nor_environment() -> None:
    for path in (ROOT / "models").rglob("*.py"):
        assert not _imports(path) & FORBIDDEN_IN_MODELS, path
        assert "os.environ" not in path.read_text(), path


def test_stream_never_imports_torch() -> None:
    for path in (ROOT / "stream").rglob("*.py"):
        assert "torch" not in _imports(path), path


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_is_accepted_by_docker_compose() -> None:
    compose = _compose_command()
    if compose is None:
        pytest.skip("no docker compose client is installed here")
    result = subprocess.run(
        [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
