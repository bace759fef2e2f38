"""Experiment `auth`: what does checking a credential cost, and which credential can each
browser API carry?

Part A (Python clients). Two servers at once, one plain and one with `--auth` (its clients
carry a key credential as `Authorization: Bearer`). For every transport, after a warm-up on
each, `rounds` rounds each run the same seeded fleet against both servers, in alternating
order, reading the server's CPU (`procstat.cpu_ns`, the scheduler's nanoseconds) around the
measured fleet. Per answer: requests, connections, server CPU, first-token time. The cost of
one check (`Authority.verify` on a key credential) is measured in-process with `timeit`
(median of `verify_repeats`), and analysis/auth.py sets measured overhead beside predicted
(requests per answer x one check): streams pay per connection, polling per poll.

`--set control=true` runs the "--auth" side without --auth too: an A/A run of the paired
design, whose differences are the design's own (run 20261130-045641-auth-4267 resolved none
by the sign test of analysis/auth.py, where a twice-the-standard-error rule flagged one).

Part B (Chromium, clients/authprobe.py): for each browser API and credential form, a page
served by the server tries to complete a short stream; `?access_token=` is tried on the
`--auth` server (refused) and on one with `--auth --auth-query`. Without Chromium the run
raises EnvironmentUnavailable; `--set browsers=false` measures part A alone.

Output: the Python clients' `tokens` and `streams` tables (condition "plain" or "--auth",
sweep "round"), and extra tables `auth_cost` (transport x server x round), `auth_verify`
(the check's cost, one row; meta.json lists it with the run's files) and `auth_browsers`
(one row per probe: api, transport, credential, outcome, ...).
"""

from __future__ import annotations

import dataclasses
import statistics
import timeit
from typing import TYPE_CHECKING

from analysis import auth as analysis
from clients.authprobe import CREDENTIALS, PROBES, applies, probe
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import to_tables
from experiments.descriptor import Experiment
from experiments.engine import WARMUP, Point, condition_keys, measure_records, run_sync
from experiments.spec import RunSpec
from harness import procstat
from harness.children import ServerProcess
from records.schema import Tables, concat
from streams.credentials import Authority, new_secret
from streams.errors import EnvironmentUnavailable
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from clients.base import Target
    from records.store import StoredRun

NAME = "auth"
CONDITIONS = {"plain": "plain", "auth": "--auth"}  # server name -> the rows' condition


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    # a check costs ~10 µs against ms of server CPU per answer: many answers per round and
    # several rounds, or the difference drowns in the rounds' spread (the table shows both)
    clients: int = 50  # answers per transport, server and round
    tokens: int = 40
    rate: float = 20.0  # 2 s an answer: short polls ask ~20 times, long polls up to 40
    ttft_ms: float = 50.0
    rounds: int = 7  # plain and --auth alternately, paired by round
    verify_repeats: int = 7  # timeit repeats of the credential check (the median is kept)
    browsers: bool = True  # part B: needs Chromium
    headless: bool = True
    # an A/A check of the paired design: the "--auth" side runs without --auth too, so any
    # difference it measures is the design's own (server order, placement), not the check's
    control: bool = False


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, clients=4, tokens=20, rate=50.0, rounds=2)


def verify_cost(repeats: int, number: int = 2000) -> dict[str, float]:
    """One `Authority.verify` of a key credential, in µs: median of `repeats` timings."""
    authority = Authority(new_secret())
    token = authority.mint("lab")
    times = timeit.repeat(lambda: authority.verify(token), number=number, repeat=repeats)
    per_us = [t / number * 1e6 for t in times]
    return {"verify_us": statistics.median(per_us), "verify_min_us": min(per_us),
            "repeats": float(repeats), "number": float(number)}  # fmt: skip


def _cpu_ns(server: ServerProcess) -> int:
    """The server's CPU so far, from the scheduler's per-thread nanoseconds."""
    ns = procstat.cpu_ns(server.pid)
    if ns is None:
        raise RuntimeError(f"the server (pid {server.pid}) is gone: {server.log()[-300:]}")
    return ns


async def _round(
    spec: Spec, params: GenParams, transport: str, name: str, server: ServerProcess,
    target: Target, r: int, run_id: str,
) -> tuple[Tables, dict[str, object]]:  # fmt: skip
    """One measured fleet of `transport` on server `name`: its tables and its cost row."""
    point = Point(transport, params, condition=CONDITIONS[name], sweep=("round", r),
                  clients=spec.clients)  # fmt: skip
    cpu0 = _cpu_ns(server)
    records = await measure_records(point, target, warmup=False)
    cpu_ns = _cpu_ns(server) - cpu0
    tables = to_tables(records, condition_keys(run_id, NAME, point))
    row = {"transport": transport, "server": name, "round": r,
           **analysis.round_row(tables.streams, cpu_ns)}  # fmt: skip
    return tables, row


