"""The one reader of /proc (Linux): a process's CPU time, memory, state and parent by pid,
the machine's busy time, and other processes' load. It works for any process we start
(pushlab's server, a bare reference, nginx) without its cooperation."""

from __future__ import annotations

import dataclasses
import os
import time

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_KTHREADD = 2  # the parent of every kernel thread


@dataclasses.dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float  # user + system CPU time so far
    rss_bytes: int  # resident set size now


@dataclasses.dataclass(frozen=True, slots=True)
class PidStat:
    """The fields of /proc/<pid>/stat that we use."""

    state: str  # "R", "S", ..., "Z" for a zombie (exited, not yet reaped)
    ppid: int
    cpu_s: float  # user + system CPU time so far


def stat(pid: int) -> PidStat | None:
    """`pid`'s /proc/<pid>/stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:  # ended (or never was)
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return PidStat(fields[0], int(fields[1]), (utime + stime) / _TICKS_PER_S)


def sample(pid: int) -> ProcSample:
    """The process's CPU time and RSS now; OSError if it does not exist."""
    info = stat(pid)
    if info is None:
        raise ProcessLookupError(f"no process {pid}")
    with open(f"/proc/{pid}/statm") as f:
        resident_pages = int(f.read().split()[1])
    return ProcSample(info.cpu_s, resident_pages * _PAGE_BYTES)


def delta(before: ProcSample, after: ProcSample) -> ProcSample:
    return ProcSample(after.cpu_s - before.cpu_s, after.rss_bytes - before.rss_bytes)


def cpu_ns(pid: int) -> int | None:
    """CPU time of all `pid`'s threads in nanoseconds (the scheduler's own clock), or None
    if the process is gone or the kernel keeps no schedstat.

    /proc/<pid>/stat counts CPU in clock ticks of 10 ms: a measured window that costs the
    server 40 ms reads as 4 ticks, +-25 %. /proc/<pid>/task/<tid>/schedstat's first field is
    the nanoseconds each thread spent on a CPU (CONFIG_SCHED_INFO, on in Debian's kernels
    and here), so short windows resolve too. Threads that exited meanwhile are missed: the
    processes we measure (aiohttp, nginx's workers, Caddy's Go threads) keep theirs."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended between the listing and the read
    return total


def alive(pid: int) -> bool:
    """Whether `pid` names a process that has not exited (a zombie has)."""
    info = stat(pid)
    return info is not None and info.state != "Z"


def processes() -> dict[int, PidStat]:
    """Every process now, by pid (one that ends while being read is left out)."""
    found = {}
    for entry in os.scandir("/proc"):
        info = stat(int(entry.name)) if entry.name.isdigit() else None
        if info is not None:
            found[int(entry.name)] = info
    return found


def children(pid: int) -> list[int]:
    """Live children of `pid` (zombies count as gone)."""
    return [p for p, info in processes().items() if info.ppid == pid and info.state != "Z"]


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
    procs = processes()
    ours = {os.getpid()}
    for pid in procs:
        chain, p = [], pid
        while p > _KTHREADD and p not in ours:
            chain.append(p)
            p = procs[p].ppid if p in procs else 0
        if p in ours:
            ours.update(chain)
    return {
        pid: info.cpu_s for pid, info in procs.items() if pid not in ours and info.ppid != _KTHREADD
    }


def foreign_delta_s(before: dict[int, float], after: dict[int, float]) -> float:
    """Others' CPU between two `foreign_cpu()` snapshots (a process that started meanwhile
    counts whole; one that ended meanwhile is missed)."""
    return sum(max(0.0, c - before.get(pid, 0.0)) for pid, c in after.items())


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
