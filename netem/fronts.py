"""The paths production traffic takes to the server: who terminates TLS, and how.

    front      TLS ends in          the client speaks           the server behind it
    none       (no TLS)             HTTP/1.1 in clear text      aiohttp, direct
    aiohttp    the server itself    HTTP/1.1 over TLS           aiohttp (ssl context)
    nginx      nginx 1.22           HTTP/1.1 or HTTP/2 (ALPN)   aiohttp, HTTP/1.1 in clear
    caddy      Caddy 2.6            HTTP/1.1 or HTTP/2 (ALPN)   aiohttp, HTTP/1.1 in clear
                                    + HTTP/3 over QUIC (http3)

`serve(front)` starts the server and its front as child processes with one lab CA
(netem/pki.py) for all of them, yields a `ServedPath` (the address clients use, the CA file
they trust, the pids whose CPU the TLS work lands on), and stops every process by its own
pid. aiohttp speaks no HTTP/2, so HTTP/2 only ever comes from a front, as in production.
With `link` (a `NetnsLink`), the server and its front run inside the lab's namespace and
listen on its address, so the namespace's loss lies between the client and the front.

Behind nginx the server runs with `--no-accel-header` off (the header is sent) and nginx
with `proxy_buffering off`: the question here is TLS and HTTP/2, not buffering (which the
`proxy` experiment measures); Caddy flushes any response without a Content-Length at once.
With `http3=True` Caddy also serves HTTP/3 on UDP at the same port number (netem/caddy.py);
`ServedPath.http3` says so, and `pushlab serve --front caddy --http3` adds `h3=udp` to its
ready line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clients.net import Target
from clients.stack import Stack
from harness import procstat
from harness.children import ServerProcess
from netem.pki import LabPKI, make_lab_pki

if TYPE_CHECKING:
    from netem.netns import NetnsLink
    from transports.web.config import ServerConfig

FRONTS = ("none", "aiohttp", "nginx", "caddy")
HTTP2_FRONTS = ("nginx", "caddy")


@dataclasses.dataclass
class ServedPath:
    front: str
    target: Target
    ca_file: str  # "" in clear text
    server_pid: int
    front_pids: list[int]  # nginx's master and workers, Caddy's process; [] without a front
    pki: LabPKI | None
    http3: bool = False  # the front also serves HTTP/3 (QUIC on UDP, same port number)

    def stack(self, http: str = "1.1", multiplex: int = 1, cc: str = "reno") -> Stack:
        """The client stack for this path: TLS with its CA unless it is clear text."""
        if self.front == "none":
            return Stack()
        if http == "3" and not self.http3:
            raise ValueError(f"the {self.front} front here serves no HTTP/3 (serve(http3=True))")
        return Stack(http=http, tls=True, ca_file=self.ca_file, multiplex=multiplex, cc=cc)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the server and (summed) of the front's processes, from the
        scheduler's nanosecond clock (procstat.cpu_ns: short windows resolve)."""

        def cpu(pid: int) -> float:
            return (procstat.cpu_ns(pid) or 0) / 1e9

        return {"server": cpu(self.server_pid), "front": sum(map(cpu, self.front_pids))}


def label(front: str) -> str:
    """How a table names the path: "clear", "TLS in aiohttp", "TLS in nginx", ..."""
    return "clear" if front == "none" else f"TLS in {front}"


@contextlib.contextmanager
def serve(
    front: str,
    *,
    server_args: Sequence[str] = (),
    max_concurrent_streams: int | None = None,
    link: NetnsLink | None = None,
    http3: bool = False,
) -> Iterator[ServedPath]:
    """The server behind `front` (one of FRONTS), for the duration; every process stopped.
    `http3`: the front serves HTTP/3 too (Caddy only)."""
    if front not in FRONTS:
        raise ValueError(f"unknown front {front!r}, expected one of {', '.join(FRONTS)}")
    if http3 and front != "caddy":
        raise ValueError("HTTP/3 is served by the caddy front only here")
    host = link.server_host if link is not None else "127.0.0.1"
    prefix = ["ip", "netns", "exec", link.name] if link is not None else None
    with contextlib.ExitStack() as stack:
        pki = None
        if front != "none":
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pushlab-")))
            pki = make_lab_pki(directory / "pki")
        args = list(server_args)
        if front == "aiohttp":
            assert pki is not None
            args += ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
        server = ServerProcess(args, host=host, prefix=prefix)
        upstream = server.start()
        stack.callback(server.stop)
        target, front_pids = upstream, list[int]()
        if front in HTTP2_FRONTS:
            assert pki is not None
            target, front_pids = _start_front(stack, front, upstream, pki, max_concurrent_streams,
                                              prefix, http3)  # fmt: skip
        elif front == "aiohttp":
            target = dataclasses.replace(upstream, secure=True)
        yield ServedPath(front, target, str(pki.ca_cert) if pki else "", server.pid,
                         front_pids, pki, http3)  # fmt: skip


