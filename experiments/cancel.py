"""Experiment `cancel`: a client abandons a generation mid-stream; when does the server stop?

For each transport, clients read `abandon_after` tokens and then walk away, either by just
closing the connection (or no longer polling) or by cancelling explicitly (WebSocket: a
`cancel` message; HTTP transports: `DELETE /streams/{id}`, a second request). Two server
policies: `keep` (the default: a stream outlives its connection so it can be resumed, until
`idle_timeout_s` without a reader) and `cancel-on-disconnect` (a streaming reader's
disconnect stops it; nothing to resume). The extra table `cancel` has, per stream, how long
the server kept generating after the client left and how many tokens nobody read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

from analysis.derived import cancel_summary
from analysis.matrix import count_of
from analysis.readings import extremes
from clients.base import ClientOptions, Target
from clients.http import HTTP11
from clients.recorder import StreamRecord, to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, measure_records, run_sync, server_target
from experiments.spec import RunSpec, over_tcp
from presentation import charts_net
from records.schema import Tables, concat
from streams.params import GenParams
from transports.registry import get
from transports.token import loads

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "cancel"
POLICIES = {"keep": (), "cancel-on-disconnect": ("--cancel-on-disconnect",)}


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    hows: tuple[str, ...] = ("close", "cancel")
    policies: tuple[str, ...] = ("keep", "cancel-on-disconnect")
    tokens: int = 200
    rate: float = 50.0
    ttft_ms: float = 50.0
    abandon_after: int = 10
    idle_timeout_s: float = 2.0  # the server's: how long an unread stream keeps generating
    clients: int = 2


def quick(spec: Spec) -> Spec:
    return dataclasses.replace(spec, tokens=100, idle_timeout_s=1.0, clients=1, policies=("keep",))


def points(spec: Spec) -> list[tuple[str, Point]]:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    out = []
    for policy in spec.policies:
        for how in spec.hows:
            options = ClientOptions(abandon_after=spec.abandon_after, abandon=how, max_reconnects=0)
            out += [
                (
                    policy,
                    Point(
                        t,
                        params,
                        condition=f"{how}, server {policy}",
                        sweep=("abandon_after", spec.abandon_after),
                        clients=spec.clients,
                        options=options,
                    ),
                )
                for t in spec.transports
            ]
    return out


async def server_outcome(target: Target, rec: StreamRecord, wait_s: float) -> dict[str, object]:
    """Poll `GET /streams/{id}` until the stream stopped (at most `wait_s`); its final state."""
    http = HTTP11(target)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            resp = await http.request("GET", f"/streams/{rec.stream_id}")
            state = loads(await http.read_body())
            if resp.status != 200 or state["state"] != "running" or time.monotonic() > deadline:
                return state if resp.status == 200 else {"state": f"HTTP {resp.status}"}
            await asyncio.sleep(0.02)
    finally:
        await http.aclose()


def outcome_row(
    policy: str, how: str, rec: StreamRecord, state: dict[str, object]
) -> dict[str, object]:
    finished_ns = int(state.get("finished_ns") or 0)  # type: ignore[call-overload]
    emitted = int(state.get("tokens_emitted", -1))  # type: ignore[call-overload]
    return {
        "transport": rec.transport,
        "how": how,
        "policy": policy,
        "stream_id": rec.stream_id,
        "tokens_read": len(rec.texts),
        "tokens_emitted": emitted,
        "tokens_planned": int(state.get("tokens_planned", -1)),  # type: ignore[call-overload]
        "wasted_tokens": emitted - len(rec.texts),
        "stop_ms": (finished_ns - rec.abandoned_ns) / 1e6
        if finished_ns and rec.abandoned_ns
        else float("nan"),
        "server_state": state.get("state"),
        "server_reason": state.get("reason"),
        "client_error": rec.error,
    }


async def measure_point(
    policy: str, point: Point, target: Target, spec: Spec
) -> tuple[list[StreamRecord], list[dict[str, object]]]:
    records = await measure_records(point, target)
    wait_s = spec.idle_timeout_s + spec.tokens / spec.rate + 5
    states = await asyncio.gather(
        *(server_outcome(target, r, wait_s) for r in records if r.stream_id)
    )
    rows = [
        outcome_row(policy, point.options.abandon, r, s)
        for r, s in zip([r for r in records if r.stream_id], states, strict=True)
    ]
    return records, rows


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    parts, rows = [], []
    todo = points(spec)
    with tqdm(total=len(todo), desc=NAME, unit="point", disable=not progress) as bar:
        for policy in spec.policies:
            args = ("--idle-timeout-s", f"{spec.idle_timeout_s:g}", *POLICIES[policy])
            with server_target(None, args) as target:
                for _, point in (p for p in todo if p[0] == policy):
                    records, point_rows = run_sync(measure_point(policy, point, target, spec))
                    parts.append(to_tables(records, condition_keys(run_id, NAME, point)))
                    rows += point_rows
                    bar.update()
    tables = concat(parts)
    cancel = pd.DataFrame(rows).assign(run_id=run_id, idle_timeout_s=spec.idle_timeout_s)
    return dataclasses.replace(tables, extra={"cancel": cancel})


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    table = run.extra.get("cancel")
    if table is None:
        return {}
    keep = table[table["policy"] == "keep"]
    out: dict[str, dict[str, float]] = {}
    for transport, rows in keep.groupby("transport"):
        explicit, left = rows[rows["how"] == "cancel"], rows[rows["how"] == "close"]
        out[str(transport)] = {
            "cancel_wasted": float(explicit["wasted_tokens"].median()),
            # a message on the open connection, or a DELETE: the registry says which
            "cancel_extra_requests": float(get(str(transport)).cancel_requests),
            "leave_wasted": float(left["wasted_tokens"].median()),
            count_of("cancel_wasted"): float(len(explicit)),
            count_of("leave_wasted"): float(len(left)),
        }
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    stops = f[f["cancel_wasted"] <= 2].index.tolist()
    _, _, hi, hi_v = extremes(f["leave_wasted"])
    return (
        f"An explicit cancel stopped generation within 2 tokens on: "
        f"{', '.join(stops) or 'none'}. Just leaving let the server generate up to "
        f"{hi_v:.0f} tokens for nobody ({hi})."
    )


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    if "cancel" not in run.extra:
        return []
    return [("Cancel summary (medians per stream)", cancel_summary(run.extra["cancel"]))]


EXPERIMENT = Experiment(
    NAME,
    "client abandons mid-stream: server time-to-stop and tokens generated for nobody",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "cancel_wasted": ("tokens", "tokens generated after an explicit cancel (median)"),
        "cancel_extra_requests": ("", "extra HTTP requests an explicit cancel needs"),
        "leave_wasted": ("tokens", "tokens generated after the client just left (median)"),
    },
    facts=facts,
    charts=(charts_net.cancel,),
    captions={"cancel.png": "Generation after the client walked away"},
    tables=tables,
    reading=reading,
)
