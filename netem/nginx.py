"""A real nginx in front of the server: the reverse proxy most deployments put in the path.

`render_config` is pure: an `NginxSpec` and the addresses in, a complete self-contained
nginx.conf out (every path under one prefix directory, loopback only, `daemon off`), so the
directives can be read and tested without running anything. `Nginx` is the glue: it writes
that file to a temporary prefix, checks it with `nginx -t`, runs nginx as a child process,
and stops it by its own pid (SIGQUIT, then SIGTERM, then SIGKILL). Workers exit with their
master; `worker_pids()` lets a test check that none outlives it.

Modes (`MODES`) and the server flag each is measured with (`server_args_for`):

    mode              nginx                          server flag        measured (nginx 1.22)
    buffered          proxy_buffering on             --no-accel-header  streams (see below)
    unbuffered        proxy_buffering off            --no-accel-header  streams
    accel-header      proxy_buffering on             (none)             streams: the header
                                                                        turns buffering off
    gzip              proxy_buffering off, gzip on   (none)             streams, compressed
    buffered-http1.0  proxy_buffering on, HTTP/1.0   --no-accel-header  held: bursts per full
                      to the upstream (nginx 1.22's                     buffer, rest at the end
                      default proxy_http_version)
    http1.0-accel-    proxy_buffering on, HTTP/1.0   (none)             streams: the app's
    header            to the upstream                                   header alone fixes
                                                                        nginx's defaults

`buffered-http1.0` is nginx 1.22's defaults for these directives; `buffered` (the directive
`proxy_http_version 1.1`) and `http1.0-accel-header` (the app's `X-Accel-Buffering: no`) are
each fix alone. `directives(mode)` names what a mode sets, for tables.

"buffered" and "accel-header" share one NginxSpec: they differ only in whether the server
sends `X-Accel-Buffering: no`. "unbuffered" runs without the header so that the directive
alone is measured. "gzip" keeps the header: the question there is gzip's effect, and with
buffering off the header changes nothing.

What tests/test_nginx.py measured (tokens=10 at 20/s, first-to-last token spread 0.45 s
when streamed):
- proxy_buffering on does NOT hold a chunked HTTP/1.1 stream: nginx's buffered reader hands
  each complete chunk on (the proxy's chunked filter asks for "the minimal amount of data" it
  needs, and a partly filled buffer holding that much is passed on). The late burst needs an
  HTTP/1.0 upstream (no chunks: data waits until a buffer, one memory page by default, is full
  or the upstream closes) or gzip (next point).
- gzip with buffering off adds no delay (nginx marks each unbuffered read as a flush, and the
  gzip filter then sync-flushes). gzip with buffering on holds the whole response, headers
  included, until the end: buffered reads carry no flush. X-Accel-Buffering: no fixes both.
- proxy_read_timeout cuts a stream silent for that long: the client has had 200 and some
  body, then the connection closes without the final chunk; the access log says 200. Before
  any response byte (a long poll) it is a 504. Heartbeats shorter than it keep a stream alive.

TLS and HTTP/2 (`NginxSpec(tls=True, http2=True)`, given a `LabPKI`): nginx terminates TLS
1.2/1.3 with the lab certificate and offers `h2, http/1.1` in ALPN on one listener; the
upstream stays HTTP/1.1 (the app speaks nothing else). nginx 1.22 does not implement RFC 8441
(WebSocket over HTTP/2: no SETTINGS_ENABLE_CONNECT_PROTOCOL), so a browser opens a separate
HTTP/1.1 TLS connection for /ws: a client offering only `http/1.1` in ALPN gets it on the
same listener (tests/test_fronts.py checks that, and the upgrade through it). HTTP/2 needs
TLS here: browsers speak HTTP/2 only over TLS (h2c, cleartext HTTP/2, is curl's and gRPC's).

Several upstreams (`NginxSpec(upstreams=("H:P", ...))`, netem/cluster.py): one `upstream`
block lists them all with `max_fails=1 fail_timeout=` and `proxy_next_upstream error timeout
http_502 http_503`, so a request whose node was killed is retried on the next one before any
byte reached the client (a stream already flowing is cut; the client resumes). Round robin by
default; `sticky=True` hashes the stream id the request names (`?stream=`, `Last-Event-ID`,
`/longpoll/ID`; `_STICKY_MAPS` says why `$arg_stream` alone is not enough). Every response
then says which member answered in `X-Pushlab-Upstream`.

nginx directive names are cited at the line, as in https://nginx.org/en/docs/ (core module,
ngx_http_proxy_module, ngx_http_gzip_module, ngx_http_headers_module, ngx_http_log_module,
ngx_http_upstream_module, ngx_http_ssl_module, ngx_http_v2_module).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from clients.base import Target
from harness.children import stop_process
from harness.procstat import alive as pid_alive
from harness.procstat import children as child_pids
from netem.pki import LabPKI
from streams.errors import EnvironmentUnavailable

NOT_INSTALLED = "nginx is not installed: run `make system` (installs Debian's nginx)"
GZIP_TYPES = ("text/event-stream", "application/x-ndjson", "application/json")
SHUTDOWN_TIMEOUT_S = 2.0  # worker_shutdown_timeout: open streams do not hold a graceful stop
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class NginxSpec:
    """How nginx treats the responses it proxies; nginx's defaults except `upstream_http`."""

    buffering: bool = True  # proxy_buffering
    gzip: bool = False  # gzip on for GZIP_TYPES
    read_timeout_s: float = 60.0  # proxy_read_timeout and proxy_send_timeout
    upstream_http: str = "1.1"  # proxy_http_version "1.0" or "1.1" (nginx 1.22 defaults to 1.0)
    buffer_size_kb: int | None = None  # proxy_buffer_size and proxy_buffers 8 x this
    ignore_accel_header: bool = False  # proxy_ignore_headers X-Accel-Buffering
    tls: bool = False  # listen ... ssl, with the lab certificate
    http2: bool = False  # listen ... http2 (needs tls)
    max_concurrent_streams: int | None = None  # http2_max_concurrent_streams; None: nginx's 128
    # a load-balanced pool ("HOST:PORT" each, netem/cluster.py): when set, it replaces the one
    # upstream given to render_config/Nginx, and a request that fails to reach a server is
    # passed to the next (proxy_next_upstream); see "Several upstreams" in the docstring
    upstreams: tuple[str, ...] = ()
    sticky: bool = False  # hash $pushlab_stream consistent: a stream's requests on one server
    fail_timeout_s: int = 10  # server ... max_fails=1 fail_timeout=: out of the pool this long

    def __post_init__(self) -> None:
        if self.sticky and not self.upstreams:
            raise ValueError("sticky needs upstreams: a pool to choose a server from")
        # nginx parses fail_timeout in whole seconds ("500ms" is an invalid parameter)
        if not (isinstance(self.fail_timeout_s, int) and self.fail_timeout_s >= 1):
            raise ValueError(
                f"fail_timeout_s must be whole seconds >= 1, got {self.fail_timeout_s}"
            )
        if self.http2 and not self.tls:
            raise ValueError("http2 needs tls: browsers speak HTTP/2 only over TLS")
        if self.max_concurrent_streams is not None:
            if not self.http2:
                raise ValueError("max_concurrent_streams is an HTTP/2 setting: set http2 too")
            if self.max_concurrent_streams < 1:
                raise ValueError(
                    f"max_concurrent_streams must be >= 1, got {self.max_concurrent_streams}"
                )
        if self.upstream_http not in ("1.0", "1.1"):
            raise ValueError(f"upstream_http must be '1.0' or '1.1', got {self.upstream_http!r}")
        if not self.read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be > 0, got {self.read_timeout_s}")
        if self.buffer_size_kb is not None and self.buffer_size_kb < 1:
            raise ValueError(f"buffer_size_kb must be >= 1, got {self.buffer_size_kb}")


