"""The demo page in real Chromium over TLS: HTTP/2 through real nginx and real Caddy in front
of the real server (a child process), and HTTP/1.1 with aiohttp terminating TLS itself.

Chromium trusts the lab certificate by its key hash (`BrowserSession(spki=...)`), and CDP
says per request which protocol ALPN settled on and which socket carried it. The pane check
is the one tests/test_browser.py makes over cleartext HTTP/1.1 (its `start` and
`pane_texts`): every pane shows the seeded answer, complete, and nothing errs. The
browser-connections experiment's HTTP/2 paths are checked here too (its HTTP/1.1 path in
tests/test_browser.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis.derived import stalled_summary
from clients.base import Target
from clients.browser import CHROMIUM, BrowserSession, browser_keys, connection_keys
from experiments import browser_connections
from harness.children import ServerProcess
from netem.caddy import Caddy, CaddySpec
from netem.nginx import Nginx, NginxSpec
from netem.pki import LabPKI, make_lab_pki, spki_sha256
from presentation import charts_net
from records import store
from records.schema import concat
from streams.errors import ParamError
from streams.generator import texts
from streams.params import GenParams
from tests.support import UNIT
from tests.test_browser import FAST, MS, Tab, pane_texts, start
from transports import registry

pytestmark = [
    pytest.mark.timeout(60 * UNIT),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]

FRONTS = ("nginx", "caddy")
# the transports the page runs a client of (the server may serve more, e.g. openai)
PAGE_TRANSPORTS = {t.key for t in registry.ordered() if t.browser_clients}
[UPGRADED] = [t.key for t in registry.ordered() if t.connection == "upgraded"]
CORPUS = "zh"  # multi-byte text: UTF-8 split across HTTP/2 DATA frames must survive


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return make_lab_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """The real server, plain HTTP: what both fronts proxy to."""
    child = ServerProcess()
    child.start()
    yield child
    child.stop()


@pytest.fixture(scope="module", params=FRONTS)
def front(
    request: pytest.FixtureRequest, server: ServerProcess, pki: LabPKI
) -> Iterator[Nginx | Caddy]:
    """nginx (unbuffered) or Caddy, each TLS + HTTP/2 with the lab certificate."""
    host, port = server.target.host, server.target.port
    proxy: Nginx | Caddy
    if request.param == "nginx":
        proxy = Nginx(NginxSpec(buffering=False, tls=True, http2=True), host, port, pki=pki)
    else:
        proxy = Caddy(CaddySpec(), host, port, pki=pki)
    proxy.start()
    yield proxy
    proxy.stop()


@contextlib.asynccontextmanager
async def tls_tab(url: str, spki: str) -> AsyncIterator[tuple[Tab, BrowserSession]]:
    """The demo page at `url` in a BrowserSession trusting `spki`, as test_browser's `tab`:
    console errors (collected from before the page loaded), page errors, failed requests
    and 4xx/5xx responses all land in `tab.problems`."""
    async with BrowserSession(Target.parse(url), spki=spki) as session:
        page, problems = session.page, session.console_errors
        assert page is not None

        def failed_response(response: Any) -> None:
            if response.status >= 400:
                problems.append(f"{response.url}: {response.status}")

        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"{r.url}: {r.failure}"))
        page.on("response", failed_response)
        await page.set_viewport_size({"width": 1440, "height": 1000})
        await page.wait_for_function("document.body.dataset.state === 'ready'", timeout=5 * MS)
        yield Tab(page, problems), session


async def every_pane_completes(tab: Tab) -> None:
    """test_browser's pane test, over whatever the tab speaks."""
    params = {**FAST, "text": CORPUS}
    await start(tab, params)
    expected = "".join(texts(GenParams(**params)))  # type: ignore[arg-type]
    panes = await pane_texts(tab)
    assert list(panes) == [*browser_keys(), "fake"]
    for key, (text, status) in panes.items():
        assert text == expected, key
        assert status.startswith(f"✓ {FAST['tokens']}/{FAST['tokens']} tokens"), (key, status)
    assert tab.problems == []  # no console error, no failed or 4xx/5xx request


def transport_requests(session: BrowserSession) -> dict[str, set[str]]:
    """Per transport key (an HTTP request's path's first segment; a WebSocket's is the
    upgraded transport, at /ws), the protocols CDP saw its requests use."""
    seen: dict[str, set[str]] = {}
    for req in session.ledger.requests.values():
        key = UPGRADED if req.websocket else req.path.strip("/").split("?")[0].split("/")[0]
        if key in registry.TRANSPORTS and req.protocol:
            seen.setdefault(key, set()).add(req.protocol)
    return seen


@pytest.mark.slow
async def test_every_pane_completes_over_http2_through_each_front(
    front: Nginx | Caddy, pki: LabPKI
) -> None:
    async with tls_tab(front.url, pki.spki_sha256()) as (tab, session):
        await every_pane_completes(tab)
        protocols = transport_requests(session)
        http = [r for r in session.ledger.requests.values()
                if not r.websocket and not r.webtransport and r.protocol]
        ws = [r for r in session.ledger.requests.values() if r.websocket]
    assert set(protocols) == PAGE_TRANSPORTS
    for key, seen in protocols.items():
        # neither nginx 1.22 nor Caddy 2.6 offers RFC 8441: the WebSocket gets its own
        # HTTP/1.1 connection (a 101), every HTTP request goes over h2
        assert seen == ({"http/1.1"} if key == UPGRADED else {"h2"}), (key, seen)
    assert ws and all(r.secure and r.connection_key.startswith("ws:") for r in ws)
    # the page, its scripts and every HTTP transport's requests share one h2 connection
    assert len(connection_keys(http)) == 1, connection_keys(http)
    assert all(r.secure and r.http_version == "2" for r in http)


