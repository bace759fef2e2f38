"""Run the benchmarks, store the result, render `benchmarks/README.md`, print the table.

    python benchmarks/run.py [--quick] [--only NAME,...] [--out benchmarks/results/DATE.json]
                             [--readme benchmarks/README.md | --no-readme] [--wait-quiet-s S]
                             [--client light|python]
    python benchmarks/run.py --render benchmarks/results/DATE.json    (summarise and present
                                                                       a stored run again)
        [--also benchmarks/results/LATER.json ...]     (a separate later run's own section)

Measuring (`benchmarks.suite`), summarising (`benchmarks.summary`), storing (here) and
presenting (`benchmarks.report`) are separate steps; `main(argv)` only wires them together.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python benchmarks/run.py`
    sys.path.insert(0, str(ROOT))

from benchmarks import report, suite, summary  # noqa: E402
from harness.procstat import wait_quiet  # noqa: E402
from records.meta import machine_info, package_version  # noqa: E402

SCHEMA = "pushlab-benchmarks/1"
PACKAGES = ("aiohttp", "uvloop", "websockets", "h11", "numpy", "pandas")
BENCH_DIR = ROOT / "benchmarks"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small N, few tokens, one repetition")
    p.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(suite.BENCHMARKS)}"
    )
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/DATE.json)")
    p.add_argument("--readme", type=Path, default=BENCH_DIR / "README.md", help="README to render")
    p.add_argument("--no-readme", action="store_true", help="do not render the README")
    p.add_argument(
        "--render",
        type=Path,
        help="measure nothing: redo the summary of this stored result and present it",
    )
    p.add_argument(
        "--wait-quiet-s",
        type=float,
        default=0.0,
        help="before the run and each trial, wait up to S seconds for other "
        "processes to use < 0.25 cores",
    )
    p.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="a stored result of a separate, later run to add to the README as its own "
        "section (with the notes in the .md file of the same name beside it, if any)",
    )
    p.add_argument(
        "--client",
        choices=("light", "python"),
        default="light",
        help="load generator of streams1000/streams5000 (default %(default)s)",
    )
    return p  # fmt: skip


def git_commit() -> str:
    """HEAD of the checkout (read-only), or "unknown"."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def code_sha256() -> str:
    """A fingerprint of the server code measured (the working tree, committed or not)."""
    digest = hashlib.sha256()
    files = [ROOT / "server.py", *sorted((ROOT / "streams").rglob("*.py"))]
    for path in files + sorted((ROOT / "transports").rglob("*.py")):
        try:
            data = path.read_bytes()
        except OSError:  # someone removed or renamed it meanwhile
            data = b"(unreadable)"
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + data)
    return digest.hexdigest()


def collect_meta(argv: list[str], profile: suite.Profile, started: datetime) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": shlex.join(["python", "benchmarks/run.py", *argv]),
        "started_at": started.isoformat(timespec="seconds"),
        "profile": profile.name,
        "profile_params": dataclasses.asdict(profile),
        "machine": machine_info(),
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "git_commit": git_commit(),
        "code_sha256": code_sha256(),
    }


def build_document(
    trials: list[dict[str, Any]], meta: dict[str, Any], duration_s: float
) -> dict[str, Any]:
    """The stored result: metadata, every trial, and the summaries derived from them."""
    others = [t["other_cores"] for t in trials if summary.finite(t.get("other_cores"))]
    load = {"median": statistics.median(others), "max": max(others)} if others else {}
    return derive({"meta": {**meta, "duration_s": duration_s, "other_load_cores": load},
                   "trials": trials})  # fmt: skip


def derive(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with its `targets` and `details` computed from its trials."""
    trials, profile = doc["trials"], doc["meta"]["profile_params"]
    return {
        "meta": doc["meta"],
        "targets": summary.targets(trials, profile),
        "details": summary.details(trials),
        "trials": trials,
    }


def strict_json(value: Any) -> Any:
    """`value` with NaN and infinities as null, so the file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def _shown(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path)


def present(doc: dict[str, Any], out: Path, readme: Path | None, also: Sequence[Path] = ()) -> None:
    """Render the README (unless None) from a stored result, with a section for each later
    run in `also` (its summary redone, the file left as stored), and print the table."""
    if readme is not None:
        analysis_path = BENCH_DIR / "analysis.md"
        analysis = analysis_path.read_text() if analysis_path.exists() else ""
        text = report.readme(doc, analysis, _shown(out))
        for path in also:
            notes = path.with_suffix(".md")
            later = derive(json.loads(path.read_text()))
            text += "\n" + report.later_run(
                later, _shown(path), notes.read_text() if notes.exists() else ""
            )
        readme.write_text(text)
    print(report.text_table(doc))
    print(f"result: {out}" + ("" if readme is None else f"; README: {readme}"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    readme = None if args.no_readme else args.readme
    if args.render:  # the measurements stay as stored; what derives from them is redone
        doc = derive(json.loads(args.render.read_text()))
        args.render.write_text(json.dumps(strict_json(doc), indent=1) + "\n")
        present(doc, args.render, readme, args.also)
        return 0
    profile = suite.QUICK if args.quick else suite.FULL
    profile = dataclasses.replace(profile, scale_client=args.client)
    names = [n for n in args.only.split(",") if n] or list(suite.BENCHMARKS)
    started = datetime.now(UTC)
    meta = collect_meta(argv, profile, started)
    if args.wait_quiet_s > 0:
        meta["background_cores_at_start"] = wait_quiet(args.wait_quiet_s * 4)
    t0 = time.monotonic()
    trials = suite.measure(names, profile, lambda line: print(line, flush=True), args.wait_quiet_s)
    doc = build_document(trials, meta, time.monotonic() - t0)
    out = args.out or BENCH_DIR / "results" / f"{started:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(strict_json(doc), indent=1) + "\n")
    present(doc, out, readme, args.also)
    return 0


if __name__ == "__main__":
    sys.exit(main())