MODES: dict[str, NginxSpec] = {
    "buffered": NginxSpec(buffering=True),
    "unbuffered": NginxSpec(buffering=False),
    "accel-header": NginxSpec(buffering=True),
    "gzip": NginxSpec(buffering=False, gzip=True),
    "buffered-http1.0": NginxSpec(buffering=True, upstream_http="1.0"),
    "http1.0-accel-header": NginxSpec(buffering=True, upstream_http="1.0"),
}

_SERVER_ARGS: dict[str, list[str]] = {
    "buffered": ["--no-accel-header"],
    "unbuffered": ["--no-accel-header"],
    "accel-header": [],
    "gzip": [],
    "buffered-http1.0": ["--no-accel-header"],
    "http1.0-accel-header": [],
}


def server_args_for(mode: str) -> list[str]:
    """The server flags a mode is measured with (see the module docstring)."""
    if mode not in _SERVER_ARGS:
        raise ValueError(f"unknown nginx mode {mode!r}, expected one of {sorted(MODES)}")
    return list(_SERVER_ARGS[mode])


def directives(mode: str) -> str:
    """What a mode sets, in nginx's words and the app's: e.g. "proxy_http_version 1.0;
    proxy_buffering on; app sends no X-Accel-Buffering" (read from MODES and the server flags,
    so a table of modes cannot drift from what ran)."""
    if mode == "direct":
        return "no nginx"
    spec = MODES[mode]
    parts = [
        f"proxy_http_version {spec.upstream_http}",
        f"proxy_buffering {'on' if spec.buffering else 'off'}",
    ]
    if spec.gzip:
        parts.append("gzip on")
    if spec.buffer_size_kb is not None:
        parts.append(f"proxy_buffers 8 {spec.buffer_size_kb}k")
    if spec.ignore_accel_header:
        parts.append("proxy_ignore_headers X-Accel-Buffering")
    header = "--no-accel-header" not in server_args_for(mode)
    app = "app sends X-Accel-Buffering: no" if header else "app sends no X-Accel-Buffering"
    return "; ".join(parts) + "; " + app