@pytest.mark.slow
async def test_stream_records_say_http2_and_count_bytes(front: Nginx | Caddy, pki: LabPKI) -> None:
    params = GenParams(tokens=12, rate=100.0, ttft_ms=20.0, seed=4, text=CORPUS)
    async with BrowserSession(Target.parse(front.url), spki=pki.spki_sha256()) as session:
        records = await session.run("sse", params, 3)
        per_stream = {s: connection_keys(reqs) for s, reqs in session.requests.items()}
    payload = len("".join(texts(params)).encode())
    assert len(records) == 3 and all(r.error == "" for r in records)
    assert len({k for keys in per_stream.values() for k in keys}) == 1  # three streams, one conn
    for rec in records:
        [conn] = rec.conns
        assert (conn.http_version, conn.stack, conn.source) == ("2", "tls", "browser-cdp")
        # HTTP/2 frames of the stream: more than the payload (JSON, SSE framing, headers)
        assert conn.bytes_down > payload and conn.app_bytes_down > payload
        assert conn.bytes_up > 0


@pytest.mark.slow
async def test_every_pane_completes_over_http11_with_aiohttp_terminating_tls() -> None:
    child = ServerProcess(["--tls"])
    child.start()
    try:
        ca = child.ca_file
        assert ca is not None  # the server's chain sits next to the CA it made (netem/pki.py)
        spki = spki_sha256((ca.parent / "server.pem").read_bytes())
        async with tls_tab(child.url, spki) as (tab, session):
            await every_pane_completes(tab)
            protocols = transport_requests(session)
    finally:
        child.stop()
    assert set(protocols) == PAGE_TRANSPORTS
    assert all(seen == {"http/1.1"} for seen in protocols.values()), protocols


@pytest.mark.slow
def test_browser_connections_http2_holds_every_eventsource_up_to_the_stream_limit(
    server: ServerProcess, tmp_path: Path
) -> None:
    spec = browser_connections.Spec(
        ns=(6,),
        transports=("sse",),
        paths=("nginx-h2", "caddy-h2", "nginx-h2-max4"),
        server=server.url,
    )
    tables = browser_connections.run(spec, run_id="test")
    table = tables.extra["connections"].set_index(["path", "index"])
    # HTTP/2: six EventSources, six streams of one connection, none waits (over HTTP/1.1
    # the same six fill Chrome's pool: tests/test_browser.py)
    for path in ("nginx-h2", "caddy-h2"):
        assert not table.loc[path, "stalled"].any(), path
    # SETTINGS_MAX_CONCURRENT_STREAMS 4: Chrome queues the 5th and 6th on the same
    # connection (no second one) until two streams end
    assert list(table.loc["nginx-h2-max4", "stalled"]) == [False] * 4 + [True] * 2
    assert (table["connections_used"] == 1).all() and (table["http_version"] == "2").all()
    assert (tables.streams["error"] == "").all() and (tables.streams["lost"] == 0).all()
    # the streams table says so too: six streams on the one connection each used
    assert (tables.streams["streams_per_conn"] == 6).all()
    summary = stalled_summary(tables.extra["connections"])
    assert list(summary["path"]) == list(spec.paths)
    assert list(summary["stalled"]) == [0, 0, 2]
    store.save(tables, {"experiment": browser_connections.NAME, "run_id": "test"}, tmp_path)
    [png] = charts_net.connections_chart(tmp_path)
    assert png.stat().st_size > 10_000


def test_runs_stored_before_paths_read_as_http11(tmp_path: Path) -> None:
    """An older run's `connections` table (no path, no connections_used) still summarises
    and draws, as cleartext HTTP/1.1."""

    def row(n: int, i: int) -> dict[str, object]:
        ttft = 1300.0 if i >= 6 else 120.0
        return {"run_id": "old", "n_open": n, "index": i, "transport": "browser-sse",
                "stream_id": f"s{n}{i}", "ttft_ms": ttft, "deadline_ms": 700.0,
                "stalled": i >= 6}  # fmt: skip

    rows = [row(n, i) for n in (6, 8) for i in range(n)]
    old = pd.DataFrame(rows)
    summary = stalled_summary(old)
    assert list(summary["path"]) == ["http1.1", "http1.1"]
    assert list(summary["stalled"]) == [0, 2] and list(summary["connections_used"]) == [-1, -1]
    tables = dataclasses.replace(concat([]), extra={"connections": old})
    store.save(tables, {"experiment": browser_connections.NAME, "run_id": "old"}, tmp_path)
    [png] = charts_net.connections_chart(tmp_path)
    assert png.stat().st_size > 10_000
    with pytest.raises(ParamError, match="unknown path"):
        browser_connections.Spec(paths=("quic",))
