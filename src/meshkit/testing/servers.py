"""Real servers for tests: started on free ports, cleaned up even on failure.

When a server is not installed, a test that needs it is skipped with a
message saying how to install it, except under ``MESHKIT_REQUIRE_BACKENDS=1``
(CI), where the skip becomes a failure, so a missing server cannot pass
silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

from meshkit import _env
from meshkit._net import free_port

__all__ = [
    "REQUIRE_BACKENDS_ENV",
    "EtcdServer",
    "RedisServer",
    "backend_missing",
    "free_port",
    "spawn_control_plane",
]

REQUIRE_BACKENDS_ENV = _env.REQUIRE_BACKENDS


def spawn_control_plane(
    data_dir: Path, *, token: str, port: int, prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """``meshkit control-plane`` as a child process on ``port`` (output discarded).

    ``prefix`` goes before the command (``taskset -c 1`` in the benchmarks).
    The caller waits for ``/healthz`` as suits it and terminates the process.
    """
    command = [
        sys.executable,
        "-m",
        "meshkit",
        "control-plane",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]
    return subprocess.Popen(  # noqa: S603 (our own program; the prefix is the caller's)
        [*prefix, *command],
        env=_env.child_environment({_env.TOKEN: token}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def backend_missing(name: str, how_to_install: str) -> NoReturn:
    """Skip the calling test because ``name`` is missing, or fail it in CI."""
    import pytest  # only tests call this, and only they have pytest

    message = f"{name} is not available; {how_to_install}"
    if _env.require_backends():
        pytest.fail(f"{message} ({REQUIRE_BACKENDS_ENV}=1 requires every backend)")
    pytest.skip(message)


class _ServerProcess:
    """A server process of a test's own: ``start()``, ``stop()``, or ``with``."""

    def __init__(self, *, startup_timeout: float = 20.0) -> None:
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Terminate the process (or kill it when it lingers)."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _wait(self, answers: Callable[[], bool], name: str, log: Path | None = None) -> None:
        """Until ``answers()``; stops the process and raises if it exits or takes too long."""
        deadline = time.monotonic() + self.startup_timeout  # noqa: TID251 (real server, real time)
        while not answers():
            assert self._process is not None
            exited = self._process.poll() is not None
            if exited or time.monotonic() > deadline:  # noqa: TID251 (real server, real time)
                output = f":\n{log.read_text()[-2000:]}" if log is not None and log.exists() else ""
                self.stop()
                what = (
                    "exited at startup"
                    if exited
                    else f"did not answer within {self.startup_timeout}s"
                )
                raise RuntimeError(f"{name} {what}{output}")
            time.sleep(0.02)  # noqa: TID251 (polling a real server, within a deadline)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class EtcdServer(_ServerProcess):
    """A single-member etcd on free loopback ports, in a temporary data directory.

    ``with EtcdServer() as etcd: ... etcd.url ...``. Calls ``backend_missing``
    when no ``etcd`` binary is on PATH (Debian: ``apt-get install etcd-server``).
    """

    def __init__(self, *, startup_timeout: float = 20.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.client_port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            backend_missing("etcd", "install it with: apt-get install etcd-server")
        self._dir = tempfile.TemporaryDirectory(prefix="meshkit-etcd-")
        self.client_port, peer_port = free_port(), free_port()
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{peer_port}"
        log = Path(self._dir.name) / "etcd.log"
        with log.open("wb") as log_file:
            self._process = subprocess.Popen(  # noqa: S603 (etcd from PATH, fixed arguments)
                [
                    binary,
                    "--name=test",
                    f"--data-dir={self._dir.name}/data",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=test={peer}",
                    "--logger=zap",
                    "--log-level=error",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait(lambda: _healthy(client), "etcd", log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _healthy(etcd: str) -> bool:
    try:
        with urllib.request.urlopen(f"{etcd}/health", timeout=1) as answer:  # noqa: S310
            return b'"true"' in answer.read()
    except OSError:
        return False


class RedisServer(_ServerProcess):
    """A Redis of the test's own on a free loopback port, keeping nothing on disk.

    Unlike the machine's shared Redis, a test may ``stop()`` this one to see
    what its clients do in an outage, and ``start()`` it again on the same
    port. Calls ``backend_missing`` when ``redis-server`` is not on PATH.
    """

    def __init__(self, *, startup_timeout: float = 20.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self.port = free_port()
        # Its output, for the error when it does not start; removed on leaving ``with``.
        fd, name = tempfile.mkstemp(prefix="meshkit-redis-", suffix=".log")
        os.close(fd)
        self._log = Path(name)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            backend_missing("redis-server", "install it with: apt-get install redis-server")
        with self._log.open("ab") as log_file:
            self._process = subprocess.Popen(  # noqa: S603 (redis-server from PATH, fixed arguments)
                [
                    *(binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""),
                    *("--appendonly", "no", "--loglevel", "warning"),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self._wait(self._answers, "redis-server", self._log)

    def stop(self) -> None:
        """Kill it at once (SIGKILL): an outage, not a shutdown. ``start()`` may follow."""
        if self._process is not None:
            self._process.kill()
        super().stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, traceback)
        self._log.unlink(missing_ok=True)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False