# Connections one worker may hold, each proxied stream two of them (client and upstream).
# nginx's default, 1,024, ended at ~500 streams: in the storm experiment 1,000 clients
# reconnecting through nginx at once were refused ("worker_connections are not enough"),
# retried, and took 4-10 s to recover instead of the lease's half second.
WORKER_CONNECTIONS = 16_384


def nginx_binary() -> str | None:
    """nginx on PATH, else Debian's /usr/sbin/nginx (not on a non-root PATH), else None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _duration(seconds: float) -> str:
    """An nginx time: whole seconds as `60s`, anything else in ms (`1500ms`)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _next_upstream(spec: NginxSpec) -> list[str]:
    """With a pool: which failures send a request on to the next server."""
    if not spec.upstreams:
        return []
    # proxy_next_upstream: error = could not connect/send/read the header (a killed node:
    # connection refused), timeout, or the node said 502/503 (503: its stream limit, or a
    # node shutting down). Only before any response byte went to the client: a stream cut
    # mid-body is not retried (the client resumes). POST is retried only when the request
    # was never sent, which is the killed-node case (nginx's non_idempotent rule).
    return ["proxy_next_upstream error timeout http_502 http_503;"]


def _proxy_directives(spec: NginxSpec) -> list[str]:
    """The `location /` body: how responses of the plain HTTP routes are passed on."""
    timeout = _duration(spec.read_timeout_s)
    lines = [
        "proxy_pass http://pushlab_upstream;",
        *_next_upstream(spec),
        # proxy_set_header Host: nginx sends the upstream block's name ("pushlab_upstream")
        # by default; the app serves only the host names it was told of (DNS rebinding), so
        # pass on the name the client asked for, as every production config does
        "proxy_set_header Host $http_host;",
        # proxy_http_version: 1.0 means no chunked encoding and one connection per request
        f"proxy_http_version {spec.upstream_http};",
    ]
    if spec.upstream_http == "1.1":
        # proxy_set_header: nginx sends "Connection: close" by default; clearing it lets the
        # upstream keepalive pool reuse connections (ngx_http_upstream_module, keepalive)
        lines.append('proxy_set_header Connection "";')
    lines += [
        # proxy_buffering: on = read the response into buffers, pass it on when they fill or
        # the response ends; off = pass each read on at once
        f"proxy_buffering {'on' if spec.buffering else 'off'};",
        # proxy_read_timeout: max silence between two reads from the upstream, then nginx
        # closes the connection (a stream that says nothing for this long is cut)
        f"proxy_read_timeout {timeout};",
        # proxy_send_timeout: max time between two writes of the request to the upstream
        f"proxy_send_timeout {timeout};",
    ]
    if spec.buffer_size_kb is not None:
        kb = spec.buffer_size_kb
        # proxy_buffer_size: the first part of the response (headers); also the most nginx
        # reads at a time when not buffering. proxy_buffers: number and size for the body.
        lines += [f"proxy_buffer_size {kb}k;", f"proxy_buffers 8 {kb}k;"]
    if spec.ignore_accel_header:
        # proxy_ignore_headers: the upstream's X-Accel-Buffering no longer overrides
        # proxy_buffering (what an operator does who wants the last word)
        lines.append("proxy_ignore_headers X-Accel-Buffering;")
    if spec.gzip:
        lines += [
            # gzip: compress responses of the gzip_types below when the client accepts gzip
            "gzip on;",
            f"gzip_types {' '.join(GZIP_TYPES)};",
            # gzip_proxied: nginx skips requests carrying "Via" (sent through another proxy)
            # unless told otherwise; "any" keeps results the same with a proxy in front
            "gzip_proxied any;",
            # gzip_min_length: decided from Content-Length only; streams have none and are
            # always compressed, 1 makes the short JSON answers (polls, oneshot) compressed
            # too, so every transport is measured under the same rule
            "gzip_min_length 1;",
        ]
    return lines


