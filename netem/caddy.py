"""A real Caddy in front of the server: the other reverse proxy a deployment puts on its edge,
terminating TLS with HTTP/2 as browsers meet it.

Shaped like netem/nginx.py: `render_caddyfile` is pure (a `CaddySpec`, the addresses and the
lab PKI in, a complete Caddyfile out, every path under one work directory, loopback only);
`Caddy` is the glue: it writes that file to a temporary directory, runs
`caddy run --config Caddyfile --adapter caddyfile` as a child process, waits until it says it
serves and its port accepts, and stops it by its own pid (SIGTERM, then SIGKILL).

What the Caddyfile sets, and why (Caddy 2.6.2, Debian's package; source read at the v2.6.2
tag of github.com/caddyserver/caddy):
- `admin off`: no admin endpoint, so no fixed port (Caddy's default is localhost:2019).
- `auto_https off`: the certificate is ours (`tls CERT KEY`); Caddy never asks an ACME CA
  and never starts its HTTP->HTTPS redirect server on :80.
- `servers { protocols h1 h2 }`: HTTP/3 off (Caddy 2.6 enables h3 by default, on UDP)
  unless `CaddySpec(http3=True)`. h2 is offered in ALPN before http/1.1, so a client
  offering only http/1.1 (a browser's WebSocket connection: Go's HTTP/2 server in 2.6 has no
  RFC 8441 extended CONNECT) still gets it on the same listener.
- `protocols h1 h2 h3` (`http3=True`): Caddy also listens for QUIC (quic-go) on UDP at the
  same address and port number ("enabling HTTP/3 listener" in its log), and announces it
  with `Alt-Svc: h3=":PORT"` on its TCP responses. So the port picked must be free for TCP
  AND UDP (`free_port_pair`). MEASURED on 2.6.2 with clients/quic.py (aioquic 1.7.2):
  - SNI: with SNI "localhost" the QUIC handshake completes (ALPN h3). With the IP literal
    127.0.0.1 aioquic sends NO SNI (RFC 6066 3 forbids literals) and the handshake completes
    too, against `https://:PORT` and against `https://localhost:PORT, https://127.0.0.1:PORT`
    alike, so the site keeps its one catch-all address (naming it by host name changed
    nothing measurable and would add Host matchers). An EMPTY SNI extension (aioquic with
    server_name "") is refused at once: CONNECTION_CLOSE 0x10a, CRYPTO_ERROR for TLS alert
    10 (unexpected_message). The reported "alert 80 without SNI" was not reproduced. The
    clients send "localhost" (QuicSettings, Stack.server_name), which the lab PKI covers.
  - streaming: SSE tokens=5 at 10/s over h3 arrived as five DATA frames 0.10 s apart (the
    first with the response head), i.e. Caddy flushes each upstream read to the QUIC
    stream at once, as over h1/h2 (tests/test_h3.py checks it token by token for SSE and
    chunked NDJSON).
  - the access log says `"proto":"HTTP/3.0"` for those, but its `tls` block is EMPTY over
    h3 (`version` 0, `cipher_suite` 0, `proto` "", `server_name` "" although "localhost"
    was sent): Caddy 2.6.2 does not fill it from quic-go's connection state, so the TLS
    facts of an HTTP/3 request come from the client (clients/quic.py), not from this log.
- `reverse_proxy ... { flush_interval -1 }`: write each upstream read to the client at once.
  MEASURED on 2.6.2 (tokens=10 at 20/s over HTTP/1.1 and TLS, without this line): SSE and
  chunked NDJSON both streamed, token by token. Caddy's `flushInterval()` returns -1 itself
  for `text/event-stream` AND for any response without Content-Length (`res.ContentLength ==
  -1`, modules/caddyhttp/reverseproxy/streaming.go), so every chunked stream is flushed at
  once; the directive makes that explicit and also covers a response that carries a
  Content-Length (one-shot JSON, which is flushed at its end anyway).
- no `encode`: Caddy compresses nothing unless told to, so the bytes are the app's.
- `header X-Pushlab-Proxy caddy`: set on the response before the proxy runs, so every
  response carries it and a client can prove Caddy is in the path.
- `log { output file access.log; format json }`: one JSON object per request, written when
  the request ends: `request.proto` ("HTTP/2.0"), `request.tls.version` (772 = TLS 1.3, 771 =
  TLS 1.2: Go's tls.VersionTLS13/12), `request.tls.cipher_suite` (4865 =
  TLS_AES_128_GCM_SHA256), `request.tls.proto` (the ALPN result), `size` (response BODY
  bytes written: headers not included, unlike nginx's $bytes_sent), `duration` (s), `status`.
- `grace_period 2s`: on SIGTERM Caddy waits for open connections, forever by default (the
  http app's GracePeriod 0); open streams must not hold a stop, as with nginx's
  worker_shutdown_timeout.
- HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS is NOT settable in Caddy 2.6 (no Caddyfile or JSON
  option; the `servers` options are listener_wrappers, timeouts, keepalive_interval,
  max_header_size, log_credentials, protocols, strict_sni_host, metrics): Go's bundled
  HTTP/2 server then announces its default, 250 (GO_MAX_CONCURRENT_STREAMS).

Caddy keeps state in $XDG_DATA_HOME/caddy (certificate storage, locks) and autosaves the
config to $XDG_CONFIG_HOME/caddy/autosave.json: HOME, XDG_DATA_HOME and XDG_CONFIG_HOME point
into the work directory, so nothing is written to the user's home and stop() removes it all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from clients.base import Target
from harness.children import stop_process
from netem.nginx import free_loopback_port
from netem.pki import LabPKI
from streams.errors import EnvironmentUnavailable

NOT_INSTALLED = "caddy is not installed: run `make system` (installs Debian's caddy)"
GRACE_PERIOD_S = 2.0  # grace_period: how long open connections may hold a stop
GO_MAX_CONCURRENT_STREAMS = 250  # Go's HTTP/2 server default (x/net/http2 defaultMaxStreams)
READY_MESSAGE = "serving initial configuration"  # logged once every listener is bound
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = GRACE_PERIOD_S + 3.0
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class CaddySpec:
    """How Caddy serves; what pushlab measures by default is TLS with HTTP/2 and flushing."""

    http2: bool = True  # servers { protocols h1 h2 }; False: h1 only
    http3: bool = False  # protocols h1 h2 h3: QUIC on UDP, same port number (needs http2)
    flush_immediately: bool = True  # reverse_proxy { flush_interval -1 }

    def __post_init__(self) -> None:
        if self.http3 and not self.http2:
            raise ValueError("http3 needs http2 here (protocols h1 h2 h3)")


def caddy_binary() -> str | None:
    """caddy on PATH, else Debian's /usr/bin/caddy, else None."""
    found = shutil.which("caddy")
    if found:
        return found
    return "/usr/bin/caddy" if os.access("/usr/bin/caddy", os.X_OK) else None


