"""CPU time and memory of a process by pid, from /proc (Linux): works for any server we
start, pushlab's or a bare reference, without its cooperation."""

from __future__ import annotations

import dataclasses
import os

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float  # user + system CPU time so far
    rss_bytes: int  # resident set size now


def sample(pid: int) -> ProcSample:
    """The process's CPU time and RSS now; OSError if it does not exist."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    with open(f"/proc/{pid}/statm") as f:
        resident_pages = int(f.read().split()[1])
    return ProcSample((utime + stime) / _TICKS_PER_S, resident_pages * _PAGE_BYTES)


def delta(before: ProcSample, after: ProcSample) -> ProcSample:
    return ProcSample(after.cpu_s - before.cpu_s, after.rss_bytes - before.rss_bytes)