def _ws_directives(spec: NginxSpec) -> list[str]:
    """The `location /ws` body: the WebSocket upgrade (nginx.org/en/docs/http/websocket.html)."""
    timeout = _duration(spec.read_timeout_s)
    return [
        "proxy_pass http://pushlab_upstream;",
        *_next_upstream(spec),
        # proxy_set_header Host: nginx sends the upstream block's name ("pushlab_upstream")
        # by default; the app serves only the host names it was told of (DNS rebinding), so
        # pass on the name the client asked for, as every production config does
        "proxy_set_header Host $http_host;",
        # proxy_http_version: an Upgrade needs HTTP/1.1 to the upstream
        "proxy_http_version 1.1;",
        # proxy_set_header: hop-by-hop headers are not passed on; send them explicitly
        "proxy_set_header Upgrade $http_upgrade;",
        'proxy_set_header Connection "upgrade";',
        # proxy_read_timeout: an upgraded connection silent this long is closed too
        f"proxy_read_timeout {timeout};",
        f"proxy_send_timeout {timeout};",
    ]


def _listen_directives(
    spec: NginxSpec, listen_port: int, pki: LabPKI | None, host: str = "127.0.0.1"
) -> list[str]:
    """The `server` block's listener: plain HTTP/1.1, or TLS with or without HTTP/2. `host`
    is loopback, or the lab's own namespace address (netem/netns.py) when nginx runs there."""
    if not spec.tls:
        return [f"listen {host}:{listen_port};  # http: listen (loopback only)"]
    if pki is None:
        raise ValueError("a TLS listener needs the lab PKI's certificate and key (pki=...)")
    flags = "ssl http2" if spec.http2 else "ssl"
    # http2 in `listen` is nginx 1.22's syntax (the `http2 on;` directive is 1.25.1+): it puts
    # h2 before http/1.1 in the ALPN list; a client offering only http/1.1 still gets it
    lines = [
        f"listen {host}:{listen_port} {flags};  # http: listen (loopback only; ssl = TLS, "
        "http2 = h2 offered in ALPN)",
        f"ssl_certificate {pki.cert.resolve()};  # ngx_http_ssl_module: ssl_certificate "
        "(the chain sent: leaf, then the lab CA)",
        f"ssl_certificate_key {pki.key.resolve()};  # ngx_http_ssl_module: "
        "ssl_certificate_key (read by the master)",
        # RFC 8996 deprecates TLS 1.0 and 1.1; 1.2 and 1.3 are what browsers speak
        "ssl_protocols TLSv1.2 TLSv1.3;  # ngx_http_ssl_module: ssl_protocols",
    ]
    if spec.max_concurrent_streams is not None:
        # SETTINGS_MAX_CONCURRENT_STREAMS sent to the client (RFC 9113 section 6.5.2)
        lines.append(
            f"http2_max_concurrent_streams {spec.max_concurrent_streams};  # "
            "ngx_http_v2_module: http2_max_concurrent_streams (nginx's default: 128)"
        )
    return lines