def _quote(path: Path) -> str:
    """A Caddyfile token: double-quoted (a path may hold spaces)."""
    text = str(path)
    if '"' in text or "\n" in text:
        raise ValueError(f"path not usable in a Caddyfile: {text!r}")
    return f'"{text}"'


def render_caddyfile(
    spec: CaddySpec,
    *,
    listen_port: int,
    upstream: tuple[str, int],
    pki: LabPKI,
    workdir: Path,
) -> str:
    """A complete Caddyfile: TLS with the lab certificate on 127.0.0.1:`listen_port`, proxying
    to `upstream` over HTTP/1.1, its access log in `workdir`."""
    w = workdir.resolve()
    host, port = upstream
    upstream_addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    protocols = ("h1 h2 h3" if spec.http3 else "h1 h2") if spec.http2 else "h1"
    h3_note = "h3: QUIC on UDP, same port" if spec.http3 else "no h3: HTTP/3 is off"
    flush = "flush_interval -1 # write each upstream read at once" if spec.flush_immediately else (
        "# flush_interval unset: Caddy still flushes SSE and chunked responses at once"
    )  # fmt: skip
    return f"""\
# pushlab: Caddy in front of the server, rendered by netem/caddy.py ({spec})
{{
	admin off # no admin endpoint (its default is localhost:2019, a fixed port)
	auto_https off # our certificate: no ACME, no redirect server on :80
	grace_period {GRACE_PERIOD_S:g}s # open connections hold a SIGTERM stop this long at most
	servers {{
		protocols {protocols} # {h3_note}
	}}
}}

# the site: any host name on this port (no SNI or Host matcher: curl sends no SNI for an IP)
https://:{listen_port} {{
	bind 127.0.0.1 # loopback only
	tls {_quote(pki.cert.resolve())} {_quote(pki.key.resolve())} # chain (leaf, then lab CA), key
	header X-Pushlab-Proxy caddy # on every response: proves Caddy is in the path
	log {{
		output file {_quote(w / "access.log")}
		format json
	}}
	# no encode directive: nothing is compressed
	reverse_proxy {upstream_addr} {{
		{flush}
	}}
}}
"""


