"""Presentation: a console table and `benchmarks/README.md`, both from a stored result.

Reads the JSON document `benchmarks/run.py` writes (trials, target rows, details, meta) and
never measures anything. The hand-written profile notes in `benchmarks/analysis.md` are
included verbatim under the missed targets.
"""

from __future__ import annotations

import math
from typing import Any

from presentation.markdown import markdown_rows
from transports import registry

FORMATS = {
    "tokens/s": "{:,.0f}",
    "us/token": "{:.1f}",
    "us/request": "{:.0f}",
    "bytes": "{:,.0f}",
    "%": "{:.2f}",
    "ms": "{:.2f}",
    "x": "{:.3f}",
}


def _label(key: str) -> str:
    """A transport's label from the registry; other sides ("raw", "bare") as they are."""
    transport = registry.TRANSPORTS.get(key)
    return transport.label if transport is not None else key


def fmt(value: float, unit: str = "") -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    if unit in FORMATS:
        return FORMATS[unit].format(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _spread(s: dict[str, Any], unit: str) -> str:
    if s["n"] > 1:
        return f"{fmt(s['value'], unit)} [{fmt(s['min'], unit)}–{fmt(s['max'], unit)}]"
    return fmt(s["value"], unit)


def _verdict(row: dict[str, Any]) -> str:
    if row["met"] is None:
        return "context"
    return "met" if row["met"] else f"**missed** by {row['miss']}"


PEER_NAMES = {"peer": "FastAPI + sse-starlette", "bare": "bare aiohttp"}


def _reference_note(row: dict[str, Any]) -> str:
    """Which server a pushlab row's reference is, when it is not the bare aiohttp one."""
    ref = row.get("reference_side", "bare")
    if not ref or row["side"] != "pushlab" or (ref == "bare" and "best of" not in row["title"]):
        return ""
    return f" ({PEER_NAMES.get(ref, ref)})"


def target_cells(row: dict[str, Any]) -> list[str]:
    unit = row["unit"]
    alone = not row.get("reference_side", "bare")  # a value against its limit alone
    return [
        row["target"],
        row["title"],
        _label(row["transport"]),
        row["gc"],
        f"{_spread(row['value'], unit)} {unit}",
        "–" if alone else f"{_spread(row['reference'], unit)} {unit}{_reference_note(row)}",
        "–" if alone else _spread(row["ratio"], "x"),
        row["goal"],
        _verdict(row),
        str(row["value"]["n"]),
    ]


HEADERS = [
    "#",
    "target",
    "transport",
    "GC",
    "pushlab",
    "bare ref.",
    "ratio",
    "goal",
    "verdict",
    "n",
]


def text_table(doc: dict[str, Any]) -> str:
    """The target rows as aligned plain text, with warnings below."""
    rows = [[c.replace("**", "") for c in target_cells(r)] for r in doc["targets"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    seen: dict[str, None] = {}
    for r in doc["targets"]:
        for w in r["warnings"]:
            seen[f"warning [{r['benchmark']} {r['transport']} gc={r['gc']}]: {w}"] = None
    return "\n".join(out + list(seen))


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    m, pk = meta["machine"], meta["packages"]
    versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    load = meta.get("other_load_cores", {})
    load_median, load_max = load.get("median", math.nan), load.get("max", math.nan)
    memory_gib = m["memory_total_bytes"] / 2**30
    return [
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['started_at']} (UTC); the run took {meta['duration_s']:.0f} s; "
        f"profile `{meta['profile']}`",
        f"- Machine: {m['cpu_count']} x {m['cpu_model']}, {memory_gib:.1f} GiB, "
        f"Linux {m['kernel']}; Python {meta['python']}; {versions}",
        f"- Code: git commit `{meta['git_commit']}`; server code fingerprint "
        f"`{meta.get('code_sha256', 'n/a')[:16]}` (sha256 of server.py, streams/, transports/)",
        f"- Other processes' CPU during the trials: median {fmt(load_median, 'x')} cores, "
        f"max {fmt(load_max, 'x')}",
    ]


def _details(doc: dict[str, Any]) -> list[str]:
    out = []
    for bench in dict.fromkeys(d["benchmark"] for d in doc["details"]):
        rows = [d for d in doc["details"] if d["benchmark"] == bench]
        metrics = [k for k in rows[0] if k not in ("benchmark", "transport", "gc", "side")]
        body = [
            [_label(d["transport"]), d["gc"], d["side"]]
            + [_spread(d[m], "") + ("" if d[m]["n"] < 2 else f" (n={d[m]['n']})") for m in metrics]
            for d in rows
        ]
        out += [
            f"### `{bench}`",
            "",
            markdown_rows(["transport", "GC", "side", *metrics], body),
            "",
        ]
    return out


def _limits(doc: dict[str, Any], analysis: str) -> list[str]:
    missed = [r for r in doc["targets"] if r["met"] is False or r.get("reps_missed")]
    if not missed:
        return ["Every target was met in this run."]
    out, warned = [], set()
    for r in missed:
        ref, side = r.get("reference_side", "bare"), r["side"]
        facts = f"{side} {_spread(r['value'], r['unit'])} {r['unit']} against {ref} "
        facts += f"{_spread(r['reference'], r['unit'])} {r['unit']}"
        peak = r.get("peak_cores", {})
        if "explain" in r:  # the row names what to read (summary.Goal.explain)
            facts += "".join(
                f"; {e['label']}: {side} {_spread(e['value'], '')}, {ref} "
                f"{_spread(e['reference'], '')}"
                for e in r["explain"]
                if e["value"]["n"] or e["reference"]["n"]
            )
        elif peak and peak["value"]["n"]:
            facts += (
                f"; server process at its busiest second: {side} {_spread(peak['value'], 'x')}"
                f" cores, {ref} {_spread(peak['reference'], 'x')} cores"
            )
        transport = _label(r["transport"])
        how = f"missed by {r['miss']}"
        if r["met"]:  # met by the median, not by every repetition (summary.evaluate)
            how = (
                f"met by the median, missed by {r['reps_missed']} of {r['value']['n']} repetitions"
            )
        out.append(
            f"- Target {r['target']} ({r['title']}, {transport}, GC {r['gc']}): {facts}; {how}."
        )
        group = (r["benchmark"], r["transport"], r["gc"])
        if group not in warned:  # the same trials' warnings once
            warned.add(group)
            out += [f"  - warning: {w}" for w in r["warnings"]]
    return [*out, "", analysis.strip()]


def readme(doc: dict[str, Any], analysis: str = "", result_path: str = "") -> str:
    """The whole `benchmarks/README.md` for one stored result."""
    rows = [target_cells(r) for r in doc["targets"]]
    parts = [
        "# pushlab benchmarks",
        "",
        "Generated by `benchmarks/run.py` from "
        f"`{result_path or 'the stored result'}`: rerun it rather than editing this file "
        "(the profile notes come from `benchmarks/analysis.md`).",
        "",
        *_meta_lines(doc["meta"]),
        "",
        "## Results against the targets of the issue \"Scale and speed\"",
        "",
        "Value = pushlab's `server.py`; reference = the bare aiohttp server of "
        "`benchmarks/bare.py` "
        "(the raw asyncio one for the raw-ceiling row; where the row names it, the peer stack "
        "of `benchmarks/peer.py`: FastAPI + sse-starlette on uvicorn), measured in the same "
        "run, same GC policy, all on uvloop. Median over repetitions [min–max]; the ratio's "
        "range is over repetitions paired by index; `n` = repetitions per side.",
        "",
        markdown_rows(HEADERS, rows),
        "",
        "## What limits the missed targets",
        "",
        *_limits(doc, analysis),
        "",
        "## Details per benchmark (median [min–max], n repetitions)",
        "",
        *_details(doc),
        METHOD,
    ]  # fmt: skip
    return "\n".join(parts).rstrip() + "\n"


def later_run(doc: dict[str, Any], result_path: str, notes: str = "") -> str:
    """A section for a separate, later run of some benchmarks (`run.py --also`): its own
    command, date and machine, its target rows (value and reference named per row: its
    `side` and its reference side), its details, and the notes stored beside it."""
    names = ", ".join(f"`{b}`" for b in dict.fromkeys(t["benchmark"] for t in doc["trials"]))
    headers = [*HEADERS[:4], "value", "reference", *HEADERS[6:]]
    rows = [target_cells(r) for r in doc["targets"]]
    sides = "; ".join(dict.fromkeys(f"{r['title']}: value = `{r['side']}`" for r in doc["targets"]))
    parts = [
        f"## Later run: {names}",
        "",
        f"From `{result_path}`, measured separately from the run above.",
        "",
        *_meta_lines(doc["meta"]),
        "",
        f"{sides}. Median over repetitions [min–max]; `n` = repetitions per side.",
        "",
        markdown_rows(headers, rows),
        "",
        *_limits(doc, ""),
        "",
        notes.strip(),
        "",
        *_details(doc),
    ]
    return "\n".join(parts).rstrip() + "\n"


METHOD = """## How it is measured

- Servers are child processes on 127.0.0.1, started and stopped by pid; pushlab runs
  `server.py --uvloop --gc POLICY`, the reference `benchmarks/bare.py --kind aiohttp --uvloop
  --gc POLICY` (same aiohttp runner settings: no access log, handler cancellation). Both run
  side by side; the one not being measured is idle. Each benchmark warms both up first.
- The peer stack (`streams1000`, SSE only): `benchmarks/peer.py --uvloop --gc POLICY`,
  FastAPI + sse-starlette on uvicorn (uvloop, httptools, no access log), pacing and stamping
  its tokens as the bare server does and sending the same bytes per token; it runs beside the
  other two and takes its turn in each repetition.
- Repetitions alternate which side goes first (pushlab, bare[, peer], then the reverse, ...).
- Load generators run in two worker processes on uvloop with their garbage collector off,
  client i starting at i x stagger; a worker above 90% CPU, or a machine above 95% busy, is
  flagged. `longpoll` uses pushlab's own long-poll client (`clients.fleet.FleetPool`).
  `streams1000` and `streams5000` use the same pool's light readers (`clients/light.py`) by
  default (`--client python` switches to pushlab's clients): pushlab's Python clients were
  measured at 66-89 us of CPU per token (300 streams x 20 tokens/s), so 20,000-50,000
  tokens/s would need more cores than this machine has; the light readers find each token's
  seq and emit time with one regular expression per socket read (20-25 us per token,
  mostly the read itself), stamp the read's time as pushlab's clients do, and check that
  every seq 1..N arrived once.
- Server CPU comes from /proc (`harness.procstat`), sampled every 50 ms from a thread;
  per token it is taken over the steady window (from the last stream's first token to the
  first stream's last token) and divided by the tokens emitted in that window (their
  `t_emit_ns`); per long-poll request, by the polls that delivered a token in it.
- Latency is receive time minus the server's emit time (`time.time_ns()`, same host) for
  every token; percentiles with numpy's linear method, with their counts. pushlab stamps a
  token when its hub emits it, the bare server when it writes it, so a bare server that
  falls behind its schedule shows it in the duration and in the lateness, not in the
  latency. Lateness is measured on the client's clock alone: receive time minus (request
  start + ttft + (seq - 1) / rate).
- Duration: each stream's end-to-end time (request sent to end seen) over the ideal
  `ttft + (tokens - 1) / rate`; the target uses the slowest stream.
- Throughput: one stream read by a minimal reader (`benchmarks/sink.py`) that only counts
  bytes, so the server is the bottleneck; pushlab is asked for its maximum `rate` (100,000
  tokens/s, the protocol's limit), the bare servers for an unpaced stream.
- Idle memory: a fresh server per repetition; 50 streams opened and closed as warm-up, then
  N streams whose first token is a minute away, each opened until its first bytes (SSE
  `retry:`, WebSocket `started`) arrived; RSS growth (median of three samples) / N.
- `redis_log` and `streams5000_workers` (later runs) measure pushlab against itself: the
  in-memory hub in one process against `--log redis://...` on a redis-server started for
  the block (one process, or `--workers 2` on one port). Their CPU is every server process's
  (the `--workers` parent and each worker, by the pids of its ready line) plus Redis's
  (scheduler clock), over the whole trial for the target row, since a slow ramp can leave a
  side no steady window; /stats is polled four times a second on both sides for the loop lag
  of whichever process answers, and delivery comes from the clients' own counts.
- Other load: per trial, the CPU time (/proc/PID/stat) of every user-space process that is
  neither the benchmark nor one of its children, over the trial's wall time; above 0.25
  cores it is listed as a warning. `--wait-quiet-s S` waits up to S seconds before each
  trial for that load to fall under 0.25 cores.
"""
