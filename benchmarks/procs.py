"""The servers a benchmark compares, and what the machine does while they run.

Each server is a child process on 127.0.0.1, started and stopped by its own pid
(`harness.children`). `Sampler` records, from a thread, the server's CPU time and RSS
(`harness.procstat`) and the whole machine's busy time (/proc/stat) every few tens of
milliseconds, so a trial can pick its steady window afterwards and see how much CPU other
processes took meanwhile.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Sequence

from clients.base import Target
from harness import procstat
from harness.children import READY_PREFIX, ROOT, ChildProcess, ServerProcess

BARE_PY = ROOT / "benchmarks" / "bare.py"
SIDES = ("pushlab", "bare", "raw")  # pushlab's server.py, bare aiohttp, raw asyncio.Protocol
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def server_process(side: str, gc_policy: str = "auto") -> ChildProcess:
    """A child process for `side`, on uvloop with garbage-collector policy `gc_policy`."""
    flags = ["--uvloop", "--gc", gc_policy]
    if side == "pushlab":
        return ServerProcess(flags)
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


def system_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS_PER_S


def foreign_cpu() -> dict[int, float]:
    """CPU seconds so far of each user-space process that is neither this process nor one of
    its descendants (the servers, the fleet's workers): someone else's load on the machine.
    Kernel threads are left out, since they also do our sockets' work."""
    ppid: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    ours = {os.getpid()}
    for pid in ppid:
        chain, p = [], pid
        while p > 2 and p not in ours:
            chain.append(p)
            p = ppid.get(p, 0)
        if p in ours:
            ours.update(chain)
    return {pid: c for pid, c in cpu.items() if pid not in ours and ppid[pid] != 2}


def foreign_delta_s(before: dict[int, float], after: dict[int, float]) -> float:
    """Others' CPU between two `foreign_cpu()` snapshots (a process that started meanwhile
    counts whole; one that ended meanwhile is missed)."""
    return sum(max(0.0, c - before.get(pid, 0.0)) for pid, c in after.items())


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    t_ns: int  # time.time_ns(), comparable with the tokens' t_emit_ns
    cpu_s: float  # the server's user + system CPU so far
    rss_bytes: int
    busy_s: float  # the machine's busy CPU so far


def take_sample(pid: int) -> Sample:
    proc = procstat.sample(pid)
    return Sample(time.time_ns(), proc.cpu_s, proc.rss_bytes, system_busy_s())


class Sampler:
    """Samples `pid` every `interval_s` from a thread, between `with` entry and exit."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(take_sample(self.pid))

    def __enter__(self) -> Sampler:
        self.samples.append(take_sample(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(take_sample(self.pid))

    def window(self, start_ns: int, end_ns: int) -> tuple[Sample, Sample] | None:
        """The first sample at or after `start_ns` and the last at or before `end_ns`."""
        times = [s.t_ns for s in self.samples]
        i, j = bisect.bisect_left(times, start_ns), bisect.bisect_right(times, end_ns) - 1
        if i >= j:
            return None
        return self.samples[i], self.samples[j]


def background_cores(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy over the next `seconds`."""
    before = foreign_cpu()
    time.sleep(seconds)
    return foreign_delta_s(before, foreign_cpu()) / seconds


def wait_quiet(max_s: float, limit_cores: float = 0.25) -> float:
    """Wait until other processes use under `limit_cores` (or `max_s` passed); their load."""
    deadline = time.monotonic() + max_s
    load = background_cores()
    while load >= limit_cores and time.monotonic() < deadline:
        load = background_cores()
    return load
