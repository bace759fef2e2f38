"""A lab cluster: N pushlab nodes sharing one stream log, nginx in front balancing them.

Theory of operation
-------------------
`Cluster(ClusterSpec(...)).start()` builds, in this order, and returns nginx's `Target`:

    clients --> nginx 127.0.0.1:F  --upstream pushlab_upstream-->  node0 H0:P0
                (root namespace)    (round robin, or sticky by      node1 H1:P1  ...
                                     stream id; a failed connect         |
                                     is retried on the next node)        v
                                                                    redis-server (log="redis")

- `netns=False`: every node is `pushlab serve` on 127.0.0.1, each on its own port (the
  kernel's, `--port 0`, read back from its ready line).
- `netns=True`: each node is a host of its own: one `NetnsLink` per node (netem/netns.py), the
  node run inside it (`ip netns exec`, which execs: the pid is the node's) and bound to the
  namespace's address 198.18.X.2. nginx and Redis stay in the root namespace; nginx reaches
  node K at its 198.18.X.2, node K reaches Redis at its link's root end 198.18.X.1, which
  Redis therefore binds besides loopback (protected mode off, netem/redis.py). A machine
  without namespaces raises `EnvironmentUnavailable` (capabilities() is the probe).
- `log="redis"`: one `RedisServer`, and each node gets `--log redis://HOST:PORT --node-id
  nodeK` (HOST as that node reaches it). `log="memory"`: no Redis and neither flag: every
  node has its own in-memory hub, the baseline where a killed node's streams are lost.

Node K is started with `[--log URL --node-id nodeK [--lease-ms N]] [server_args...]` after
`--host H --port P`; `--host`, `--port`, `--log` and `--node-id` are the cluster's to set,
so `server_args` naming them is a ParamError. `kill(node)` is the failure the experiments
study: SIGKILL to that node's own pid (no graceful stop, sockets reset by the kernel), then
wait until it is reaped. nginx keeps the node in its upstream list: the next request there
fails to connect, is retried on another node (`proxy_next_upstream`), and the dead one is
left alone for `fail_timeout_s` (netem/nginx.py, "Several upstreams"). `restart(node)`
starts it again on the same host and port, so nginx's list stays right.

`stop()` stops nginx, then the nodes, then Redis, then deletes the namespaces, each process
by its own pid; after it `pids()` of before are all gone (tests/test_cluster.py checks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from clients.base import Target
from harness import procstat
from harness.children import READY_PREFIX, SERVER_PY, ChildProcess, lab_network_flags
from netem.nginx import Nginx, NginxSpec
from netem.redis import RedisServer
from streams.errors import ParamError

if TYPE_CHECKING:  # netem.netns is imported when a cluster needs namespaces
    from netem.netns import NetnsLink

LOGS = ("memory", "redis")
MAX_NODES = 32  # each netns node claims one 198.18.X.0/30; 32 is far past what 2 cores run
_RESERVED_FLAGS = ("--host", "--port", "--log", "--node-id", "--lease-ms")
_KILL_WAIT_S = 5.0
_HTTP_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """What to build: `nodes` servers sharing `log` ("redis": one Redis; "memory": each its
    own hub), nginx balancing them (`sticky`: by stream id), each node in its own network
    namespace (`netns`) or all on loopback. `lease_ms` is passed as `--lease-ms` (the redis
    log's lease of a stream by a node); `fail_timeout_s` is how long nginx leaves a failed
    node alone (whole seconds)."""

    nodes: int = 2
    log: str = "redis"
    sticky: bool = False
    netns: bool = False
    server_args: tuple[str, ...] = ()
    lease_ms: int | None = None
    fail_timeout_s: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, int) or not 1 <= self.nodes <= MAX_NODES:
            raise ParamError(f"nodes must be 1-{MAX_NODES}, got {self.nodes!r}", param="nodes")
        if self.log not in LOGS:
            raise ParamError(f"log must be one of {', '.join(LOGS)}, got {self.log!r}", param="log")
        if self.lease_ms is not None:
            if self.log != "redis":
                raise ParamError("lease_ms is the redis log's: set log='redis'", param="lease_ms")
            if not isinstance(self.lease_ms, int) or self.lease_ms < 1:
                raise ParamError(f"lease_ms must be >= 1, got {self.lease_ms!r}", param="lease_ms")
        if not isinstance(self.fail_timeout_s, int) or self.fail_timeout_s < 1:
            raise ParamError(
                f"fail_timeout_s must be whole seconds >= 1, got {self.fail_timeout_s!r}",
                param="fail_timeout_s",
            )
        if isinstance(self.server_args, str):
            raise ParamError("server_args must be a tuple of flags, not one string",
                             param="server_args")  # fmt: skip
        for arg in self.server_args:
            flag = str(arg).split("=", 1)[0]
            if flag in _RESERVED_FLAGS:
                raise ParamError(f"server_args may not set {flag}: the cluster sets it per node",
                                 param="server_args")  # fmt: skip


@dataclasses.dataclass
class Node:
    """One pushlab server of the cluster. `host`/`port` stay fixed across restarts (nginx's
    upstream list names them); `process` is None once killed or stopped."""

    name: str
    index: int
    host: str
    port: int = 0
    process: ChildProcess | None = None
    link: NetnsLink | None = None
    log_url: str = ""  # the --log URL it was given ("" for log="memory")

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else -1

    @property
    def target(self) -> Target:
        return Target(self.host, self.port)

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def address(self) -> str:
        """`HOST:PORT` as nginx's upstream list names it."""
        return self.target.authority

    @property
    def alive(self) -> bool:
        return self.process is not None and procstat.alive(self.pid)


class Cluster:
    """Redis (log="redis"), the nodes and nginx, as child processes; see the module doc."""

    def __init__(self, spec: ClusterSpec | None = None) -> None:
        self.spec = spec if spec is not None else ClusterSpec()
        self.nodes: list[Node] = []
        self.redis: RedisServer | None = None
        self.nginx: Nginx | None = None
        self.target = Target()
        self._links: list[NetnsLink] = []
        self._stack = contextlib.ExitStack()

    # -- start --------------------------------------------------------------------------

    def start(self) -> Target:
        """Start everything; the front's target (clients connect there). On any failure,
        whatever was started is stopped again before the error propagates."""
        if self.nginx is not None:
            raise RuntimeError("the cluster already runs")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.target

    def _start(self) -> None:
        spec = self.spec
        names = [f"node{k}" for k in range(spec.nodes)]
        if spec.netns:
            from netem.netns import NetnsLink

            for _ in names:  # NetnsUnavailable (an EnvironmentUnavailable) if it cannot
                link = NetnsLink()
                self._links.append(link)
                self._stack.callback(link.close)
            pairs = enumerate(zip(names, self._links, strict=True))
            self.nodes = [Node(n, k, link.server_host, link=link) for k, (n, link) in pairs]
        else:
            self.nodes = [Node(n, k, "127.0.0.1") for k, n in enumerate(names)]
        if spec.log == "redis":
            bind = [link.client_host for link in self._links]
            self.redis = RedisServer(bind=bind)
            self._stack.callback(self.redis.stop)
            self.redis.start()
            for node in self.nodes:
                node.log_url = self.redis.url_for(node.link.client_host if node.link else
                                                  self.redis.host)  # fmt: skip
        # the nodes start at once: most of a start is Python importing, on both cores
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for future in [pool.submit(self._start_node, node) for node in self.nodes]:
                future.result()
        nginx_spec = NginxSpec(
            buffering=False,  # streams pass through as they come (the app also sends the header)
            upstreams=tuple(node.address for node in self.nodes),
            sticky=spec.sticky,
            fail_timeout_s=spec.fail_timeout_s,
        )
        first = self.nodes[0]
        self.nginx = Nginx(nginx_spec, first.host, first.port)
        self._stack.callback(self.nginx.stop)
        self.target = self.nginx.start()

    def node_argv(self, node: Node, port: int) -> list[str]:
        """`server.py` (= `pushlab serve`) and the flags node `node` runs with."""
        argv = [str(SERVER_PY), "--host", node.host, "--port", str(port)]
        if self.spec.log == "redis":
            argv += ["--log", node.log_url, "--node-id", node.name]
            if self.spec.lease_ms is not None:
                argv += ["--lease-ms", str(self.spec.lease_ms)]
        argv += self.spec.server_args
        return [*argv, *lab_network_flags(node.host, argv)]

    def _start_node(self, node: Node) -> None:
        prefix = ["ip", "netns", "exec", node.link.name] if node.link is not None else None
        process = ChildProcess(self.node_argv(node, node.port), READY_PREFIX, prefix=prefix)
        node.process = process  # stop() finds it even if the start fails half-way
        target = process.start()
        node.port = target.port

    # -- faults ---------------------------------------------------------------------------

    def node(self, which: str | int | Node) -> Node:
        """A node by name ("node1"), index, or itself; ParamError if there is none."""
        if isinstance(which, Node):
            return which
        for node in self.nodes:
            if which in (node.name, node.index):
                return node
        names = ", ".join(n.name for n in self.nodes)
        raise ParamError(f"no node {which!r} in this cluster ({names})", param="node")

    def kill(self, which: str | int | Node) -> Node:
        """SIGKILL the node by its own pid and wait until it is reaped (gone)."""
        node = self.node(which)
        process, node.process = node.process, None
        if process is None or process.proc is None:
            raise ParamError(f"{node.name} is not running", param="node")
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        try:
            process.proc.wait(timeout=_KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # pragma: no cover  (SIGKILL cannot be caught)
            raise RuntimeError(f"{node.name} (pid {process.pid}) survived SIGKILL") from None
        process.stop()  # reaped already: closes its pipe and log
        return node

    def restart(self, which: str | int | Node) -> Node:
        """Start a killed (or stopped) node again on its host and port."""
        node = self.node(which)
        if node.process is not None:
            raise ParamError(f"{node.name} is running: kill it first", param="node")
        self._start_node(node)
        return node

    # -- observe --------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """Every process of the cluster now: nodes, nginx's master and workers, Redis."""
        pids = [node.pid for node in self.nodes if node.process is not None]
        if self.nginx is not None and self.nginx.proc is not None:
            pids += [self.nginx.pid, *self.nginx.worker_pids()]
        if self.redis is not None and self.redis.proc is not None:
            pids.append(self.redis.pid)
        return pids

    def stats(self) -> dict[str, dict[str, Any]]:
        """GET /stats of each living node, straight (not through nginx), by node name."""
        found = {}
        for node in self.nodes:
            if node.alive:
                found[node.name] = _get_json(node.host, node.port, "/stats")
        return found

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """nginx, then the nodes, then Redis, then the namespaces; each process by its pid."""
        nginx, self.nginx = self.nginx, None
        if nginx is not None:
            nginx.stop()
        for node in self.nodes:
            process, node.process = node.process, None
            if process is not None:
                process.stop()
        self._stack.close()  # Redis, the links (in reverse order of start)
        self.redis = None
        self._links = []

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


def _get_json(host: str, port: int, path: str) -> dict[str, Any]:
    """GET `path` from `host`:`port` as JSON (http.client: no proxy from the environment)."""
    conn = http.client.HTTPConnection(host, port, timeout=_HTTP_TIMEOUT_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path} on {host}:{port}: HTTP {response.status}")
    data: dict[str, Any] = json.loads(body)
    return data
