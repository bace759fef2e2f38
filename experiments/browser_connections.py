"""Experiment `browser-connections`: how many live streams can one browser tab hold, over
HTTP/1.1, over HTTP/2 and over HTTP/3?

Question: Chrome opens at most six HTTP/1.1 connections per origin (its socket pool's
per-group limit), and an EventSource holds its connection for the whole answer. So a tab
that opens a seventh stream to the same server should see it wait, with no first token,
until an earlier one ends; WebSockets are pooled separately and should not wait. HTTP/2
multiplexes every request of an origin on one connection, so there the six-connection stall
should vanish, up to the server's SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 section 6.5.2):
Chrome queues the streams beyond it until earlier ones close (section 5.1.2: a client "MUST
NOT" exceed it). HTTP/3 multiplexes them on one QUIC connection the same way (RFC 9114
section 6.1: "only one HTTP/3 connection per server endpoint"; the stream limit is QUIC's
MAX_STREAMS, RFC 9000 section 4.6). For each path, each transport, each n in `ns`, one
Chromium context opens n streams of the page's own client at once (EventSource `sse`,
WebSocket, then WebTransport) and records each stream's time to first token and the
connections CDP says they used.

Paths (`Spec.paths`), each its own origin and its own Chromium:
    http1.1         the server directly, cleartext HTTP/1.1 (the six-connection pool)
    nginx-h2        nginx 1.22 terminating TLS with HTTP/2 (unbuffered) in front of it
    caddy-h2        Caddy 2.6 terminating TLS with HTTP/2 in front of it (Go's HTTP/2
                    server announces 250 concurrent streams, not settable in 2.6)
    caddy-h3        Caddy 2.6 with HTTP/3 (`CaddySpec(http3=True)`: QUIC on UDP at the
                    same port number), Chromium started with `--origin-to-force-quic-on`
                    for that origin (its IP literal), so HTTP goes over QUIC from the first
                    request instead of after Caddy's Alt-Svc
    nginx-h2-maxN   nginx with `http2_max_concurrent_streams N`: the ceiling, made low
The fronts use a lab CA made for the run (netem/pki.py), trusted by its key hash (over QUIC
too). No front offers RFC 8441 (nor RFC 9220 over HTTP/3), so each WebSocket still gets an
HTTP/1.1 (TLS over TCP) connection of its own, on caddy-h3 as well. WebTransport never
passes a front: the page asks the origin (through the front) for the server's own HTTP/3
endpoint and opens its sessions there, so on every path it measures the same thing.

A stream is *stalled* when its first token comes later than `stall_deadline_ms`: the
stream's `ttft_ms` plus half its generation time. A queued stream can only start once a
whole earlier stream has ended, so it misses that deadline by about half the generation
time; a stream that got a connection (or an HTTP/2 stream) at once beats it by as much.

MEASURED (Debian's Chromium 156, default size, 12 tokens at 10/s): over HTTP/1.1, EventSource
streams 7 and up stall at every n (first token ~1.3 s, one whole stream later; 6 sockets
used); through nginx and through Caddy over HTTP/2 none of n = 1..10 stalls, all n on one
connection; with nginx announcing 8 concurrent streams, the 9th and 10th stall, still on that
one connection (Chrome queues them rather than opening a second). WebSockets never stall,
each on its own connection on every path. Through Caddy over HTTP/3 (quick size, n = 6 and
8): none stalls, CDP says "h3" for every EventSource and all n share one connection; first
tokens at 120 to 143 ms for n=8, as over HTTP/2.

WebTransport (each session a QUIC connection of its own to the server's UDP endpoint):
MEASURED on the direct path, n=8: 8 sessions, 8 QUIC connections (`connections_used`), none
stalled, first tokens at 0.38 to 0.59 s in three steps; the session setup (QUIC and TLS
handshake, extended CONNECT), not a pool, is the wait. On the caddy-h3 path, n=8: the same
8 and 8, none stalled, first tokens 147 to 257 ms. It is in the default transports, not in
`quick` (it would add about 9 s to the quick suite for the same answer on every path).

The server is a child process (`python server.py`), or `spec.server` (plain http://: the
fronts proxy to it). Output: the browser clients' `tokens` and `streams` tables (condition
"n=8 nginx-h2", sweep n_open), and the extra table `connections` (one row per stream: path,
n_open, index, transport, ttft_ms, stalled, http_version, and `connections_used`: the
distinct connections CDP reported for the n streams of that point). Runs stored before
paths existed have no `path` column: they were cleartext HTTP/1.1, and the summary table
and the chart read them so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.derived import stalled_summary
from analysis.matrix import FIXED, count_of
from clients.base import Target
from clients.browser import (
    BrowserSession,
    browser_tables,
    connection_keys,
    first_streaming_clients,
)
from clients.recorder import StreamRecord, stream_row
from experiments.descriptor import Experiment
from experiments.engine import run_sync, server_target
from experiments.spec import RunSpec
from presentation import charts_net
from records.schema import Tables, concat
from streams.errors import EnvironmentUnavailable, ParamError
from streams.params import GenParams
from transports import registry
from transports.registry import by_browser_client

if TYPE_CHECKING:
    import pandas as pd

    from netem.pki import LabPKI
    from records.store import StoredRun


NAME = "browser-connections"
CONNECTION_COLUMNS = (
    "run_id",
    "path",
    "n_open",
    "index",
    "transport",
    "stream_id",
    "ttft_ms",
    "deadline_ms",
    "stalled",
    "http_version",
    "connections_used",
)
DIRECT = "http1.1"
FRONT_PATHS = {"nginx-h2": "nginx", "caddy-h2": "caddy"}  # HTTP/2 fronts (facts' `@fixed`)
H3_PATHS = {"caddy-h3": "caddy"}  # HTTP/3 fronts: Chromium forced onto QUIC for the origin
_MAX_STREAMS = re.compile(r"nginx-h2-max(\d+)")
PATHS = (DIRECT, *FRONT_PATHS)


def parse_path(path: str) -> tuple[str, int | None, bool]:
    """(front: "" for none, "nginx", "caddy"; nginx's http2_max_concurrent_streams or None;
    whether the front speaks HTTP/3 and the browser is forced onto it)."""
    if path == DIRECT:
        return "", None, False
    if path in FRONT_PATHS:
        return FRONT_PATHS[path], None, False
    if path in H3_PATHS:
        return H3_PATHS[path], None, True
    if match := _MAX_STREAMS.fullmatch(path):
        return "nginx", int(match.group(1)), False
    known = ", ".join((DIRECT, *FRONT_PATHS, *H3_PATHS))
    raise ValueError(f"unknown path {path!r}: {known}, nginx-h2-maxN")


def default_clients() -> tuple[str, ...]:
    """The page's clients measured by default: one HTTP streaming client and one on an
    upgraded connection (`first_streaming_clients`), then the first of a QUIC session
    transport (WebTransport), from the registry."""
    quic = [t.browser_clients[0] for t in registry.ordered() if t.stack == "quic" and
            t.browser_clients]  # fmt: skip
    return (*first_streaming_clients(), *quic[:1])


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    ns: tuple[int, ...] = tuple(range(1, 11))  # streams opened at once
    # the page's client keys: HTTP streaming, upgraded connection, QUIC session
    transports: tuple[str, ...] = dataclasses.field(default_factory=default_clients)
    # the last one: nginx announcing 8 concurrent streams, so n=9 and 10 go over it
    paths: tuple[str, ...] = (*PATHS, *H3_PATHS, "nginx-h2-max8")
    tokens: int = 12
    rate: float = 10.0  # tokens/s: each stream lasts ttft + tokens/rate, about 1.3 s
    ttft_ms: float = 100.0
    text: str = "en"
    server: str | None = None  # URL of a running server with the page; None: start one
    headless: bool = True

    def __post_init__(self) -> None:
        for path in self.paths:
            try:
                parse_path(path)
            except ValueError as exc:  # one line from the CLI, not a traceback
                raise ParamError(str(exc), param="paths") from None


def quick(spec: Spec) -> Spec:
    """Six (all fit in HTTP/1.1's pool) and eight (two over it), on the plain paths and HTTP/3:
    about 35 s. MEASURED (2 cores): the three TCP paths with EventSource and WebSocket 26 s,
    caddy-h3 added 8 s; WebTransport on those paths would add 9 s more, for the same
    answer on each (its sessions never pass a front), so quick leaves it out."""
    return dataclasses.replace(
        spec, ns=(6, 8), paths=(*PATHS, *H3_PATHS), transports=first_streaming_clients()
    )


def params_of(spec: Spec) -> GenParams:
    return GenParams(
        tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed, text=spec.text
    )


def stall_deadline_ms(params: GenParams) -> float:
    """A first token later than this means the stream waited for a connection."""
    return params.ttft_ms + 0.5 * params.tokens / params.rate * 1e3


def connection_rows(
    records: list[StreamRecord],
    n_open: int,
    params: GenParams,
    run_id: str,
    path: str = DIRECT,
    connections_used: int = -1,
) -> list[dict[str, object]]:
    """One `connections` row per stream, in the order the page started them."""
    deadline = stall_deadline_ms(params)
    rows = []
    for index, rec in enumerate(records):
        ttft = float(stream_row(rec)["ttft_ms"])  # type: ignore[arg-type]
        rows.append(
            {
                "run_id": run_id,
                "path": path,
                "n_open": n_open,
                "index": index,
                "transport": rec.transport,
                "stream_id": rec.stream_id,
                "ttft_ms": ttft,
                "deadline_ms": deadline,
                "stalled": math.isnan(ttft) or ttft > deadline,
                "http_version": rec.conns[0].http_version if rec.conns else "",
                "connections_used": connections_used,
            }
        )
    return rows


def check_environment(paths: tuple[str, ...]) -> None:
    """EnvironmentUnavailable before anything starts, if a binary a path needs is missing."""
    import clients.browser  # its CHROMIUM read at call time (a test points it elsewhere)
    from netem.caddy import NOT_INSTALLED as NO_CADDY
    from netem.caddy import caddy_binary
    from netem.nginx import NOT_INSTALLED as NO_NGINX
    from netem.nginx import nginx_binary

    chromium = clients.browser.CHROMIUM
    if not os.access(chromium, os.X_OK):
        raise EnvironmentUnavailable(f"Chromium is not installed at {chromium}: run `make system`")
    fronts = {parse_path(p)[0] for p in paths}
    if "nginx" in fronts and nginx_binary() is None:
        raise EnvironmentUnavailable(NO_NGINX)
    if "caddy" in fronts and caddy_binary() is None:
        raise EnvironmentUnavailable(NO_CADDY)


@contextlib.contextmanager
def path_target(path: str, server: Target, pki: LabPKI) -> Iterator[Target]:
    """The address the browser loads for `path`: the server, or a TLS front before it."""
    from netem.caddy import Caddy, CaddySpec
    from netem.nginx import Nginx, NginxSpec

    front, max_streams, http3 = parse_path(path)
    if not front:
        yield server
        return
    proxy: Nginx | Caddy
    if front == "nginx":
        spec = NginxSpec(buffering=False, tls=True, http2=True, max_concurrent_streams=max_streams)
        proxy = Nginx(spec, server.host, server.port, pki=pki)
    else:  # http3: QUIC on UDP at the same port number, h1 and h2 still on TCP
        proxy = Caddy(CaddySpec(http3=http3), server.host, server.port, pki=pki)
    proxy.start()
    try:
        yield Target.parse(proxy.url)
    finally:
        proxy.stop()


@contextlib.asynccontextmanager
async def _session(
    spec: Spec, path: str, server: Target, pki: LabPKI
) -> AsyncIterator[BrowserSession]:
    """One Chromium on `path`'s origin (trusting the lab certificate when it is https)."""
    with path_target(path, server, pki) as target:
        spki = pki.spki_sha256() if target.secure else ""
        # HTTP/3 from the first request (no wait for Caddy's Alt-Svc on a TCP response); the
        # IP literal origin is enough, and the lab leaf is trusted over QUIC by the same spki
        force = [target.authority] if parse_path(path)[2] else []
        async with BrowserSession(
            target, headless=spec.headless, spki=spki, force_quic=force
        ) as session:
            yield session


async def _measure(spec: Spec, server: Target, pki: LabPKI, run_id: str, progress: bool) -> Tables:
    from tqdm import tqdm

    params = params_of(spec)
    parts: list[Tables] = []
    rows: list[dict[str, object]] = []
    total = len(spec.paths) * len(spec.transports) * len(spec.ns)
    with tqdm(total=total, desc=NAME, unit="point", disable=not progress) as bar:
        for path in spec.paths:
            async with _session(spec, path, server, pki) as session:
                for key in spec.transports:
                    for n in spec.ns:
                        records = await session.run(key, params, n)
                        # WebTransport sessions are attributed to no stream by CDP: all of
                        # this run's count, each its own QUIC connection
                        used = connection_keys(
                            [r for reqs in session.requests.values() for r in reqs]
                            + session.ledger.webtransports()
                        )
                        keys = {
                            "run_id": run_id,
                            "experiment": NAME,
                            "condition": f"n={n} {path}",
                            "sweep": "n_open",
                            "sweep_value": float(n),
                            "rate_hz": params.rate,
                            "corpus": params.text,
                        }
                        parts.append(browser_tables(records, keys))
                        rows += connection_rows(records, n, params, run_id, path, len(used))
                        bar.update()
    import pandas as pd

    tables = concat(parts)
    connections = pd.DataFrame(rows, columns=list(CONNECTION_COLUMNS))
    return dataclasses.replace(tables, extra={"connections": connections})


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    """Every n for every transport on every path, one browser per path, against one server."""
    from netem.pki import make_lab_pki

    check_environment(spec.paths)
    if spec.server and Target.parse(spec.server).secure and set(spec.paths) - {DIRECT}:
        raise ValueError("the TLS fronts proxy to plain HTTP: give an http:// server")
    pki_dir = tempfile.mkdtemp(prefix="pushlab-pki-")
    try:
        pki = make_lab_pki(Path(pki_dir))
        with server_target(spec.server) as target:
            return run_sync(_measure(spec, target, pki, run_id, progress))
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    table = run.extra.get("connections")
    if table is None:
        return []
    title = "Streams that stalled, per path and number opened at once"
    return [(title, stalled_summary(table))]


def _transport_of(client: str) -> str:
    """The registry transport a page client ("browser-sse") belongs to ("sse"), so its
    figures land in that transport's column of the matrix."""
    try:
        return by_browser_client(client.removeprefix("browser-")).key
    except ValueError:  # a client the registry no longer has (an older run): its own column
        return client


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    """Per transport: the share of streams that stalled at the largest n over HTTP/1.1
    (`tab_stalled`) and (`@fixed`) over HTTP/2 through a TLS front at its default stream
    limit (the `-maxN` paths lower it on purpose and are left out; so is caddy-h3, which
    is HTTP/3, so the figure keeps the meaning earlier runs gave it)."""
    table = run.extra.get("connections")
    if table is None or table.empty:
        return {}
    table = table.assign(path=table.get("path", DIRECT))
    out: dict[str, dict[str, float]] = {}
    for figure, paths in (("tab_stalled", [DIRECT]), ("tab_stalled" + FIXED, list(FRONT_PATHS))):
        rows = table[table["path"].isin(paths)]
        for client, group in rows.groupby("transport"):
            widest = group[group["n_open"] == group["n_open"].max()]
            entry = out.setdefault(_transport_of(str(client)), {})
            entry[figure] = float(widest["stalled"].mean())
            entry[count_of(figure)] = float(len(widest))
    return out


EXPERIMENT = Experiment(
    NAME,
    "Chromium: EventSource streams beyond 6 per origin stall over HTTP/1.1, not over HTTP/2 "
    "or HTTP/3 (until the server's stream limit); WebSockets and WebTransport never",
    Spec,
    quick,
    run,
    generic_charts=False,
    charts=(charts_net.connections_chart,),
    captions={"browser_connections.png": "Which streams got their first token in time"},
    figures={
        "tab_stalled": ("frac", "streams of one tab that waited for a connection, at the "
                        "largest n (browser-connections)"),
    },
    facts=facts,
    tables=tables,
    # in the default suite (quick: about 35 s); without Chromium, nginx or Caddy, `run` raises
    # EnvironmentUnavailable and the suite skips it with that reason
    in_suite=True,
)
