"""The servers a benchmark compares: pushlab's, the bare aiohttp reference, the raw one, and
the peer stack (FastAPI + sse-starlette on uvicorn, `benchmarks/peer.py`).

Each server is a child process on 127.0.0.1, started and stopped by its own pid
(`harness.children`); what the machine does while they run is read by `harness.sampler`
and `harness.procstat`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

from clients.base import Target
from harness.children import READY_PREFIX, ROOT, ChildProcess, ServerProcess
from transports.web.config import ServerConfig

BARE_PY = ROOT / "benchmarks" / "bare.py"
PEER_PY = ROOT / "benchmarks" / "peer.py"
# pushlab's server.py, bare aiohttp, raw asyncio.Protocol, FastAPI + sse-starlette (SSE only)
SIDES = ("pushlab", "bare", "raw", "peer")


def server_process(side: str, gc_policy: str = "auto") -> ChildProcess:
    """A child process for `side`, on uvloop with garbage-collector policy `gc_policy`."""
    if side == "pushlab":
        return ServerProcess(config=ServerConfig(uvloop=True, gc=gc_policy))
    flags = ["--uvloop", "--gc", gc_policy]  # bare.py's own flags, named like the server's
    if side == "peer":
        return ChildProcess([str(PEER_PY), "--host", "127.0.0.1", "--port", "0", *flags],
                            READY_PREFIX)  # fmt: skip
    kind = {"bare": "aiohttp", "raw": "raw"}[side]
    argv = [str(BARE_PY), "--kind", kind, "--host", "127.0.0.1", "--port", "0", *flags]
    return ChildProcess(argv, READY_PREFIX)


@dataclasses.dataclass(frozen=True)
class Server:
    side: str
    gc_policy: str
    pid: int
    target: Target


@contextlib.contextmanager
def running(sides: Sequence[str], gc_policy: str = "auto") -> Iterator[dict[str, Server]]:
    """One server per side, all stopped (by pid) on exit."""
    procs: list[ChildProcess] = []
    try:
        servers = {}
        for side in sides:
            proc = server_process(side, gc_policy)
            procs.append(proc)
            target = proc.start()
            servers[side] = Server(side, gc_policy, proc.pid, target)
        yield servers
    finally:
        for proc in reversed(procs):
            proc.stop()
