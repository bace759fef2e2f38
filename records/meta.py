"""Run metadata: what ran, on which code and machine, when (DESIGN.md, "Records").

`collect_meta` returns a JSON-serialisable dict the store writes as `meta.json`; it reads the
environment (git, /proc, installed packages) and never measures anything.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import random
import re
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from records.schema import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aiohttp", "websockets", "h11", "pandas", "pyarrow", "matplotlib", "uvloop")
_GIT_TIMEOUT_S = 10.0


def new_run_id(experiment: str, now: datetime, rng: random.Random | None = None) -> str:
    """`<UTC yyyymmdd-HHMMSS>-<experiment>-<4 hex>`, e.g. `20261121-143501-latency-3fa2`.

    A naive `now` is taken as local time (Python's convention). The experiment name is reduced
    to characters safe in a directory name; `rng` pins the random suffix in tests.
    """
    stamp = to_utc(now).strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_") or "run"
    suffix = (rng or random.SystemRandom()).getrandbits(16)
    return f"{stamp}-{name}-{suffix:04x}"


def to_utc(moment: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is taken as local time."""
    return moment.astimezone(UTC)


def collect_meta(
    experiment: str, spec: dict[str, Any], run_id: str, started_at: datetime
) -> dict[str, Any]:
    """Everything a reader needs to reproduce or distrust a run, as plain JSON types."""
    commit, dirty = git_state(REPO_ROOT)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "experiment": experiment,
        "started_at": to_utc(started_at).isoformat(),
        "pushlab_version": package_version("pushlab") or "unknown",
        "git_commit": commit,
        "git_dirty": dirty,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "packages": {name: package_version(name) for name in PACKAGES},
        "machine": machine_info(),
        "spec": json_safe(spec),
    }


def package_version(name: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(repo: Path) -> tuple[str, bool]:
    """(HEAD commit, working tree has changes); ("unknown", False) outside a git checkout."""
    head = _git(repo, "rev-parse", "HEAD")
    if head is None or not re.fullmatch(r"[0-9a-f]{40,64}", head):
        return "unknown", False
    # --no-optional-locks: a reader must not take index.lock from someone committing.
    status = _git(repo, "--no-optional-locks", "status", "--porcelain")
    return head, bool(status)


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """Hostname, cores, CPU model, memory, kernel and platform of this host."""
    return {
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _proc_field(Path("/proc/cpuinfo"), "model name"),
        "memory_total_bytes": _mem_total_bytes(),
        "kernel": platform.release(),
        "platform": platform.platform(),
    }


def _proc_field(path: Path, field: str) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == field:
            return value.strip()
    return None


def _mem_total_bytes() -> int | None:
    value = _proc_field(Path("/proc/meminfo"), "MemTotal")  # e.g. "8049244 kB"
    if value is None:
        return None
    number, _, unit = value.partition(" ")
    scale = {"kB": 1024, "": 1}.get(unit.strip())
    return int(number) * scale if number.isdigit() and scale else None


def json_safe(value: Any) -> Any:
    """`value` as plain JSON types: paths and other objects become strings, tuples lists."""
    return json.loads(json.dumps(value, default=str))
