"""Caddy inside the lab's network namespace, so the namespace's loss lies between the client
and Caddy (TCP for HTTP/1.1 and HTTP/2, UDP for HTTP/3).

netem/caddy.py runs Caddy on 127.0.0.1 in the root namespace; netem/fronts.py therefore
refuses Caddy with a `link`. `NamespacedCaddy` is that `Caddy` with two differences: the
rendered Caddyfile's `bind 127.0.0.1` becomes the namespace's address (the upstream server's
host, which `ServerProcess(host=link.server_host)` listens on), and the process starts
through `ip netns exec NAME` (which execs Caddy after `setns`, so the pid stopped is Caddy's
own). Readiness is Caddy's ready line plus a TCP accept on that address from the root
namespace, across the veth. With `CaddySpec(http3=True)` Caddy's QUIC listener binds the
same address and port number on UDP (Caddy 2.6: `protocols h1 h2 h3`).

`caddy_in_namespace(link, http3=True)` is the whole path for an experiment: a lab PKI, the
server and Caddy in `link`'s namespace, yielding `netem.fronts.ServedPath` and the Caddy;
every process is stopped by its own pid and the PKI directory removed. (netem/fronts.py
could take this class for `serve("caddy", link=...)`; it is kept apart while that file is
being changed by another piece of work.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clients.net import Target
from harness.children import ServerProcess
from netem import caddy as base
from netem.caddy import Caddy, CaddySpec
from netem.fronts import ServedPath
from netem.nginx import free_loopback_port
from netem.pki import LabPKI, make_lab_pki
from streams.errors import EnvironmentUnavailable

if TYPE_CHECKING:
    from netem.netns import NetnsLink

_LOOPBACK_BIND = "bind 127.0.0.1 # loopback only"  # the line netem/caddy.py renders


class NamespacedCaddy(Caddy):
    """`Caddy` run with `prefix` (`ip netns exec NAME`), its site bound to `host`."""

    def __init__(self, spec: CaddySpec, upstream_host: str, upstream_port: int, *,
                 pki: LabPKI, host: str, prefix: Sequence[str]) -> None:  # fmt: skip
        super().__init__(spec, upstream_host, upstream_port, pki=pki)
        self.host = host
        self.prefix = list(prefix)

    def start(self) -> Target:
        binary = base.caddy_binary()
        if binary is None:
            raise EnvironmentUnavailable(base.NOT_INSTALLED)
        self.dir = Path(tempfile.mkdtemp(prefix="pushlab-caddy-"))
        self._final_logs = {}
        port = free_loopback_port()  # the namespace is the lab's own: free there as well
        text = base.render_caddyfile(self.spec, listen_port=port, upstream=self.upstream,
                                     pki=self.pki, workdir=self.dir)  # fmt: skip
        if _LOOPBACK_BIND not in text:
            self.stop()
            raise RuntimeError("netem/caddy.py's Caddyfile no longer binds 127.0.0.1 as expected")
        conf = self.dir / "Caddyfile"
        conf.write_text(text.replace(_LOOPBACK_BIND, f"bind {self.host} # the namespace's address"))
        env = {**os.environ, "HOME": str(self.dir), "XDG_DATA_HOME": str(self.dir / "data"),
               "XDG_CONFIG_HOME": str(self.dir / "config")}  # fmt: skip
        with open(self.dir / "caddy.log", "ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=self.dir,
            )  # fmt: skip
        deadline = time.monotonic() + base._START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = self.log().strip()[-500:] or "caddy exited"
                self.proc = None
                self.stop()
                raise RuntimeError(f"caddy did not start in the namespace: {said}")
            if base.READY_MESSAGE in self.log() and _accepts(self.host, port):
                self.target = Target(self.host, port)
                return self.target
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"caddy did not listen on {self.host}:{port} within "
                           f"{base._START_TIMEOUT_S:g} s")  # fmt: skip


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@contextlib.contextmanager
def caddy_in_namespace(link: NetnsLink, *, http3: bool = True,
                       server_args: Sequence[str] = ()
                       ) -> Iterator[tuple[ServedPath, NamespacedCaddy]]:  # fmt: skip
    """The server and Caddy (h1 h2, and h3 with `http3`) inside `link`'s namespace: the path
    and the Caddy (its log says which UDP buffer its QUIC listener got)."""
    prefix = ["ip", "netns", "exec", link.name]
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pushlab-")))
        pki = make_lab_pki(directory / "pki")
        server = ServerProcess(list(server_args), host=link.server_host, prefix=prefix)
        upstream = server.start()
        stack.callback(server.stop)
        caddy = NamespacedCaddy(CaddySpec(http3=http3), upstream.host, upstream.port, pki=pki,
                                host=link.server_host, prefix=prefix)  # fmt: skip
        target = caddy.start()
        stack.callback(caddy.stop)
        yield ServedPath("caddy", dataclasses.replace(target, secure=True), str(pki.ca_cert),
                         server.pid, [caddy.pid], pki, http3=http3), caddy  # fmt: skip
