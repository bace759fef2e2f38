"""Benchmark `quic_delay`: does a one-way delay added on the UDP path show in HTTP/3's
measured token latency, whole and no more?

Target (the QUIC issue): a 40 ms one-way delay added on the path is recovered in the measured
HTTP/3 latency within 2 ms: the median token latency with the delay minus the median
without, against 40 ms. This checks the lab's instruments together: the UDP relay
(netem/udprelay.py, `delay=40ms`: each datagram held 40 ms each way, never reordered), the
HTTP/3 client (clients/h3.py over clients/quic.py: a token is stamped with the arrival of
the UDP datagram that carried it) and the server's emit stamp, one clock.

Path: pushlab's server on 127.0.0.1 behind Caddy (h1 h2 h3, TLS with the lab CA, netem/
fronts.py `serve("caddy", http3=True)`); the relay (`python -m netem.udprelay`, a child on
127.0.0.1) in front of Caddy's UDP port. Loopback, not a namespace: the relay binds
127.0.0.1 only, and a namespace adds nothing a delay needs. Each repetition measures both
arms back to back, alternating which goes first: N SSE streams over one HTTP/3 connection
each, straight to Caddy ("direct") and through the relay ("delayed"), `tokens` at `rate`.
A token's latency is one-way (emit on the server, receipt on the client), so the relay's
delay counts once: on the way down. What else the relay adds is the release timer's lateness
(epoll rounds a timeout up to the millisecond: its module docstring) and its own Python
hop, which is why the target allows 2 ms.
Nothing here imports `experiments` (tests/test_rooms.py).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import numpy as np

from benchmarks.trials import delivery, latency
from clients.fleet import FleetSpec, run_fleet
from clients.net import Target
from clients.recorder import StreamRecord
from clients.stack import Stack
from harness.procstat import foreign_cpu, foreign_delta_s
from streams.params import GenParams

Trial = dict[str, object]
DELAY_MS = 40.0  # one way, added by the relay in each direction
ARMS = ("direct", "delayed")
TTFT_MS = 0.0  # the first token is due at once: every token's latency is path + stack


def _records(target: Target, stack: Stack, streams: int, params: GenParams) -> list[StreamRecord]:
    import uvloop

    spec = FleetSpec("sse", streams, stagger_ms=10.0, stack=stack)
    return list(uvloop.run(run_fleet(spec, target, params)))


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _arm(target: Target, stack: Stack, streams: int, params: GenParams) -> dict[str, object]:
    records = _records(target, stack, streams, params)
    done, lat = delivery(records, params), latency(records)
    all_ms = np.concatenate([
        (np.frombuffer(r.t_recv_ns, np.int64) - np.frombuffer(r.t_emit_ns, np.int64)) / 1e6
        for r in records if len(r.seq)
    ] or [np.zeros(0)])  # fmt: skip
    return {
        "p50_ms": float(np.median(all_ms)) if len(all_ms) else float("nan"),
        "p99_ms": _float(lat["latency_p99_ms"]),
        "count": float(len(all_ms)),
        "lost": _float(done["tokens_lost"]),
        "errors": _float(done["stream_errors"]),
        "first_error": str(done["first_error"]),
        "connections": float(sum(len(r.conns) for r in records)),
    }


def trial(direct: Target, delayed: Target, stack: Stack, streams: int, tokens: int,
          rate: float, rep: int) -> Trial:  # fmt: skip
    """Both arms back to back (order alternating with `rep`): medians, their difference."""
    params = GenParams(tokens=tokens, rate=rate, ttft_ms=TTFT_MS)
    foreign0, t0 = foreign_cpu(), time.monotonic()
    arms = {}
    for arm in ARMS if rep % 2 == 0 else tuple(reversed(ARMS)):
        arms[arm] = _arm(direct if arm == "direct" else delayed, stack, streams, params)
    wall_s = time.monotonic() - t0
    added = _float(arms["delayed"]["p50_ms"]) - _float(arms["direct"]["p50_ms"])
    errors = [str(a["first_error"]) for a in arms.values() if a["first_error"]]
    out: Trial = {
        "delay_ms": DELAY_MS,
        "added_ms": added,
        "delay_error_ms": abs(added - DELAY_MS),
        "streams": streams,
        "tokens_per_stream": tokens,
        "tokens_lost": int(sum(_float(a["lost"]) for a in arms.values())),
        "stream_errors": int(sum(_float(a["errors"]) for a in arms.values())),
        "first_error": errors[0] if errors else "",
        "wall_s": wall_s,
        "other_cores": foreign_delta_s(foreign0, foreign_cpu()) / wall_s,
    }
    for arm, values in arms.items():
        for key in ("p50_ms", "p99_ms", "count", "connections"):
            out[f"{arm}_{key}"] = values[key]
    return out


def measure(streams: int, tokens: int, rate: float, reps: int,
            record: Callable[[Trial, Callable[[], Trial]], Trial]) -> list[Trial]:  # fmt: skip
    """Caddy with HTTP/3 and the relay for the whole block; a warm-up of each arm (not
    recorded), then `reps` trials; `record(labels, measure)` as `benchmarks.suite.Ctx`."""
    from netem.fronts import serve
    from netem.udprelay import UdpRelayProcess

    out = []
    with serve("caddy", server_args=["--uvloop"], http3=True) as path:
        direct = path.target
        relay = UdpRelayProcess((direct.host, direct.port), f"delay={DELAY_MS:g}ms")
        delayed = dataclasses.replace(direct, port=relay.start())
        try:
            stack = path.stack(http="3")
            warm = GenParams(tokens=5, rate=50.0, ttft_ms=0.0)
            for target in (direct, delayed):
                _records(target, stack, 2, warm)
            for rep in range(reps):
                labels: Trial = {"benchmark": "quic_delay", "side": "h3", "transport": "sse",
                                 "gc": "auto", "rep": rep, "position": rep % 2}  # fmt: skip
                run = functools.partial(trial, direct, delayed, stack, streams, tokens, rate, rep)
                out.append(record(labels, run))
        finally:
            totals = relay.stop()
    if out:
        out[-1]["relay_datagrams"] = sum(v for k, v in totals.items() if k.startswith("datagrams"))
    return out
