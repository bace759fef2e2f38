"""Child processes an experiment starts on 127.0.0.1 (the server, the fault proxy), each
stopped by its own pid.

Each prints one ready line with its address once it listens; `start()` waits for it.
Running the proxy in its own process keeps its timers off the measuring clients' event loop.
"""

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

ROOT = Path(__file__).resolve().parents[1]
SERVER_PY = ROOT / "server.py"
READY_PREFIX = "pushlab serving on "


class ChildProcess:
    """A Python child that prints `<ready_prefix><address>` once it listens."""

    def __init__(
        self,
        argv: list[str],
        ready_prefix: str,
        *,
        start_timeout_s: float = 20.0,
        prefix: list[str] | None = None,
    ) -> None:
        self.argv = argv
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", NAME]: exec'd, so the pid is ours
        self.ready_prefix = ready_prefix
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.target = Target()
        # stderr goes to a file: a pipe nobody reads could fill up and block the child
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())

    def start(self) -> Target:
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, *self.argv],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(self.ready_prefix):
                self.target = Target.parse(line[len(self.ready_prefix) :].strip())
                return self.target
            if not line and self.proc.poll() is not None:
                break
        err = self.log()
        self.stop()
        raise RuntimeError(f"{self.argv[0]} did not start: {line.strip() or err.strip()[-500:]}")

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after 5 s, to the child we started; returns its stdout rest."""
        rest = ""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rest, _ = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rest, _ = self.proc.communicate(timeout=5)
        if not self._log.closed:
            self._log.close()
        return rest or ""

    def log(self) -> str:
        """What the child wrote to stderr so far."""
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1


class ServerProcess(ChildProcess):
    """`python server.py` on 127.0.0.1 (or `host`), any free port."""

    def __init__(
        self,
        args: list[str] | None = None,
        *,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        argv = [str(SERVER_PY), "--host", host, "--port", "0", *(args or [])]
        super().__init__(argv, READY_PREFIX, start_timeout_s=start_timeout_s, prefix=prefix)


class ProxyProcess(ChildProcess):
    """`python -m netem.proxy` in front of `upstream`, with conditions `net` (a --net string)."""

    def __init__(self, upstream: Target, net: str = "") -> None:
        argv = [
            "-m",
            "netem.proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"{upstream.host}:{upstream.port}",
            "--net",
            net,
        ]
        super().__init__(argv, "listening on ")


@contextlib.contextmanager
def running_server(args: list[str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def proxied(target: Target, net: str) -> Iterator[Target]:
    """`target` itself when `net` is empty, else a proxy process in front of it."""
    if not net:
        yield target
        return
    proxy = ProxyProcess(target, net)
    proxy.start()
    try:
        yield proxy.target
    finally:
        proxy.stop()
