"""TLS and HTTP/2 on the server side: aiohttp terminating TLS itself (`--tls`), and real nginx
and real Caddy terminating TLS with HTTP/2 in front of the real server (a child process),
each with the lab CA of netem/pki.py.

The client is curl (built with nghttp2): `-w %{http_version}` says what ALPN settled on, and
`-N` hands each received line on at once, so the arrival time of each line is measured here.
WebSocket goes through the `websockets` library over a TLS connection offering only
`http/1.1` in ALPN, as a browser's WebSocket connection does when the server offers no
RFC 8441. Missing nginx or Caddy is a failure with a clear message, never a skip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

import netem.caddy as caddy_mod
import netem.nginx as nginx_mod
from clients.base import Target
from experiments.cli import main as pushlab_main
from harness.children import READY_PREFIX, ChildProcess, ServerProcess, parse_ready
from harness.procstat import alive as pid_alive
from harness.procstat import children as child_pids
from netem.caddy import (
    GO_MAX_CONCURRENT_STREAMS,
    NOT_INSTALLED,
    Caddy,
    CaddySpec,
    caddy_binary,
    render_caddyfile,
)
from netem.nginx import Nginx, NginxSpec, render_config
from netem.pki import LabPKI, make_lab_pki
from server import main as server_main
from streams.errors import EnvironmentUnavailable
from tests.support import UNIT, wait_until
from transports.web.config import ServerConfig, build_parser, parse_config

pytestmark = pytest.mark.timeout(UNIT * 60)

FRONTS = ("nginx", "caddy")
# 5 tokens 0.1 s apart, no prefill: the last is due 0.4 s after the first
STREAM_QUERY = "tokens=5&rate=10&ttft_ms=0"
STREAMING_SPREAD_S = 0.25  # first token line at least this long before the last: streamed


@dataclasses.dataclass(frozen=True)
class Curl:
    returncode: int
    http_version: str  # "2", "1.1"; "0" when no response
    headers: dict[str, str]  # names lower-cased
    lines: list[tuple[float, str]]  # (seconds since start, non-empty body line)
    stderr: str

    def token_times_s(self) -> list[float]:
        return [t for t, line in self.lines if line.startswith("data: {")]

    def data(self) -> list[str]:
        return [line.removeprefix("data: ") for _, line in self.lines if line.startswith("data:")]


def curl(url: str, *flags: str, ca: Path | None = None) -> Curl:
    """GET `url` with curl; each body line timed as curl hands it on (-N: no buffering)."""
    argv = ["curl", "-sS", "-N", "-D", "-", "--max-time", str(10 * UNIT),
            "-w", "%{stderr}http_version=%{http_version}\n", *flags]  # fmt: skip
    if ca is not None:
        argv += ["--cacert", str(ca)]
    t0 = time.monotonic()
    proc = subprocess.Popen([*argv, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stamped = [(time.monotonic() - t0, raw.decode().rstrip("\r\n")) for raw in proc.stdout]
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=10 * UNIT)
    headers: dict[str, str] = {}
    lines: list[tuple[float, str]] = []
    in_headers = True
    for t, line in stamped:
        if in_headers:
            if not line:
                in_headers = False
            elif ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        elif line:
            lines.append((t, line))
    version = next((w.split("=", 1)[1] for w in stderr.split() if w.startswith("http_version=")),
                   "0")  # fmt: skip
    return Curl(proc.returncode, version, headers, lines, stderr)


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


def make_front(name: str, server: ServerProcess, pki: LabPKI) -> Nginx | Caddy:
    host, port = server.target.host, server.target.port
    if name == "nginx":
        return Nginx(NginxSpec(buffering=False, tls=True, http2=True), host, port, pki=pki)
    return Caddy(CaddySpec(), host, port, pki=pki)


@pytest.fixture(scope="module", params=FRONTS)
def front(
    request: pytest.FixtureRequest, server: ServerProcess, pki: LabPKI
) -> Iterator[Nginx | Caddy]:
    """nginx or Caddy with TLS and HTTP/2 in front of the server, shared by the module."""
    proxy = make_front(request.param, server, pki)
    proxy.start()
    yield proxy
    proxy.stop()


# -- nginx's config --------------------------------------------------------------------------


def test_nginx_tls_http2_directives(tmp_path: Path, pki: LabPKI) -> None:
    spec = NginxSpec(tls=True, http2=True, max_concurrent_streams=64)
    conf = render_config(spec, listen_port=8443, upstream=("127.0.0.1", 9000), prefix=tmp_path,
                         pki=pki)  # fmt: skip
    for line in (
        "listen 127.0.0.1:8443 ssl http2;",
        f"ssl_certificate {pki.cert.resolve()};",
        f"ssl_certificate_key {pki.key.resolve()};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "http2_max_concurrent_streams 64;",
        "proxy_http_version 1.1;",  # the upstream stays HTTP/1.1
    ):
        assert line in conf, line
    for variable in ("$bytes_sent", "$ssl_protocol", "$ssl_cipher", "$server_protocol",
                     "$connection ", "$connection_requests"):  # fmt: skip
        assert variable in conf, variable
    assert "http2 on" not in conf  # nginx 1.25+ syntax, refused by 1.22


def test_nginx_tls_without_http2_and_plain_listeners(tmp_path: Path, pki: LabPKI) -> None:
    tls = render_config(NginxSpec(tls=True), listen_port=1, upstream=("127.0.0.1", 2),
                        prefix=tmp_path, pki=pki)  # fmt: skip
    plain = render_config(NginxSpec(), listen_port=1, upstream=("127.0.0.1", 2), prefix=tmp_path)
    assert "listen 127.0.0.1:1 ssl;" in tls and "ssl http2" not in tls
    assert "listen 127.0.0.1:1;" in plain
    assert "ssl_certificate" not in plain and "http2_max_concurrent_streams" not in plain


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"http2": True}, "http2 needs tls"),
        ({"tls": True, "max_concurrent_streams": 8}, "set http2 too"),
        ({"tls": True, "http2": True, "max_concurrent_streams": 0}, "must be >= 1"),
    ],
)
def test_nginx_spec_refuses(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        NginxSpec(**kwargs)  # type: ignore[arg-type]


def test_nginx_tls_needs_the_pki(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pki"):
        render_config(NginxSpec(tls=True), listen_port=1, upstream=("127.0.0.1", 2),
                      prefix=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="pki"):
        Nginx(NginxSpec(tls=True), "127.0.0.1", 2)


# -- Caddy's config --------------------------------------------------------------------------


def test_caddyfile_directives(tmp_path: Path, pki: LabPKI) -> None:
    text = render_caddyfile(CaddySpec(), listen_port=8443, upstream=("127.0.0.1", 9000),
                            pki=pki, workdir=tmp_path)  # fmt: skip
    words = [shlex.split(line, comments=True) for line in text.splitlines()]
    for directive in (
        ["admin", "off"],
        ["auto_https", "off"],
        ["grace_period", "2s"],
        ["protocols", "h1", "h2"],
        ["https://:8443", "{"],
        ["bind", "127.0.0.1"],
        ["tls", str(pki.cert.resolve()), str(pki.key.resolve())],
        ["header", "X-Pushlab-Proxy", "caddy"],
        ["output", "file", str(tmp_path.resolve() / "access.log")],
        ["format", "json"],
        ["reverse_proxy", "127.0.0.1:9000", "{"],
        ["flush_interval", "-1"],
    ):
        assert directive in words, directive
    assert not any(w and w[0] == "encode" for w in words)  # nothing compressed
    h1_only = render_caddyfile(CaddySpec(http2=False, flush_immediately=False), listen_port=1,
                               upstream=("127.0.0.1", 2), pki=pki, workdir=tmp_path)  # fmt: skip
    assert "protocols h1 #" in h1_only and "flush_interval -1" not in h1_only
    assert GO_MAX_CONCURRENT_STREAMS == 250  # not settable in Caddy 2.6 (see netem/caddy.py)


def test_caddy_adapts_the_caddyfile_as_meant(tmp_path: Path, pki: LabPKI) -> None:
    """Caddy's own adapter reads the file: no admin, no automatic HTTPS, h1+h2 only (no h3),
    one loopback listener, flush_interval -1 (-1 ns in JSON)."""
    binary = caddy_binary()
    assert binary is not None, NOT_INSTALLED
    conf = tmp_path / "Caddyfile"
    conf.write_text(render_caddyfile(CaddySpec(), listen_port=8443, upstream=("127.0.0.1", 9000),
                                     pki=pki, workdir=tmp_path))  # fmt: skip
    out = subprocess.run([binary, "adapt", "--config", str(conf), "--adapter", "caddyfile"],
                         capture_output=True, text=True, timeout=10 * UNIT, check=True,
                         env={**os.environ, "HOME": str(tmp_path)})  # fmt: skip
    assert "not formatted" not in out.stderr  # what `caddy fmt` would write
    config = json.loads(out.stdout)
    assert config["admin"]["disabled"] is True
    (srv,) = config["apps"]["http"]["servers"].values()
    assert srv["listen"] == ["127.0.0.1:8443"]
    assert srv["protocols"] == ["h1", "h2"]
    assert srv["automatic_https"]["disable"] is True
    assert '"flush_interval":-1' in out.stdout.replace(" ", "")
    assert '"encode"' not in out.stdout


# -- the server's own TLS --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--tls-cert", "a.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "a.key"], "--tls-cert and --tls-key go together"),
        (["--tls", "--tls-cert", "a", "--tls-key", "b"], "not both"),
    ],
)
def test_tls_flags_that_do_not_go_together(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ServerConfig(**vars(build_parser().parse_args(argv))).problem()
    with pytest.raises(SystemExit) as info:
        server_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_tls_flags_round_trip() -> None:
    config = ServerConfig(tls_cert="/x/server.pem", tls_key="/x/server.key")
    assert parse_config(config.to_argv()) == config and config.https
    assert not config.problem()
    assert parse_config(["--tls"]).https and not ServerConfig().https


def test_unreadable_tls_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "none.pem")
    assert server_main(["--tls-cert", missing, "--tls-key", missing]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pushlab serve: cannot use --tls-cert")


def test_ready_line_parsing() -> None:
    assert parse_ready("http://127.0.0.1:8000") == ("http", Target("127.0.0.1", 8000), {})
    scheme, target, fields = parse_ready("https://127.0.0.1:8443 ca=/tmp/a/ca.pem front=nginx")
    assert (scheme, target.host, target.port) == ("https", "127.0.0.1", 8443)
    assert fields == {"ca": "/tmp/a/ca.pem", "front": "nginx"}
    assert parse_ready("https://[::1]:9 ca='/tmp/a b/ca.pem'")[2] == {"ca": "/tmp/a b/ca.pem"}


def test_server_tls_alone() -> None:
    """`--tls`: HTTPS with a lab CA, HTTP/1.1 only (an h2 offer settles on http/1.1); a client
    without the CA fails verification; the CA directory goes with the server."""
    child = ServerProcess(["--tls"])
    child.start()
    try:
        ca = child.ca_file
        assert child.scheme == "https" and ca is not None and ca.is_file()
        assert child.url == f"https://127.0.0.1:{child.target.port}"
        got = curl(f"{child.url}/sse?{STREAM_QUERY}", "--http2", ca=ca)
        refused = curl(f"{child.url}/healthz")
    finally:
        child.stop()
    assert got.returncode == 0 and got.http_version == "1.1"
    assert len(got.token_times_s()) == 5 and got.data()[-1] == "[DONE]"
    assert refused.returncode == 60, refused.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert "certificate" in refused.stderr
    assert not ca.parent.exists()


def test_plain_server_ready_line_is_unchanged(server: ServerProcess) -> None:
    # the one field a plain server adds: its WebTransport endpoint's UDP port (the HTTP
    # port's number, when fixed)
    assert server.scheme == "http" and server.ca_file is None
    assert set(server.ready_fields) == {"wt"} and server.ready_fields["wt"].isdigit()


# -- nginx and Caddy with TLS and HTTP/2 -----------------------------------------------------


def test_front_serves_http2_and_streams(front: Nginx | Caddy, pki: LabPKI) -> None:
    name = "nginx" if isinstance(front, Nginx) else "caddy"
    got = curl(f"{front.url}/sse?{STREAM_QUERY}", "--http2", ca=pki.ca_cert)
    assert got.returncode == 0, got.stderr
    assert got.http_version == "2"
    assert got.headers["x-pushlab-proxy"] == name
    assert got.headers["content-type"].startswith("text/event-stream")
    assert [json.loads(d)["seq"] for d in got.data()[:-1]] == [1, 2, 3, 4, 5]
    assert got.data()[-1] == "[DONE]"
    times = got.token_times_s()
    assert times[-1] - times[0] >= STREAMING_SPREAD_S  # each token as it came, not one burst


def test_front_speaks_http11_on_the_same_listener(front: Nginx | Caddy, pki: LabPKI) -> None:
    got = curl(f"{front.url}/ndjson?{STREAM_QUERY}", "--http1.1", ca=pki.ca_cert)
    assert got.returncode == 0, got.stderr
    assert got.http_version == "1.1"
    assert "x-pushlab-proxy" in got.headers
    seqs = [json.loads(line)["seq"] for _, line in got.lines if '"seq"' in line]
    assert seqs[:5] == [1, 2, 3, 4, 5]
    times = [t for t, line in got.lines if '"seq"' in line][:5]
    assert times[-1] - times[0] >= STREAMING_SPREAD_S


def test_front_refuses_a_client_without_the_ca(front: Nginx | Caddy) -> None:
    got = curl(f"{front.url}/healthz", "--http2")
    assert got.returncode == 60, got.stderr


def test_front_offers_h2_and_http11_in_alpn(front: Nginx | Caddy, pki: LabPKI) -> None:
    def negotiated(offer: list[str]) -> str | None:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.set_alpn_protocols(offer)
        with (
            socket.create_connection((front.target.host, front.target.port), 5 * UNIT) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            return tls.selected_alpn_protocol()

    assert negotiated(["h2", "http/1.1"]) == "h2"
    assert negotiated(["http/1.1"]) == "http/1.1"  # a browser's WebSocket connection


async def test_websocket_through_the_http2_listener(front: Nginx | Caddy, pki: LabPKI) -> None:
    """nginx 1.22 and Caddy 2.6 offer no RFC 8441, so a browser opens /ws on its own TLS
    connection offering http/1.1 only: the upgrade works there."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.set_alpn_protocols(["http/1.1"])
    uri = f"wss://{front.target.authority}/ws"
    async with websockets.connect(uri, ssl=ctx, open_timeout=5 * UNIT) as ws:
        tls = ws.transport.get_extra_info("ssl_object")
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert ws.response is not None and "X-Pushlab-Proxy" in ws.response.headers
        await ws.send(json.dumps({"type": "start", "tokens": 3, "rate": 100, "ttft_ms": 0}))
        messages = [json.loads(await ws.recv()) for _ in range(5)]
    assert [m["type"] for m in messages] == ["started", "token", "token", "token", "done"]


