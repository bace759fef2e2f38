"""A real Redis as a child process: the shared stream log of the scale-out mode.

Theory of operation
-------------------
`RedisServer` runs Debian's `redis-server` (7.0 here) in the foreground, configured by its
command line alone (no config file: every setting is in `command()`), with its working
directory a fresh `pushlab-redis-*` temp dir that `stop()` removes:

    redis-server --port P --bind HOST [BIND...] --save '' --appendonly no
                 --dir TMPDIR --logfile TMPDIR/redis.log --daemonize no
                 --maxmemory 256mb [--protected-mode no] [EXTRA...]

- `--save ''` and `--appendonly no`: a lab log that dies with its process; nothing is written
  to disk, and a SIGTERM shutdown does not stop to write a snapshot. `save=True` keeps
  Redis's default snapshot points (for an experiment that wants to pay for them).
- `--maxmemory`: a runaway storm fills memory to this bound and then gets errors
  (`noeviction`, the default policy: a log must not silently drop entries), not the OOM killer.
- `--protected-mode no` only when `bind` names a non-loopback address (the veth ends of
  netem/netns.py, for nodes in namespaces): protected mode refuses every non-loopback client
  of a password-less Redis, which is exactly the lab's case there. On loopback alone it stays on.
- `--daemonize no`: the child stays the process we started, so its pid is Redis's own, and
  `stop()` signals that pid (SIGTERM, then SIGKILL after a grace period). `command_prefix`
  (e.g. `ip netns exec NS`) execs Redis, so the pid stays Redis's there too.

`port=0` picks a free port first (the kernel's, for `host`); another process may take it
before Redis binds it, so a start that fails with "Address already in use" is retried on a
new port, as netem/nginx.py does. Ready means a PING on a raw socket answered `+PONG` by our
child (INFO's process_id on the same connection is its pid: on a taken port another Redis
would answer), polled with a bound; a Redis that exits first, or never answers, is a
`ChildStartError` carrying the tail of its log. A missing binary is
`EnvironmentUnavailable` with one line.

`info()` and `call()` speak RESP2 over a raw socket with streams/resp.py (no client
library, no redis-cli):
INFO's `key:value` lines come back as a dict with numbers parsed. `cpu_s()` reads the
scheduler's per-thread nanosecond clock (harness/procstat.py), which resolves short windows
where INFO's `used_cpu_*` (rusage, microseconds but sampled by Redis) would do too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from harness import procstat
from harness.children import stop_process
from streams.errors import ChildStartError, EnvironmentUnavailable, ProtocolError, PushlabError
from streams.resp import Parser, ReplyError, encode_command

NOT_INSTALLED = "redis-server is not installed: run `make system` (installs Debian's redis-server)"
_DEBIAN_BINARY = "/usr/bin/redis-server"
_START_TIMEOUT_S = 10.0
_STOP_GRACE_S = 5.0
_IO_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

RespValue = str | int | bytes | list["RespValue"] | None


class RedisError(PushlabError):
    """Redis answered a command with an error reply (`-ERR ...`), or not in RESP."""


def redis_binary() -> str | None:
    """redis-server on PATH, else Debian's /usr/bin/redis-server, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    return _DEBIAN_BINARY if os.access(_DEBIAN_BINARY, os.X_OK) else None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _Reader:
    """RESP2 replies read off a blocking socket, parsed by the lab's one RESP codec
    (streams/resp.py); an error reply raises RedisError."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()
        self.ready: list[object] = []

    def read(self) -> RespValue:
        while not self.ready:
            data = self.sock.recv(1 << 16)
            if not data:
                raise RedisError("the connection closed in the middle of a reply")
            try:
                self.parser.feed(data)
            except ProtocolError as exc:
                raise RedisError(exc.message) from None
            self.ready += self.parser.replies()
        reply = self.ready.pop(0)
        if isinstance(reply, ReplyError):
            raise RedisError(reply.message)
        return reply  # type: ignore[return-value]


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_info(text: str) -> dict[str, int | float | str]:
    """INFO's `key:value` lines as a dict (numbers parsed); `# Section` lines skipped."""
    found: dict[str, int | float | str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            found[key] = _number(value)
    return found


class RedisServer:
    """redis-server as a child process listening on `host`:`port` (0: a free port) and on
    each address of `bind`; `start()` returns its URL `redis://HOST:PORT`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bind: Sequence[str] = (),
        command_prefix: Sequence[str] = (),
        maxmemory_mb: int = 256,
        save: bool = False,
        extra: Sequence[str] = (),
        workdir: Path | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within 0-65535, got {port}")
        if maxmemory_mb < 1:
            raise ValueError(f"maxmemory_mb must be >= 1, got {maxmemory_mb}")
        self.host = host
        self.port = port
        self.bind = [host, *(b for b in bind if b != host)]
        self.command_prefix = list(command_prefix)
        self.maxmemory_mb = maxmemory_mb
        self.save = save
        self.extra = list(extra)
        self.workdir = workdir
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._port = 0  # the port of the running server (self.port may be 0)
        self._final_log = ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def listen_port(self) -> int:
        """The port the running (or last) server listened on; 0 before start()."""
        return self._port

    @property
    def url(self) -> str:
        """`redis://HOST:PORT` of the running server (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self._port}"

    def url_for(self, host: str) -> str:
        """The URL a client reaching it at `host` (one of `bind`, e.g. a veth end) uses."""
        return f"redis://{f'[{host}]' if ':' in host else host}:{self._port}"

    def command(self, port: int, directory: Path) -> list[str]:
        """The full command line (after `command_prefix`) for `port`, state in `directory`."""
        binary = redis_binary()
        if binary is None:
            raise EnvironmentUnavailable(NOT_INSTALLED)
        argv = [binary, "--port", str(port), "--bind", *self.bind]
        if not self.save:
            argv += ["--save", "", "--appendonly", "no"]
        argv += ["--dir", str(directory), "--logfile", str(directory / "redis.log")]
        argv += ["--daemonize", "no", "--maxmemory", f"{self.maxmemory_mb}mb"]
        if any(b not in _LOOPBACK and not b.startswith("127.") for b in self.bind):
            argv += ["--protected-mode", "no"]
        return [*argv, *self.extra]

    def start(self) -> str:
        """Start redis-server and return its URL once it answers PING."""
        if self.proc is not None:
            raise RuntimeError(f"redis-server already runs (pid {self.pid})")
        if redis_binary() is None:
            raise EnvironmentUnavailable(NOT_INSTALLED)
        self.dir = Path(tempfile.mkdtemp(prefix="pushlab-redis-", dir=self.workdir))
        self._final_log = ""
        attempts = 1 if self.port else _PORT_ATTEMPTS
        error = ""
        for _ in range(attempts):
            port = self.port or _free_port(self.host)
            error = self._launch(port)
            if not error:
                self._port = port
                return self.url
            if "Address already in use" not in error:
                break
        self.stop()
        raise ChildStartError(f"redis-server did not start: {error}")

    def _launch(self, port: int) -> str:
        """Start it on `port` and wait for +PONG; '' on success, else what went wrong."""
        assert self.dir is not None
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [*self.command_prefix, *self.command(port, self.dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                tail = (self.log() + self._read("stdout.log")).strip()[-500:]
                return " ".join(tail.split()) or f"redis-server exited with {code}"
            # the PONG must come from our child: on a port someone else holds, another
            # Redis could answer while ours is still failing to bind
            if _pong_from(self.host, port) == self.proc.pid:
                return ""
            time.sleep(0.02)
        proc, self.proc = self.proc, None
        stop_process(proc, _STOP_GRACE_S)
        return f"redis-server did not answer PING on {self.host}:{port} within {_START_TIMEOUT_S} s"

    def call(self, *args: str | bytes | int) -> RespValue:
        """One command on a fresh connection; its reply (bulk strings as bytes)."""
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        with socket.create_connection((self.host, self._port), timeout=_IO_TIMEOUT_S) as sock:
            sock.sendall(encode_command(*args))
            return _Reader(sock).read()

    def info(self) -> dict[str, int | float | str]:
        """INFO (default sections: server, clients, memory, stats, cpu, keyspace, ...) parsed:
        e.g. used_cpu_sys, used_cpu_user, connected_clients, instantaneous_ops_per_sec,
        used_memory, total_commands_processed."""
        reply = self.call("INFO")
        if not isinstance(reply, bytes):
            raise RedisError(f"INFO answered {reply!r}")
        return parse_info(reply.decode(errors="replace"))

    def cpu_s(self) -> float:
        """CPU seconds Redis has used so far (all its threads, scheduler clock); INFO's
        used_cpu_sys + used_cpu_user if the kernel keeps no schedstat."""
        ns = procstat.cpu_ns(self.pid) if self.proc is not None else None
        if ns is not None:
            return ns / 1e9
        info = self.info()
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def stop(self) -> None:
        """SIGTERM to our redis-server (by its pid), SIGKILL after a grace; remove its dir."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, _STOP_GRACE_S)
        if self.dir is not None:
            self._final_log = self._read("redis.log")
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _read(self, name: str) -> str:
        if self.dir is None:
            return ""
        try:
            return (self.dir / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log(self) -> str:
        """Redis's log so far (kept after stop())."""
        return self._read("redis.log") if self.dir is not None else self._final_log

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer({self.url if self.proc else 'stopped'}, pid={self.pid})"


def _pong_from(host: str, port: int) -> int | None:
    """The pid of the Redis at `host`:`port` if it answers a raw RESP PING with +PONG
    (`INFO server`'s process_id, asked on the same connection), else None."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n" + encode_command("INFO", "server"))
            reader = _Reader(sock)
            if reader.read() != "PONG":
                return None
            info = reader.read()
    except (OSError, RedisError):  # not up yet, or still loading (-LOADING)
        return None
    pid = parse_info(info.decode()).get("process_id") if isinstance(info, bytes) else None
    return pid if isinstance(pid, int) else None
