"""Child processes an experiment starts on 127.0.0.1 (the server, the fault proxy), each
stopped by its own pid.

Each prints one ready line with its address once it listens; `start()` waits for it.
Running the proxy in its own process keeps its timers off the measuring clients' event loop.

A ready line is the prefix, a URL, then optional `key=value` words (shell-quoted):

    pushlab serving on http://127.0.0.1:PORT
    pushlab serving on https://127.0.0.1:PORT ca=/tmp/pushlab-pki-x/ca.pem [front=nginx]

`target` is the address; `scheme` and `ca_file` (the CA a client must trust, or None) say
how to speak to it, and `ready_fields` holds every `key=value`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from clients.base import Target
from streams.errors import ChildStartError
from transports.web.config import ServerConfig, is_loopback

ROOT = Path(__file__).resolve().parents[1]
SERVER_PY = ROOT / "server.py"
READY_PREFIX = "pushlab serving on "
STOP_GRACE_S = 5.0  # after SIGTERM, before SIGKILL


def stop_process(
    proc: subprocess.Popen[Any],
    grace_s: float = STOP_GRACE_S,
    signals: Sequence[int] = (signal.SIGTERM,),
) -> None:
    """Stop a child we started, by its own pid: each of `signals` in turn, `grace_s` apart,
    then SIGKILL; returns once it has been reaped. A child that already exited is reaped."""
    for sig in signals:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _tail(data: bytes, chars: int = 200) -> str:
    return data.decode(errors="replace").strip()[-chars:]


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
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = Target()
        self.scheme = "http"
        self.ready_fields: dict[str, str] = {}
        self._stdout = b""  # read past the ready line, returned by stop()
        # stderr goes to a file: a pipe nobody reads could fill up and block the child
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())

    def start(self) -> Target:
        """Start the child and wait for its ready line; ChildStartError (the child stopped)
        if it exits first or prints none within `start_timeout_s`, even if it prints nothing."""
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, *self.argv],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line, why = self._ready_line()
        if line is not None:
            self.scheme, self.target, self.ready_fields = parse_ready(
                line[len(self.ready_prefix) :]
            )
            return self.target
        err = self.log().strip()[-500:]
        self.stop()
        name = shlex.join(self.argv)[:200]
        raise ChildStartError(f"{name} did not start ({why}); stderr: {err or '(empty)'}")

    def _ready_line(self) -> tuple[str | None, str]:
        """(the ready line, "") or (None, why not), reading stdout only while the deadline
        allows: a blocking readline() would wait forever for a child that prints nothing."""
        assert self.proc is not None and self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + self.start_timeout_s
        buf = seen = b""  # the line being read; the tail of all it printed (for the error)
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:  # EOF: the child exited, or closed its stdout
                    return None, f"{self._exit_status()}; stdout: {_tail(seen)!r}"
                buf, seen = buf + chunk, (seen + chunk)[-4096:]
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    if line.startswith(self.ready_prefix):
                        self._stdout = buf
                        return line, ""
        return None, f"no ready line within {self.start_timeout_s:g} s; stdout: {_tail(seen)!r}"

    def _exit_status(self) -> str:
        assert self.proc is not None
        try:  # its stdout closes as it exits: the exit status follows within moments
            return f"exited with {self.proc.wait(timeout=1.0)}"
        except subprocess.TimeoutExpired:
            return "closed its stdout"

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after STOP_GRACE_S, to the child we started (by its pid);
        returns what it printed after its ready line."""
        rest = self._stdout
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.stdout is not None and not self.proc.stdout.closed:
                # non-blocking: a grandchild that inherited the pipe could keep it open
                os.set_blocking(self.proc.stdout.fileno(), False)
                rest += self.proc.stdout.read() or b""
                self.proc.stdout.close()
        self._stdout = b""
        if not self._log.closed:
            self._log.close()
        return rest.decode(errors="replace")

    def log(self) -> str:
        """What the child wrote to stderr so far."""
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def url(self) -> str:
        """The address with its scheme: `https://127.0.0.1:PORT` for a TLS server."""
        return f"{self.scheme}://{self.target.authority}"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate the child's ready line named (`ca=`), else None."""
        ca = self.ready_fields.get("ca")
        return Path(ca) if ca else None


def parse_ready(text: str) -> tuple[str, Target, dict[str, str]]:
    """(scheme, address, key=value fields) of what follows a ready line's prefix.
    `Target` knows only http: an https URL is parsed as the same authority over http."""
    words = shlex.split(text)
    if not words:
        raise ValueError("ready line names no address")
    url, scheme = words[0], "http"
    if url.startswith("https://"):
        url, scheme = "http://" + url.removeprefix("https://"), "https"
    fields = dict(word.split("=", 1) for word in words[1:] if "=" in word)
    return scheme, Target.parse(url), fields


def lab_network_flags(host: str, argv: Sequence[str]) -> list[str]:
    """`--allow-anonymous` for a server the lab starts on a non-loopback address without
    `--auth`: such an address is inside a network namespace the lab made (netem/netns.py),
    reachable from nothing but the lab's own processes; the server refuses such an address
    without either flag (docs/SECURITY.md)."""
    if is_loopback(host) or "--auth" in argv or "--allow-anonymous" in argv:
        return []
    return ["--allow-anonymous"]


class ServerProcess(ChildProcess):
    """`python server.py` on 127.0.0.1 (or `host`), any free port, configured by `config`
    (its host and port are replaced by those) and then `args`."""

    def __init__(
        self,
        args: list[str] | None = None,
        *,
        config: ServerConfig | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        settings = config.to_argv() if config is not None else []
        argv = [str(SERVER_PY), *settings, "--host", host, "--port", "0", *(args or [])]
        argv += lab_network_flags(host, argv)
        super().__init__(argv, READY_PREFIX, start_timeout_s=start_timeout_s, prefix=prefix)

    def secret_file(self) -> str:
        """The key a server with --auth signs credentials with: its --auth-secret-file, or
        the one it made and named in its ready line (`secret=`); "" without --auth."""
        if "--auth-secret-file" in self.argv:
            return self.argv[self.argv.index("--auth-secret-file") + 1]
        return self.ready_fields.get("secret", "")

    def credential(self, identity: str = "lab", kind: str = "key") -> str:
        """A credential for `identity`, minted with the server's own key (the lab holds it,
        as an operator running `pushlab token` would)."""
        from streams.credentials import Authority

        path = self.secret_file()
        if not path:
            raise ValueError("this server runs without --auth: it takes no credential")
        return Authority(Path(path).read_bytes()).mint(identity, kind)

    def authed_target(self, identity: str = "lab") -> Target:
        """The server's target carrying a credential for `identity` (as is, without --auth)."""
        if not self.secret_file():
            return self.target
        return dataclasses.replace(self.target, token=self.credential(identity))


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