def test_front_access_log_says_protocol_and_tls(front: Nginx | Caddy, pki: LabPKI) -> None:
    got = curl(f"{front.url}/healthz?log-check", "--http2", ca=pki.ca_cert)
    assert got.returncode == 0
    wait_until(lambda: "log-check" in front.access_log(), what="the request in the access log")
    if isinstance(front, Nginx):
        (line,) = [x for x in front.access_log().splitlines() if "log-check" in x]
        for word in ("protocol=HTTP/2.0", "ssl_protocol=TLSv1.3", "ssl_cipher=TLS_",
                     "connection_requests=1", "status=200"):  # fmt: skip
            assert word in line, (word, line)
        assert int(line.split("bytes_sent=")[1].split()[0]) > 0
    else:
        (record,) = [r for r in front.access_records() if "log-check" in r["request"]["uri"]]
        assert record["request"]["proto"] == "HTTP/2.0"
        assert record["request"]["tls"]["version"] == 0x0304  # TLS 1.3
        assert record["request"]["tls"]["proto"] == "h2"
        assert record["request"]["tls"]["cipher_suite"] > 0
        assert record["size"] > 0 and record["status"] == 200


def test_caddy_keeps_its_state_in_its_own_directory(server: ServerProcess, pki: LabPKI) -> None:
    """HOME and the XDG directories point into the work directory: the autosaved config is
    there, and stop() removes it with the process gone."""
    proxy = make_front("caddy", server, pki)
    assert isinstance(proxy, Caddy)
    with proxy:
        workdir, pid = proxy.dir, proxy.pid
        assert workdir is not None
        assert (workdir / "config" / "caddy" / "autosave.json").is_file()
    assert not pid_alive(pid) and not workdir.exists()
    assert "shutdown complete" in proxy.log()