class Caddy:
    """Caddy as a child process serving TLS on 127.0.0.1:`listen_port`, proxying to the
    upstream (the pushlab server, plain HTTP/1.1)."""

    def __init__(
        self,
        spec: CaddySpec,
        upstream_host: str,
        upstream_port: int,
        *,
        pki: LabPKI,
        listen_port: int = 0,
        workdir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.upstream = (upstream_host, upstream_port)
        self.pki = pki
        self.listen_port = listen_port
        self.workdir = workdir
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = Target()
        self._final_logs: dict[str, str] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def url(self) -> str:
        return f"https://{self.target.authority}"

    def start(self) -> Target:
        """Start Caddy; return once it says it serves and its port accepts."""
        binary = caddy_binary()
        if binary is None:
            raise EnvironmentUnavailable(NOT_INSTALLED)
        self.dir = Path(tempfile.mkdtemp(prefix="pushlab-caddy-", dir=self.workdir))
        self._final_logs = {}
        attempts = 1 if self.listen_port else _PORT_ATTEMPTS
        error = ""
        for _ in range(attempts):
            free = free_port_pair if self.spec.http3 else free_loopback_port
            port = self.listen_port or free()
            conf = self.dir / "Caddyfile"
            text = render_caddyfile(
                self.spec, listen_port=port, upstream=self.upstream, pki=self.pki, workdir=self.dir
            )
            conf.write_text(text)
            error = self._launch(binary, conf, port)
            if not error:
                self.target = Target("127.0.0.1", port)
                return self.target
            if "address already in use" not in error:
                break
        self.stop()
        raise RuntimeError(f"caddy did not start: {error}")

    def _launch(self, binary: str, conf: Path, port: int) -> str:
        """Start Caddy and wait until it serves; '' on success, else what went wrong."""
        assert self.dir is not None
        home = self.dir
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
        }
        log = self.dir / "caddy.log"
        log.write_bytes(b"")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd=self.dir,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc.wait()
                self.proc = None
                return self._read("caddy.log").strip()[-500:] or "caddy exited"
            # Caddy logs READY_MESSAGE after it bound every listener; the port then is ours
            if READY_MESSAGE in self._read("caddy.log") and _accepts(port):
                return ""
            time.sleep(0.02)
        return f"caddy did not listen on 127.0.0.1:{port} within {_START_TIMEOUT_S} s"

    def stop(self) -> None:
        """SIGTERM (graceful, bounded by grace_period), then SIGKILL, to our Caddy; remove
        its work directory (the logs stay readable)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, _STOP_TIMEOUT_S, (signal.SIGTERM,))
        if self.dir is not None:
            self._final_logs = {name: self._read(name) for name in ("access.log", "caddy.log")}
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _read(self, name: str) -> str:
        if self.dir is None:
            return self._final_logs.get(name, "")
        with contextlib.suppress(FileNotFoundError):
            return (self.dir / name).read_text(errors="replace")
        return ""

    def access_log(self) -> str:
        """The JSON access log so far, one object a line (kept after stop())."""
        return self._read("access.log")

    def access_records(self) -> list[dict[str, Any]]:
        """The access log's complete lines, parsed."""
        records = []
        for line in self.access_log().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def log(self) -> str:
        """Caddy's own log (stderr: start, TLS, shutdown), kept after stop()."""
        return self._read("caddy.log")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port_pair(attempts: int = 20) -> int:
    """A port free on 127.0.0.1 for TCP and UDP both (Caddy's h3 listener takes the TCP
    port's number on UDP); free now, as `free_loopback_port` says."""
    for _ in range(attempts):
        port = free_loopback_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP on 127.0.0.1 in {attempts} tries")


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