def _addr(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The stream id a request names, wherever it names it, first match wins: `?stream=ID` (a
# poll's or a resumed stream's query), the `Last-Event-ID: ID:SEQ` header of a reconnecting
# EventSource (text before the last ':'), the URI `/longpoll/ID` or `/shortpoll/ID`; a
# request naming none (a new stream) hashes its own random $request_id, so new streams spread
# over the pool instead of all hashing "" to one node. `hash $arg_stream` alone would miss
# an EventSource's resume: the browser repeats the URL it first opened, without the id.
_STICKY_MAPS = r"""# sticky: $pushlab_stream is the stream id a request names (netem/nginx.py,
# _STICKY_MAPS); ngx_http_map_module: map (evaluated when used, first matching regex wins)
map $http_last_event_id $pushlab_resume_stream {
    "~^(?<pushlab_eid>.+):[^:]*$" $pushlab_eid;
    default "";
}
map $uri $pushlab_poll_stream {
    "~^/(?:longpoll|shortpoll)/(?<pushlab_pid>[^/]+)$" $pushlab_pid;
    default "";
}
map $pushlab_poll_stream $pushlab_stream_or_new {
    "" $request_id;
    default $pushlab_poll_stream;
}
map $pushlab_resume_stream $pushlab_stream_unasked {
    "" $pushlab_stream_or_new;
    default $pushlab_resume_stream;
}
map $arg_stream $pushlab_stream {
    "" $pushlab_stream_unasked;
    default $arg_stream;
}
"""


def _upstream_block(spec: NginxSpec, upstream: tuple[str, int]) -> list[str]:
    """The `upstream pushlab_upstream` body: one server, or the pool of `spec.upstreams`."""
    if not spec.upstreams:
        return [f"server {_addr(*upstream)};  # ngx_http_upstream_module: server"]
    fail = f"{spec.fail_timeout_s}s"
    lines = []
    if spec.sticky:
        # hash ... consistent: ketama, so a node that leaves moves only its own streams
        # (must come before keepalive, which wraps the balancer)
        lines.append("hash $pushlab_stream consistent;  # ngx_http_upstream_module: hash")
    # max_fails=1 fail_timeout=T: one failed attempt takes the server out of the pool for T
    # (then one request probes it again); a killed node costs one retried connect, not one
    # per request
    lines += [f"server {addr} max_fails=1 fail_timeout={fail};" for addr in spec.upstreams]
    return lines


def render_config(
    spec: NginxSpec,
    *,
    listen_port: int,
    upstream: tuple[str, int],
    prefix: Path,
    pki: LabPKI | None = None,
    listen_host: str = "127.0.0.1",
) -> str:
    """A complete nginx.conf: foreground, one worker, every file under `prefix`, loopback only.
    `pki` gives the certificate and key of a TLS listener (needed when `spec.tls`)."""
    p = prefix.resolve()

    def block(lines: list[str], indent: str) -> str:
        return "\n".join(f"{indent}{line}" if line else "" for line in lines)

    sticky = block(_STICKY_MAPS.splitlines(), " " * 4) + "\n" if spec.sticky else ""
    # add_header: which pool member answered ($upstream_addr: "A, B" when A failed first)
    served_by = "\n        add_header X-Pushlab-Upstream $upstream_addr always;" * bool(
        spec.upstreams
    )

    return f"""\
# pushlab: nginx in front of the server, rendered by netem/nginx.py ({spec})
daemon off;  # core: daemon (stay the child process that started it)
master_process on;  # core: master_process (a master and its workers, as in production)
worker_processes 1;  # core: worker_processes
# core: worker_rlimit_nofile; a proxied stream holds two descriptors (client and upstream)
worker_rlimit_nofile {2 * WORKER_CONNECTIONS + 1024};
worker_shutdown_timeout {_duration(SHUTDOWN_TIMEOUT_S)};  # core: open streams end a stop
pid {p}/nginx.pid;  # core: pid
error_log {p}/error.log info;  # core: error_log

events {{
    worker_connections {WORKER_CONNECTIONS};  # events: worker_connections
}}

http {{
    # ngx_http_log_module: log_format, access_log (times in seconds, ms resolution)
    # bytes_sent: what nginx sent for the request, headers included, counted before TLS
    # (record overhead is not in it); ssl_*: "-" on a plain listener; server_protocol:
    # HTTP/1.1 or HTTP/2.0; connection, connection_requests: which requests shared a
    # connection (the streams of one HTTP/2 connection share its number)
    log_format pushlab 'request="$request" status=$status bytes_sent=$bytes_sent '
                       'request_time_s=$request_time '
                       'upstream_response_time_s=$upstream_response_time '
                       'upstream_status=$upstream_status '
                       'ssl_protocol=$ssl_protocol ssl_cipher=$ssl_cipher '
                       'protocol=$server_protocol connection=$connection '
                       'connection_requests=$connection_requests';
    access_log {p}/access.log pushlab;

    # *_temp_path: where request bodies and responses too big for memory go
    client_body_temp_path {p}/client_body_temp;
    proxy_temp_path {p}/proxy_temp;
    fastcgi_temp_path {p}/fastcgi_temp;
    uwsgi_temp_path {p}/uwsgi_temp;
    scgi_temp_path {p}/scgi_temp;

    default_type application/octet-stream;  # http: default_type

{sticky}    upstream pushlab_upstream {{
{block(_upstream_block(spec, upstream), " " * 8)}
        keepalive 8;  # ngx_http_upstream_module: keepalive (idle connections kept per worker)
    }}

    server {{
{block(_listen_directives(spec, listen_port, pki, listen_host), " " * 8)}
        server_name localhost;
        # add_header ... always: on every response, errors included, so a client can prove
        # that nginx is in the path (ngx_http_headers_module)
        add_header X-Pushlab-Proxy nginx always;{served_by}

        location /ws {{
{block(_ws_directives(spec), " " * 12)}
        }}

        location / {{
{block(_proxy_directives(spec), " " * 12)}
        }}
    }}
}}
"""


def free_loopback_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now; someone may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Nginx:
    """nginx as a child process proxying 127.0.0.1:`listen_port` to the upstream."""

    def __init__(
        self,
        spec: NginxSpec,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_port: int = 0,
        workdir: Path | None = None,
        pki: LabPKI | None = None,
        listen_host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        """`listen_host` and `command_prefix` (e.g. `ip netns exec NS`) run nginx inside one
        of the lab's network namespaces, listening on its address there."""
        if spec.tls and pki is None:
            raise ValueError("NginxSpec(tls=True) needs pki=: the certificate and key to serve")
        self.spec = spec
        self.pki = pki
        self.upstream = (upstream_host, upstream_port)
        self.listen_port = listen_port
        self.listen_host = listen_host
        self.command_prefix = list(command_prefix)
        self.workdir = workdir
        self.prefix: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = Target()
        self._final_logs: dict[str, str] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def url(self) -> str:
        """`https://127.0.0.1:PORT` with TLS on, else `http://...` (`target.url`)."""
        scheme = "https" if self.spec.tls else "http"
        return f"{scheme}://{self.target.authority}"

    def start(self) -> Target:
        """Check the config with `nginx -t`, start nginx, return once its port accepts."""
        binary = nginx_binary()
        if binary is None:
            raise EnvironmentUnavailable(NOT_INSTALLED)
        self.prefix = Path(tempfile.mkdtemp(prefix="pushlab-nginx-", dir=self.workdir))
        # nginx run by root switches its workers to an unprivileged user: they must be able to
        # enter the prefix to reach the temp dirs (which the master chowns to them)
        self.prefix.chmod(0o711)
        self._final_logs = {}
        attempts = 1 if self.listen_port else _PORT_ATTEMPTS
        error = ""
        for _ in range(attempts):
            port = self.listen_port or free_loopback_port()
            conf = self._write_config(port)
            self._check_config(binary, conf)
            error = self._launch(binary, conf, port)
            if not error:
                self.target = Target(self.listen_host, port)
                return self.target
            if "Address already in use" not in error:
                break
        self.stop()
        raise RuntimeError(f"nginx did not start: {error}")

    def _write_config(self, port: int) -> Path:
        assert self.prefix is not None
        conf = self.prefix / "nginx.conf"
        text = render_config(
            self.spec,
            listen_port=port,
            upstream=self.upstream,
            prefix=self.prefix,
            pki=self.pki,
            listen_host=self.listen_host,
        )
        conf.write_text(text)
        return conf

    def _command(self, binary: str, conf: Path, *extra: str) -> list[str]:
        assert self.prefix is not None
        # -e: the error log before the config is read (Debian's default is stderr)
        return [
            *self.command_prefix,  # `ip netns exec NS` execs nginx: the pid stays nginx's
            binary,
            *extra,
            "-p",
            f"{self.prefix}/",
            "-e",
            str(self.prefix / "error.log"),
            "-c",
            str(conf),
        ]

    def _check_config(self, binary: str, conf: Path) -> None:
        check = subprocess.run(
            self._command(binary, conf, "-t", "-q"),
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S,
            check=False,
        )
        if check.returncode != 0:
            message = (check.stderr or check.stdout).strip()
            self.stop()
            raise RuntimeError(f"nginx rejected its config {conf}: {message}")

    def _launch(self, binary: str, conf: Path, port: int) -> str:
        """Start nginx and wait until it listens; '' on success, else what went wrong."""
        assert self.prefix is not None
        with open(self.prefix / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(
                self._command(binary, conf), stdin=subprocess.DEVNULL, stderr=stderr
            )
        pid_file = self.prefix / "nginx.pid"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                pid_file.unlink(missing_ok=True)
                return self._read("stderr.log").strip()[-500:] or "nginx exited"
            # nginx writes its pid file after it bound its listening socket: once it names
            # our child, the port is ours, not someone else's who raced us to it
            if _read_pid(pid_file) == self.proc.pid and _accepts(self.listen_host, port):
                return ""
            time.sleep(0.02)
        where = f"{self.listen_host}:{port}"
        return f"nginx did not listen on {where} within {_START_TIMEOUT_S} s"

    def worker_pids(self) -> list[int]:
        """The master's live children (its workers); [] once it is gone."""
        if self.proc is None:
            return []
        return child_pids(self.proc.pid)

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGTERM, then SIGKILL, to our master; remove the prefix."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            workers = child_pids(proc.pid)
            stop_process(proc, _STOP_TIMEOUT_S, (signal.SIGQUIT, signal.SIGTERM))
            # a master that had to be SIGKILLed could not stop its workers: they are ours too
            for pid in filter(pid_alive, workers):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.prefix is not None:
            self._final_logs = {name: self._read(name) for name in ("access.log", "error.log")}
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def _read(self, name: str) -> str:
        if self.prefix is None:
            return self._final_logs.get(name, "")
        with contextlib.suppress(FileNotFoundError):
            return (self.prefix / name).read_text(errors="replace")
        return ""

    def access_log(self) -> str:
        """The access log so far (kept after stop())."""
        return self._read("access.log")

    def error_log(self) -> str:
        """The error log so far (kept after stop())."""
        return self._read("error.log")

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


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