# -- missing binaries ------------------------------------------------------------------------


def test_missing_caddy_is_environment_unavailable(
    monkeypatch: pytest.MonkeyPatch, pki: LabPKI
) -> None:
    monkeypatch.setattr(caddy_mod, "caddy_binary", lambda: None)
    with pytest.raises(EnvironmentUnavailable, match="caddy is not installed"):
        Caddy(CaddySpec(), "127.0.0.1", 1, pki=pki).start()


@pytest.mark.parametrize("name", FRONTS)
def test_serve_front_with_a_missing_binary_is_one_line(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(caddy_mod, "caddy_binary", lambda: None)
    monkeypatch.setattr(nginx_mod, "nginx_binary", lambda: None)
    assert pushlab_main(["serve", "--front", name]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"pushlab serve: environment unavailable: {name} is not installed")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--front", "apache"], "invalid choice: 'apache'"),
        (["--front", "nginx", "--tls"], "--front terminates TLS itself"),
        (["--front", "caddy", "--port", "9"], "give --front-port"),
        (["--front-port", "9"], "--front-port needs --front"),
        (["--front", "caddy", "--front-port", "x"], "argument --front-port"),
    ],
)
def test_serve_front_bad_input_exits_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        pushlab_main(["serve", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


# -- pushlab serve --front, end to end -------------------------------------------------------


@pytest.mark.slow  # 3-4 s: importing the CLI alone takes 1.6 s here
@pytest.mark.parametrize("name", FRONTS)
def test_pushlab_serve_front_end_to_end(name: str) -> None:
    """`pushlab serve --front NAME` as a process: one ready line with the front's https URL
    and the CA, HTTP/2 through it, and after SIGTERM neither child nor the CA is left."""
    cli = ChildProcess(["-m", "experiments.cli", "serve", "--front", name], READY_PREFIX)
    cli.start()
    try:
        assert cli.scheme == "https" and cli.ready_fields["front"] == name
        ca = cli.ca_file
        assert ca is not None and ca.is_file()
        kids = child_pids(cli.pid)
        assert len(kids) == 2  # the server and the front (nginx's master)
        grandkids = [pid for kid in kids for pid in child_pids(kid)]  # nginx's worker
        got = curl(f"{cli.url}/sse?tokens=3&rate=50&ttft_ms=0", "--http2", ca=ca)
    finally:
        rest = cli.stop()
    assert got.returncode == 0 and got.http_version == "2", got.stderr
    assert got.headers["x-pushlab-proxy"] == name
    assert got.data()[-1] == "[DONE]"
    assert cli.proc is not None and cli.proc.returncode == 0, cli.log()
    assert not any(pid_alive(pid) for pid in [*kids, *grandkids])
    assert not ca.parent.exists()
    assert rest == ""  # one ready line, nothing else on stdout


def test_pushlab_serve_help_names_the_front(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        pushlab_main(["serve", "--front", "caddy", "--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    assert "--front nginx|caddy" in shown and "--tls-cert" in shown