async def _python(
    spec: Spec, servers: dict[str, ServerProcess], run_id: str, progress: bool
) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    bar = tqdm(total=len(spec.transports) * spec.rounds, desc=NAME, unit="round",
               disable=not progress)  # fmt: skip
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    targets = {name: server.authed_target() for name, server in servers.items()}
    parts, rows = [], []
    for transport in spec.transports:
        for target in targets.values():
            await run_fleet(FleetSpec(transport), target, WARMUP)  # warm, outside the rounds
        for r in range(1, spec.rounds + 1):
            order = analysis.SERVERS if r % 2 else analysis.SERVERS[::-1]
            for name in order:
                tables, row = await _round(spec, params, transport, name, servers[name],
                                           targets[name], r, run_id)  # fmt: skip
                parts.append(tables)
                rows.append(row)
            bar.update()
    bar.close()
    cost = pd.DataFrame(rows).assign(run_id=run_id)
    return dataclasses.replace(concat(parts), extra={"auth_cost": cost})


async def _browsers(spec: Spec, auth: ServerProcess, query: ServerProcess) -> pd.DataFrame:
    """Every probe and credential form on the --auth server's own page; ?access_token= also
    on the --auth-query server's (clients/authprobe.py)."""
    import pandas as pd

    from clients.browser import BrowserSession

    params = GenParams(tokens=5, rate=200.0, ttft_ms=0.0, seed=spec.seed)
    rows = []
    for server, forms in ((auth, CREDENTIALS), (query, ("query",))):
        key = server.credential("lab")
        async with BrowserSession(server.target, headless=spec.headless) as session:
            for name in PROBES:
                for credential in (c for c in forms if applies(name, c)):
                    row = await probe(session, name, credential, key, params)
                    if server is auth and credential == "query":
                        row["credential"] = "query-off"
                    rows.append(row)
    return pd.DataFrame(rows)


def check_environment(spec: Spec) -> None:
    """EnvironmentUnavailable before anything starts, when part B needs a missing Chromium."""
    import os

    import clients.browser  # its CHROMIUM read at call time (a test points it elsewhere)

    chromium = clients.browser.CHROMIUM
    if spec.browsers and not os.access(chromium, os.X_OK):
        raise EnvironmentUnavailable(
            f"Chromium is not installed at {chromium}: run `make system` "
            "(or --set browsers=false for the Python clients alone)"
        )


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    """Part A on a plain and an --auth server, part B on the --auth one and an --auth-query
    one; the check's cost first, measured while nothing else runs."""
    import pandas as pd

    check_environment(spec)
    verify = pd.DataFrame([verify_cost(spec.verify_repeats)])
    args = {"plain": [], "auth": [] if spec.control else ["--auth"],
            "query": ["--auth", "--auth-query"]}  # fmt: skip
    servers: dict[str, ServerProcess] = {}
    try:
        for name in ("plain", "auth", "query") if spec.browsers else ("plain", "auth"):
            servers[name] = ServerProcess(args[name])
            servers[name].start()
        python = {k: servers[k] for k in analysis.SERVERS}
        tables = run_sync(_python(spec, python, run_id, progress))
        extra = {**tables.extra, "auth_verify": verify.assign(run_id=run_id)}
        if spec.browsers:
            browsers = run_sync(_browsers(spec, servers["auth"], servers["query"]))
            extra["auth_browsers"] = browsers.assign(run_id=run_id)
    finally:
        for server in servers.values():
            server.stop()
    return dataclasses.replace(tables, extra=extra)


def _overhead(run: StoredRun) -> pd.DataFrame | None:
    cost, verify = run.extra.get("auth_cost"), run.extra.get("auth_verify")
    if cost is None or verify is None or cost.empty:
        return None
    return analysis.overhead(cost, float(verify["verify_us"].iloc[0]))


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    table = _overhead(run)
    for _, row in table.iterrows() if table is not None else ():
        out[str(row["transport"])] = {"auth_overhead_us": float(row["overhead_us"])}
    outcomes = run.extra.get("auth_browsers")
    browsers = analysis.browser_facts(outcomes) if outcomes is not None else {}
    for transport, values in browsers.items():
        out.setdefault(transport, {}).update(values)
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    table, text = _overhead(run), []
    if table is not None:
        verify_us = float(run.extra["auth_verify"]["verify_us"].iloc[0])
        text.append(analysis.cost_reading(table, verify_us))
    outcomes = run.extra.get("auth_browsers")
    if outcomes is not None:
        for credential in ("header", "cookie", "ticket", "query"):
            done = analysis.completing(outcomes, credential)
            label = analysis.CREDENTIAL_LABELS[credential]
            text.append(f"In Chromium, {label}: completed on {', '.join(done) or 'none'}.")
    if not text:
        raise KeyError("auth_cost")
    return " ".join(text)


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    out = []
    outcomes = run.extra.get("auth_browsers")
    if outcomes is not None:
        out.append(("Which credential each browser API carried (Chromium)",
                    analysis.browser_table(outcomes)))  # fmt: skip
    table = _overhead(run)
    if table is not None:
        out.append(("Server CPU per answer without and with --auth (µs)", table))
    return out


EXPERIMENT = Experiment(
    NAME,
    "identity: server CPU a credential check adds per answer (per connection for streams, "
    "per request for polling), and which credential each browser API can carry",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "auth_overhead_us": ("µs", "server CPU --auth adds per answer, measured (auth)"),
        "browser_auth_ok": (
            "frac",
            "browser clients of the transport that completed a stream "
            "with an Authorization header (auth)",
        ),
    },
    facts=facts,
    tables=tables,
    reading=reading,
)
