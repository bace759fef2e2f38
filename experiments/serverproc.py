"""Start `server.py` as a child process on 127.0.0.1 and stop it by its own pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from clients.base import Target

SERVER_PY = Path(__file__).resolve().parents[1] / "server.py"
READY_PREFIX = "pushlab serving on "


class ServerProcess:
    """A pushlab server in a child process; `target` is where it listens."""

    def __init__(self, args: list[str] | None = None, *, start_timeout_s: float = 20.0) -> None:
        self.args = ["--host", "127.0.0.1", "--port", "0", *(args or [])]
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.target = Target()
        # stderr goes to a file: a pipe nobody reads could fill up and block the server
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())

    def start(self) -> Target:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_PY), *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(READY_PREFIX):
                self.target = Target.parse(line[len(READY_PREFIX) :].strip())
                return self.target
            if not line and self.proc.poll() is not None:
                break
        self._log.seek(0)
        err = self._log.read()
        self.stop()
        raise RuntimeError(f"server did not start: {line.strip() or err.strip()[-500:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s: the child we started, by its pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1


@contextlib.contextmanager
def running_server(args: list[str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(args)
    server.start()
    try:
        yield server
    finally:
        server.stop()
