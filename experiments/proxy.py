"""Experiment `proxy`: every transport through real nginx, in the modes an architect meets.

Modes (netem/nginx.py): `direct` (no nginx, the baseline), `unbuffered` (proxy_buffering
off), `buffered` (proxy_buffering on, the server sends no X-Accel-Buffering), `accel-header`
(buffering on, the server's `X-Accel-Buffering: no` turns it off per response), `gzip`
(gzip on for the streaming types; clients accept gzip), `buffered-http1.0` (buffering on and
HTTP/1.0 between nginx and the server, nginx's default `proxy_http_version`: nginx's
defaults), `http1.0-accel-header` (nginx's defaults, the server sends `X-Accel-Buffering: no`:
the app-side fix alone). The quick size runs direct, nginx's defaults and each fix alone.
Each mode's rendered nginx.conf is kept with the run (`nginx-<mode>.conf`).
The literature expects buffering to turn SSE and NDJSON into one late burst; the measurement
decides. Per stream, `arrival spread` = (last token read - first token read) / (last token
emitted - first token emitted): 1 means it streamed as generated, 0 means one burst.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from analysis.derived import arrival_spread_table, proxy_summary
from analysis.matrix import FIXED, count_of
from clients.base import ClientOptions
from clients.recorder import to_tables
from experiments.descriptor import Experiment
from experiments.engine import Point, condition_keys, measure_records, run_sync, server_target
from experiments.spec import RunSpec, over_tcp
from netem.nginx import MODES, Nginx, directives, render_config, server_args_for
from presentation import charts_arrival, charts_net
from records.schema import Tables, concat
from streams.params import GenParams

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun

NAME = "proxy"
ALL_MODES = ("direct", *MODES)
QUICK_MODES = ("direct", "buffered-http1.0", "buffered", "http1.0-accel-header")


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    transports: tuple[str, ...] = dataclasses.field(default_factory=over_tcp)
    modes: tuple[str, ...] = ALL_MODES
    tokens: int = 20
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    options: ClientOptions = dataclasses.field(default_factory=ClientOptions)


def quick(spec: Spec) -> Spec:
    # nginx's defaults (HTTP/1.0 upstream, buffering on, no header) and each fix alone: the
    # directive (proxy_http_version 1.1) and the app's header (X-Accel-Buffering: no)
    return dataclasses.replace(spec, modes=QUICK_MODES, tokens=10, rate=40.0, clients=1)


def mode_of(condition: str) -> str:
    """The mode a `condition` label names ("direct" or "nginx <mode>")."""
    return condition.removeprefix("nginx ")


def mode_directives(condition: str) -> str:
    """The nginx directives and app header of the mode a condition names ("?" if unknown)."""
    try:
        return directives(mode_of(condition))
    except (KeyError, ValueError):  # a mode this code no longer has (an older run)
        return "?"


def points(spec: Spec, mode: str) -> list[Point]:
    params = GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)
    options = dataclasses.replace(spec.options, accept_gzip=mode == "gzip")
    return [
        Point(
            t,
            params,
            condition=f"nginx {mode}" if mode != "direct" else "direct",
            sweep=("mode", ALL_MODES.index(mode)),
            clients=spec.clients,
            options=options,
        )
        for t in spec.transports
    ]


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    """Each mode against its own server (started with the mode's flags) and nginx; the
    tables, the `nginx` path table and each mode's nginx.conf (`nginx-<mode>.conf`)."""
    import pandas as pd
    from tqdm import tqdm

    parts: list[Tables] = []
    path_rows: list[dict[str, object]] = []
    files: dict[str, str] = {}
    with tqdm(
        total=len(spec.modes) * len(spec.transports), desc=NAME, unit="point", disable=not progress
    ) as bar:
        for mode in spec.modes:
            parts += _run_mode(spec, mode, run_id, path_rows, files, bar.update)
    tables = concat(parts)
    return dataclasses.replace(
        tables, extra={"nginx": pd.DataFrame(path_rows).assign(run_id=run_id)}, files=files
    )


def _run_mode(
    spec: Spec,
    mode: str,
    run_id: str,
    path_rows: list[dict[str, object]],
    files: dict[str, str],
    done: Callable[[], object],
) -> list[Tables]:
    """One mode's points; appends nginx's proof of path to `path_rows`, its config to `files`."""
    parts = []
    args = [] if mode == "direct" else server_args_for(mode)
    with server_target(None, args) as server:
        nginx = None if mode == "direct" else Nginx(MODES[mode], server.host, server.port)
        target = nginx.start() if nginx else server
        if nginx is not None and nginx.prefix is not None:
            # the very file nginx ran with (render_config is pure: same inputs, same text)
            files[f"nginx-{mode}.conf"] = render_config(
                nginx.spec, listen_port=target.port, upstream=nginx.upstream, prefix=nginx.prefix
            )
        try:
            for point in points(spec, mode):
                records = run_sync(measure_records(point, target))
                parts.append(to_tables(records, condition_keys(run_id, NAME, point)))
                done()
        finally:
            if nginx is not None:
                nginx.stop()
                # proof that nginx was in the path: the requests it logged
                path_rows.append(
                    {
                        "mode": mode,
                        "directives": directives(mode),
                        "nginx_requests_logged": len(nginx.access_log().splitlines()),
                        "server_args": " ".join(args),
                    }
                )
    return parts


# nginx's defaults (proxy_http_version 1.0, proxy_buffering on) with an app that sends no
# X-Accel-Buffering; and the modes that each apply one fix a reader can make
DEFAULT_MODE = "buffered-http1.0"
FIX_MODES = ("buffered", "accel-header", "http1.0-accel-header", "unbuffered")


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Arrival spread behind nginx at its defaults and (`@fixed`) the worst over the modes
    that apply a fix; a run without the default mode reports its worst mode as the default."""
    spread = arrival_spread_table(run.tokens)
    behind = spread[spread["condition"] != "direct"]
    behind = behind.assign(mode=behind["condition"].str.removeprefix("nginx "))
    per_mode = behind.groupby(["transport", "mode"])["arrival_spread"].median()
    streams = behind.groupby(["transport", "mode"])["stream_id"].size()
    out: dict[str, dict[str, float]] = {}
    for transport, modes in per_mode.groupby(level=0):
        values = modes.droplevel(0)
        counts = streams.loc[transport]
        default = [DEFAULT_MODE] if DEFAULT_MODE in values.index else list(values.index)
        fixes = [m for m in FIX_MODES if m in values.index]
        entry = out.setdefault(str(transport), {})
        entry["proxy_min_spread"] = float(values[default].min())
        entry[count_of("proxy_min_spread")] = float(counts[default].sum())
        if fixes and DEFAULT_MODE in values.index:
            entry["proxy_min_spread" + FIXED] = float(values[fixes].min())
            entry[count_of("proxy_min_spread" + FIXED)] = float(counts[fixes].sum())
    return out


def reading(run: StoredRun, f: pd.DataFrame) -> str:
    spread = f["proxy_min_spread"]
    held = spread[spread < 0.8].index.tolist()
    streamed = spread[spread >= 0.8].index.tolist()
    text = (
        f"Behind nginx at its defaults, streamed as generated: {', '.join(streamed) or 'none'}"
        + (f"; held and sent in bursts: {', '.join(held)}." if held else ".")
    )
    fixed = f.get("proxy_min_spread" + FIXED)
    if fixed is not None and fixed.notna().any():
        rescued = [t for t in held if fixed.get(t, 0.0) >= 0.8]
        still = [t for t in held if t not in rescued]
        if rescued:
            text += (
                f" With proxy_http_version 1.1 or the app's X-Accel-Buffering: no, these "
                f"streamed too: {', '.join(rescued)}."
            )
        if still:
            text += f" Still held with every fix measured: {', '.join(still)}."
    return text


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    summary = proxy_summary(run)
    summary.insert(1, "directives", summary["condition"].map(mode_directives))
    out = [("Proxy summary (medians per stream)", summary)]
    if "nginx" in run.extra:
        out.append(("nginx in the path (requests in its access log)", run.extra["nginx"]))
    return out


EXPERIMENT = Experiment(
    NAME,
    "every transport through real nginx: buffering, X-Accel-Buffering, gzip, HTTP/1.0",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures={
        "proxy_min_spread": ("", "worst arrival spread over nginx modes: 1 streamed, 0 one burst"),
    },
    facts=facts,
    charts=(charts_net.arrival_spread, charts_arrival.token_arrival),
    captions={
        "arrival_spread.png": "How tokens arrive through each proxy mode",
        "token_arrival.png": "Tokens received over time through each proxy mode",
    },
    tables=tables,
    reading=reading,
    tcp_only="nginx",
)
