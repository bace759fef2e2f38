"""The servers a benchmark compares: pushlab's, the bare aiohttp reference, the raw one, and
the peer stack (FastAPI + sse-starlette on uvicorn, `benchmarks/peer.py`).

Each server is a child process on 127.0.0.1, started and stopped by its own pid
(`harness.children`); what the machine does while they run is read by `harness.sampler`
and `harness.procstat`.

The sides on the shared Redis log (`pushlab+redis`: one process, `pushlab-w2+redis`: two
on one port, `--workers 2`) get one real redis-server (`netem.redis`) per `running()` block,
started before and stopped after them; their `Server` names every process whose CPU counts
(the `--workers` parent, which only supervises, and each worker from its ready line's
`pids=`) and Redis's pid, so a trial can charge them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

from clients.base import Target
from harness.children import READY_PREFIX, ROOT, ChildProcess, ServerProcess
from netem.redis import RedisServer
from transports.web.config import ServerConfig

BARE_PY = ROOT / "benchmarks" / "bare.py"
PEER_PY = ROOT / "benchmarks" / "peer.py"
# pushlab's server.py on the shared Redis log: side -> server processes (--workers)
REDIS_SIDES = {"pushlab+redis": 1, "pushlab-w2+redis": 2}
# pushlab's server.py, bare aiohttp, raw asyncio.Protocol, FastAPI + sse-starlette (SSE only)
SIDES = ("pushlab", "bare", "raw", "peer", *REDIS_SIDES)
# 5,000 streams x 51 entries a trial, kept 60 s after their end (--retention-s): ~40 MB each;
# Redis's default bound here (256 MB) would turn a few back-to-back trials into write errors
REDIS_MAXMEMORY_MB = 2048


def server_process(side: str, gc_policy: str = "auto", log: str = "memory") -> ChildProcess:
    """A child process for `side`, on uvloop with garbage-collector policy `gc_policy`
    (`log`: the Redis URL of a side in REDIS_SIDES)."""
    if side == "pushlab":
        return ServerProcess(config=ServerConfig(uvloop=True, gc=gc_policy))
    if side in REDIS_SIDES:
        config = ServerConfig(uvloop=True, gc=gc_policy, log=log, workers=REDIS_SIDES[side])
        return ServerProcess(config=config)
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
    # every process whose CPU counts, the started one first (empty: `pid` alone)
    pids: tuple[int, ...] = ()
    redis_pid: int = -1  # the Redis its log lives in (-1: none)


@contextlib.contextmanager
def running(sides: Sequence[str], gc_policy: str = "auto") -> Iterator[dict[str, Server]]:
    """One server per side (and one Redis if a side needs it), all stopped by pid on exit,
    the servers before their Redis."""
    with contextlib.ExitStack() as stack:
        redis = None
        if any(side in REDIS_SIDES for side in sides):
            redis = stack.enter_context(RedisServer(maxmemory_mb=REDIS_MAXMEMORY_MB))
        servers = {}
        for side in sides:
            proc = server_process(side, gc_policy, redis.url if redis is not None else "memory")
            stack.callback(proc.stop)
            target = proc.start()
            workers = [int(p) for p in proc.ready_fields.get("pids", "").split(",") if p]
            pids = (proc.pid, *workers) if workers or side in REDIS_SIDES else ()
            redis_pid = redis.pid if redis is not None and side in REDIS_SIDES else -1
            servers[side] = Server(side, gc_policy, proc.pid, target, pids, redis_pid)
        yield servers
