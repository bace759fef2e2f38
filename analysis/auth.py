"""What identity costs, from the `auth` experiment's tables: the server CPU a credential
check adds per answer (measured against predicted), and which credential each browser API
carried.

The cost model: with `--auth` the guard checks one credential per HTTP request (one HMAC-
SHA256 over ~80 bytes, `Authority.verify`), so an answer pays one check per request it took:
one for a stream (SSE, NDJSON, one-shot, the WebSocket's upgrade: per connection), one per
poll for polling. Predicted overhead per answer = requests per answer x the cost of one
check measured in-process; measured = server CPU per answer with `--auth` minus without,
paired round by round (the two servers measured alternately, so drift on a shared machine
falls on both).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from analysis.matrix import FIXED, count_of
from clients.authprobe import COMPLETE, PROBES
from transports import registry

if TYPE_CHECKING:
    import pandas as pd

SERVERS = ("plain", "auth")  # no credential checked; --auth, every request checked
# rounds a sign test needs: all of 6 alike happens by chance with probability 2/2^6 = 3%
SIGN_ROUNDS = 6
# the credential forms as the report names them; "query-off" is ?access_token= on a server
# without --auth-query (it must be refused)
CREDENTIAL_LABELS = {
    "none": "no credential",
    "header": "Authorization header",
    "cookie": "session cookie",
    "ticket": "WebSocket ticket",
    "query": "?access_token= (--auth-query)",
    "query-off": "?access_token= (without --auth-query)",
}


def round_row(streams: pd.DataFrame, cpu_ns: int) -> dict[str, float]:
    """One transport on one server in one round: per answer, the requests and connections it
    took, the server CPU it cost (`cpu_ns` over the round's answers) and first-token p50."""
    answers = max(1, len(streams))
    return {
        "answers": float(len(streams)),
        "failed": float((streams["error"] != "").sum()),
        "requests_per_answer": float(streams["http_requests"].mean()),
        "connections_per_answer": float(streams["connections"].mean()),
        "server_cpu_us_per_answer": cpu_ns / 1e3 / answers,
        "ttft_p50_ms": float(streams["ttft_ms"].median()),
    }


def overhead(cost: pd.DataFrame, verify_us: float) -> pd.DataFrame:
    """Per transport: requests and checks per answer, server CPU per answer without and with
    --auth (median over rounds), the measured overhead (median of the rounds' differences)
    and the predicted one, and first-token p50 on both servers."""
    import pandas as pd

    rows = []
    for transport, group in cost.groupby("transport", sort=False):
        by = group.pivot_table(index="round", columns="server", values=[
            "server_cpu_us_per_answer", "ttft_p50_ms", "requests_per_answer",
            "connections_per_answer"])  # fmt: skip
        cpu = by["server_cpu_us_per_answer"]
        diff = cpu["auth"] - cpu["plain"]
        requests = float(by["requests_per_answer"]["auth"].median())
        many = registry.get(str(transport)).requests_per_answer == "many"
        rows.append({
            "transport": transport,
            "checked": "per request (each poll)" if many else "per connection (once an answer)",
            "requests_per_answer": requests,
            "connections_per_answer": float(by["connections_per_answer"]["auth"].median()),
            "cpu_plain_us": float(cpu["plain"].median()),
            "cpu_auth_us": float(cpu["auth"].median()),
            "overhead_us": float(diff.median()),
            # the standard error of the rounds' differences: the noise the median sits in
            "overhead_se_us": float(diff.std() / math.sqrt(len(diff))),  # NaN for one round
            # whether every round differed the same way: a sign test, which an A/A run of this
            # design (two plain servers, run 20261130-045641-auth-4267) passed on no transport,
            # where "beyond twice the standard error" flagged short polling (+759 +- 255 us)
            "same_sign": bool(len(diff) >= SIGN_ROUNDS and ((diff > 0).all() or (diff < 0).all())),
            "predicted_us": requests * verify_us,
            "predicted_share": requests * verify_us / float(cpu["plain"].median()),
            "ttft_plain_ms": float(by["ttft_p50_ms"]["plain"].median()),
            "ttft_auth_ms": float(by["ttft_p50_ms"]["auth"].median()),
            "rounds": len(by),
        })  # fmt: skip
    return pd.DataFrame(rows)


def browser_table(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The measured table of docs/SECURITY.md: one row per browser API, one column per
    credential form, each cell the outcome ("—" where the server takes no such form)."""
    table = outcomes.pivot(index="api", columns="credential", values="outcome")
    apis = [label for _, label in PROBES.values() if label in table.index]
    forms = [c for c in CREDENTIAL_LABELS if c in table.columns]
    table = table.reindex(index=apis, columns=forms).fillna("—")
    return table.rename(columns=CREDENTIAL_LABELS).reset_index()


def browser_facts(outcomes: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per transport: the share of its browser APIs that completed a stream carrying an
    Authorization header (`browser_auth_ok`) and (`@fixed`) a session cookie."""
    out: dict[str, dict[str, float]] = {}
    for figure, credential in (
        ("browser_auth_ok", "header"),
        ("browser_auth_ok" + FIXED, "cookie"),
    ):
        rows = outcomes[outcomes["credential"] == credential]
        for transport, group in rows.groupby("transport"):
            entry = out.setdefault(str(transport), {})
            entry[figure] = float((group["outcome"] == COMPLETE).mean())
            entry[count_of(figure)] = float(len(group))
    return out


def completing(outcomes: pd.DataFrame, credential: str) -> list[str]:
    """The browser APIs that completed a stream carrying `credential`, in probe order."""
    done = outcomes[(outcomes["credential"] == credential) & (outcomes["outcome"] == COMPLETE)]
    return [label for _, label in PROBES.values() if label in set(done["api"])]


def cost_reading(table: pd.DataFrame, verify_us: float) -> str:
    """What the check costs per answer, predicted per transport and measured against it."""
    from analysis.readings import num

    def predicted(rows: pd.DataFrame) -> str:
        return ", ".join(
            f"{r.transport} {num(r.requests_per_answer)} check"
            f"{'' if r.requests_per_answer == 1 else 's'}, {num(r.predicted_us)} µs "
            f"({r.predicted_share:.2%} of its CPU)"
            for r in rows.itertuples()
        )

    many = table["checked"].str.startswith("per request")
    measured = [
        f"{r.transport} {num(r.overhead_us)}"
        + (f" ± {num(r.overhead_se_us)}" if not math.isnan(r.overhead_se_us) else "")
        for r in table.itertuples()
    ]
    resolved = [r.transport for r in table.itertuples() if r.same_sign]
    return (
        f"One credential check cost {num(verify_us)} µs (HMAC-SHA256, in-process median). "
        f"Streams pay it once per connection: {predicted(table[~many]) or 'none measured'}. "
        f"Polling pays it per request: {predicted(table[many]) or 'none measured'}. Measured "
        f"server CPU per answer, --auth minus plain (median of {int(table['rounds'].max())} "
        f"paired rounds ± standard error): {', '.join(measured)} µs; every round differed "
        f"the same way (a sign test, at least {SIGN_ROUNDS} rounds) on: "
        f"{', '.join(resolved) or 'none'}."
    )
