"""Benchmark `h2_throughput`: pushlab's HTTP/2 client against its HTTP/1.1 client, one
connection each, through the same nginx with TLS.

Target: the HTTP/2 client's single-connection throughput at least 0.5x the HTTP/1.1 client's.
The reference is measured in the same run, through the same nginx and server, alternating
which goes first. One SSE stream asks the server for its fastest schedule (rate 100,000
tokens/s, the protocol's limit, docs/PROTOCOL.md), so the token stream arrives faster than a
Python client can read it and the client is the bottleneck: the figure is how fast each HTTP
layer lets pushlab's SSE client take tokens off one connection (TLS in both).

Per trial: tokens per second between the first and the last token received (the handshake
and the request stay out), the client's CPU per token (this process: the servers are
children), and, for context, the CPU per token of the server and of nginx (/proc, the
children's own) and the bytes per token received. The server runs on uvloop, so its
~10 us per token (benchmarks/README.md, target 2) leaves the client the slowest stage.
Nothing here imports `experiments` (tests/test_rooms.py).
"""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable

from clients.fleet import FleetSpec, run_fleet
from clients.recorder import StreamRecord
from harness.procstat import foreign_cpu, foreign_delta_s
from netem.fronts import ServedPath, serve
from streams.params import GenParams

Trial = dict[str, object]
RATE = 100_000.0  # pushlab's highest rate: every token due at once, as fast as it generates
SIDES = ("h1", "h2")  # the reference first, as benchmarks.suite.PAIR lists pushlab first
HTTP = {"h1": "1.1", "h2": "2"}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drink(path: ServedPath, http: str, tokens: int) -> tuple[StreamRecord, float]:
    """One SSE stream of `tokens` at RATE over HTTP/`http` (one connection); the record and
    the CPU this process spent reading it."""
    import uvloop

    spec = FleetSpec("sse", 1, stack=path.stack(http))
    params = GenParams(tokens=tokens, rate=RATE, ttft_ms=0.0)
    before = _cpu_s()
    (record,) = uvloop.run(run_fleet(spec, path.target, params))
    return record, _cpu_s() - before


def trial(path: ServedPath, side: str, tokens: int) -> Trial:
    """One measured stream over `side` ("h1" or "h2")."""
    import numpy as np

    before, foreign0, t0 = path.cpu_s(), foreign_cpu(), time.monotonic()
    record, client_cpu_s = drink(path, HTTP[side], tokens)
    after, foreign_s, wall_s = path.cpu_s(), foreign_cpu(), time.monotonic() - t0
    recv = np.frombuffer(record.t_recv_perf_ns, np.int64)
    got = len(set(record.seq))
    span_s = (int(recv.max()) - int(recv.min())) / 1e9 if len(recv) > 1 else 0.0
    down = sum(c.bytes_down for c in record.conns)
    return {
        "http_version": HTTP[side],
        "connections": len(record.conns),
        "tokens_expected": tokens,
        "tokens_lost": tokens - got,
        "stream_errors": int(bool(record.error)),
        "first_error": record.error,
        "tokens_per_s": (got - 1) / span_s if span_s > 0 else float("nan"),
        "client_cpu_per_token_us": 1e6 * client_cpu_s / max(got, 1),
        "server_cpu_per_token_us": 1e6 * (after["server"] - before["server"]) / max(got, 1),
        "front_cpu_per_token_us": 1e6 * (after["front"] - before["front"]) / max(got, 1),
        "bytes_down_per_token": down / max(got, 1),
        "client_cores": client_cpu_s / wall_s,  # ~1: the client was the bottleneck
        "wall_s": span_s,
        "other_cores": foreign_delta_s(foreign0, foreign_s) / wall_s,
    }


def measure(
    tokens: int, reps: int, record: Callable[[Trial, Callable[[], Trial]], Trial]
) -> list[Trial]:
    """Every trial: a warm-up stream per side (not recorded), then `reps` repetitions of both
    sides, alternating which goes first; `record(labels, measure)` as `benchmarks.suite.Ctx`."""
    out = []
    with serve("nginx", server_args=["--uvloop"]) as path:
        for side in SIDES:
            drink(path, HTTP[side], min(tokens, 2000))
        for rep in range(reps):
            order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
            for pos, side in enumerate(order):
                labels: Trial = {"benchmark": "h2_throughput", "side": side, "transport": "sse",
                                 "gc": "auto", "rep": rep, "position": pos}  # fmt: skip
                out.append(record(labels, functools.partial(trial, path, side, tokens)))
    return out
