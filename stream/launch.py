"""Start and stop worker processes (for the demo, the benchmarks and the tests)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..models.config import Settings, to_env
from .broker import cpu_seconds
from .topics import create_topics, topic_specs

READY_TIMEOUT_S = 60.0
API_LINE = re.compile(r"query API on (\S+)")  # logged by stream.app at start


def on_local_broker(
    settings: Settings, bootstrap: str, model_dir: Path, group: str | None = None
) -> Settings:
    """`settings` pointed at a throwaway embedded broker (topics created), a model directory,
    any free metrics and API ports and, if given, a consumer group of its own."""
    local = dataclasses.replace(
        settings,
        bootstrap=bootstrap,
        model_dir=str(model_dir),
        metrics_port=0,
        api=dataclasses.replace(settings.api, port=0),
        worker_group=group or settings.worker_group,
    )
    create_topics(local, topic_specs(local))
    return local


class WorkerProcess:
    """`sessionrec worker` (or another `command`) as a child process whose log goes to a file."""

    def __init__(self, settings: Settings, log_path: Path, command: list[str] | None = None):
        self.settings = settings
        self.log_path = log_path
        self.command = command or [sys.executable, "-m", "sessionrec.cli", "worker"]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this start's lines begin (the log is appended to)

    def start(self) -> WorkerProcess:
        env = {**os.environ, **to_env(self.settings), "PYTHONUNBUFFERED": "1"}
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115  # handed to the child process
        self.proc = subprocess.Popen(
            self.command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used so far (all its threads)."""
        if self.proc is None:
            raise RuntimeError("worker is not running")
        return cpu_seconds(self.proc.pid)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until faust says the worker is ready (partitions assigned, tables recovered)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.tail_log()}")
            if b"[^Worker]: Ready" in self._this_start():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s: {self.tail_log()}")

    def api_url(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """The URL of the worker's query API, as its log announces it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = API_LINE.search(self._this_start().decode(errors="replace"))
            if found:
                return found.group(1)
            time.sleep(0.2)
        raise TimeoutError(f"worker announced no query API after {timeout_s}s: {self.tail_log()}")

    def _this_start(self) -> bytes:
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read()

    def tail_log(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