def _start_front(
    stack: contextlib.ExitStack,
    front: str,
    upstream: Target,
    pki: LabPKI,
    max_concurrent_streams: int | None,
    prefix: list[str] | None,
    http3: bool = False,
) -> tuple[Target, list[int]]:
    if front == "nginx":
        from netem.nginx import Nginx, NginxSpec

        spec = NginxSpec(buffering=False, tls=True, http2=True,
                         max_concurrent_streams=max_concurrent_streams)  # fmt: skip
        nginx = Nginx(spec, upstream.host, upstream.port, pki=pki, listen_host=upstream.host,
                      command_prefix=prefix or ())  # fmt: skip
        target = nginx.start()
        stack.callback(nginx.stop)
        return dataclasses.replace(target, secure=True), [nginx.pid, *nginx.worker_pids()]
    from netem.caddy import Caddy, CaddySpec

    if prefix is not None:
        raise ValueError("Caddy runs on loopback only here (no namespace support)")
    if max_concurrent_streams is not None:
        raise ValueError("Caddy 2.6 cannot set its HTTP/2 concurrent-stream limit (Go's 250)")
    caddy = Caddy(CaddySpec(http3=http3), upstream.host, upstream.port, pki=pki)
    target = caddy.start()
    stack.callback(caddy.stop)
    return dataclasses.replace(target, secure=True), [caddy.pid]


def serve_until_stopped(
    front: str, front_port: int, config: ServerConfig, *, http3: bool = False
) -> int:
    """`pushlab serve --front`: start the server, then the front, print one ready line
    (`pushlab serving on https://... ca=... front=...`, then ` h3=udp` when the front serves
    HTTP/3 on the same port number over UDP), wait for SIGINT/SIGTERM; stop both by their
    own pids. A failure is one line on stderr and exit 1."""
    import shlex
    import shutil
    import signal
    import sys
    import threading

    from harness.children import READY_PREFIX
    from netem import caddy, nginx
    from netem.caddy import Caddy, CaddySpec
    from netem.nginx import Nginx, NginxSpec
    from streams.errors import ChildStartError, EnvironmentUnavailable

    # the binary first: a missing one is one line, before any child has started
    binary, missing = {
        "nginx": (nginx.nginx_binary, nginx.NOT_INSTALLED),
        "caddy": (caddy.caddy_binary, caddy.NOT_INSTALLED),
    }[front]
    if binary() is None:
        print(f"pushlab serve: environment unavailable: {missing}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    pki_dir = Path(tempfile.mkdtemp(prefix="pushlab-pki-"))
    child = ServerProcess(config=config)
    proxy: Nginx | Caddy | None = None
    try:
        pki = make_lab_pki(pki_dir)
        child.start()
        host, port = child.target.host, child.target.port
        if front == "nginx":
            # streaming as an operator sets it up: buffering off, HTTP/1.1 to the upstream
            spec = NginxSpec(buffering=False, tls=True, http2=True)
            proxy = Nginx(spec, host, port, listen_port=front_port, pki=pki)
        else:
            proxy = Caddy(CaddySpec(http3=http3), host, port, listen_port=front_port, pki=pki)
        proxy.start()
        ca = shlex.quote(str(pki.ca_cert))
        h3 = " h3=udp" if http3 else ""
        print(f"{READY_PREFIX}{proxy.url} ca={ca} front={front}{h3}", flush=True)
        while not stop.wait(0.2):
            if child.proc is not None and child.proc.poll() is not None:
                raise ChildStartError(f"the server exited ({child.proc.returncode})")
            if proxy.proc is None or proxy.proc.poll() is not None:
                raise ChildStartError(f"{front} exited")
        return 0
    except EnvironmentUnavailable as exc:
        print(f"pushlab serve: environment unavailable: {exc.message}", file=sys.stderr)
        return 1
    except (ChildStartError, RuntimeError, OSError) as exc:
        if stop.is_set():  # Ctrl-C reaches the children too: one may have gone first
            return 0
        print(f"pushlab serve: {exc}", file=sys.stderr)
        return 1
    finally:
        if proxy is not None:
            proxy.stop()
        child.stop()
        shutil.rmtree(pki_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
