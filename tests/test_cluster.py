"""A real lab cluster (netem/cluster.py): pushlab nodes behind a real nginx, a real Redis.

Clients speak plain HTTP/1.1 (http.client) to nginx on loopback; nodes run on loopback or,
in the netns variant, each in a namespace of its own. Every cluster test ends by proving that
none of its processes is left.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import procstat
from netem.cluster import Cluster, ClusterSpec, Node
from netem.nginx import NginxSpec, nginx_binary, render_config
from streams.errors import ParamError
from tests.support import UNIT, wait_until

pytestmark = pytest.mark.timeout(UNIT * 60)

STREAM = "/sse?tokens=3&rate=100&ttft_ms=0"


def _get(target_host: str, port: int, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(target_host, port, timeout=10 * UNIT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _complete_stream(cluster: Cluster, path: str = STREAM,
                     headers: dict[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """One SSE stream through the front, checked whole; the response headers."""
    status, got, body = _get(cluster.target.host, cluster.target.port, path, headers)
    assert status == 200, body[:300]
    assert got["X-Pushlab-Proxy"] == "nginx"
    assert body.count(b'data: {"stream"') == 3 or "Last-Event-ID" in (headers or {})
    assert body.rstrip().endswith(b"data: [DONE]")
    return got


@pytest.fixture
def cluster_of(request: pytest.FixtureRequest) -> Iterator[Any]:
    """`cluster_of(spec)` starts a cluster; at teardown it is stopped and checked empty."""
    started: list[tuple[Cluster, list[int]]] = []

    def start(spec: ClusterSpec) -> Cluster:
        cluster = Cluster(spec)
        cluster.start()
        started.append((cluster, cluster.pids()))
        return cluster

    yield start
    for cluster, pids in started:
        cluster.stop()
        assert cluster.pids() == []
        assert [pid for pid in pids if procstat.alive(pid)] == []


# -- spec and rendering (no process) ----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, "nodes must be 1-32, got 0"),
        ({"log": "kafka"}, "log must be one of memory, redis, got 'kafka'"),
        ({"log": "memory", "lease_ms": 500}, "lease_ms is the redis log's"),
        ({"lease_ms": 0}, "lease_ms must be >= 1, got 0"),
        ({"server_args": ("--port", "9")}, "server_args may not set --port"),
        ({"server_args": ("--node-id=x",)}, "server_args may not set --node-id"),
        ({"server_args": "--tls"}, "server_args must be a tuple of flags"),
        ({"fail_timeout_s": 0}, "fail_timeout_s must be whole seconds >= 1"),
    ],
)
def test_a_bad_spec_is_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError, match="^" + message.replace("(", r"\(")) as caught:
        ClusterSpec(**kwargs)
    assert "\n" not in caught.value.message


def test_node_flags_follow_the_log() -> None:
    node = Node("node1", 1, "127.0.0.1", log_url="redis://127.0.0.1:7")
    memory = Cluster(ClusterSpec(log="memory", server_args=("--retry-ms", "100")))
    argv = memory.node_argv(node, 0)
    assert argv[1:] == ["--host", "127.0.0.1", "--port", "0", "--retry-ms", "100"]
    redis = Cluster(ClusterSpec(log="redis", lease_ms=250))
    assert redis.node_argv(node, 8001)[1:] == [
        "--host", "127.0.0.1", "--port", "8001", "--log", "redis://127.0.0.1:7",
        "--node-id", "node1", "--lease-ms", "250",
    ]  # fmt: skip


@pytest.mark.parametrize("sticky", [False, True])
def test_nginx_accepts_the_pool_config(sticky: bool, tmp_path: Path) -> None:
    binary = nginx_binary()
    assert binary is not None
    spec = NginxSpec(buffering=False, upstreams=("127.0.0.1:1", "127.0.0.1:2"), sticky=sticky)
    conf = render_config(spec, listen_port=1, upstream=("127.0.0.1", 2), prefix=tmp_path)
    assert "server 127.0.0.1:2 max_fails=1 fail_timeout=10s;" in conf
    assert conf.count("proxy_next_upstream error timeout http_502 http_503;") == 2  # / and /ws
    assert ("hash $pushlab_stream consistent;" in conf) is sticky
    (tmp_path / "nginx.conf").write_text(conf)
    check = subprocess.run(
        [binary, "-t", "-p", f"{tmp_path}/", "-e", str(tmp_path / "e.log"), "-c",
         str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, timeout=UNIT * 10, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_sticky_needs_a_pool() -> None:
    with pytest.raises(ValueError, match="sticky needs upstreams"):
        NginxSpec(sticky=True)


# -- running clusters -------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_node_is_gone_and_nginx_retries_on_the_other(cluster_of: Any) -> None:
    cluster = cluster_of(ClusterSpec(nodes=2, log="memory"))
    assert cluster.redis is None
    addresses = {node.address for node in cluster.nodes}
    assert len(addresses) == 2
    served = {_complete_stream(cluster)["X-Pushlab-Upstream"] for _ in range(2)}
    assert served == addresses  # round robin: each node served one
    assert set(cluster.stats()) == {"node0", "node1"}

    pid = cluster.nodes[0].pid
    dead = cluster.kill("node0")
    assert not procstat.alive(pid)
    assert not dead.alive and dead.pid == -1
    assert set(cluster.stats()) == {"node1"}
    after = [_complete_stream(cluster)["X-Pushlab-Upstream"] for _ in range(3)]
    survivor = cluster.nodes[1].address
    assert {a.split(", ")[-1] for a in after} == {survivor}
    # at least one request met the dead node first and was passed on (proxy_next_upstream)
    assert f"{dead.address}, {survivor}" in after

    cluster.restart("node0")
    assert cluster.nodes[0].alive
    assert cluster.nodes[0].address == dead.address  # same port: nginx's list still holds


@pytest.mark.slow
def test_sticky_sends_every_request_naming_a_stream_to_one_node(cluster_of: Any) -> None:
    # hash $pushlab_stream consistent: a request naming stream S goes to node h(S), wherever
    # it names S. The request creating S names no id (the node makes it up), so it lands
    # anywhere: with the memory log, h(S) may not hold S and answer 404, which is fine here;
    # the question is only where nginx sends it (X-Pushlab-Upstream is on errors too).
    cluster = cluster_of(ClusterSpec(nodes=2, log="memory", sticky=True))
    front = cluster.target
    for _ in range(4):
        stream = _complete_stream(cluster)["X-Pushlab-Stream"]
        asked = [
            ("/sse", {"Last-Event-ID": f"{stream}:1"}),
            (f"/sse?stream={stream}&after=2", {}),
            (f"/longpoll/{stream}?after=0", {}),
            ("/sse", {"Last-Event-ID": f"{stream}:2"}),
        ]
        nodes = set()
        for path, headers in asked:
            status, got, body = _get(front.host, front.port, path, headers)
            assert status in (200, 204, 404), body[:300]
            nodes.add(got["X-Pushlab-Upstream"])
        assert len(nodes) == 1, (stream, nodes)


def _netns_unavailable() -> str:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs Linux and root"
    from netem import netns

    caps = netns.capabilities()
    missing = [c for c in ("netns", "veth") if not getattr(caps, c)]
    return "; ".join(f"{c}: {caps.reasons[c]}" for c in missing)


@pytest.mark.slow
def test_nodes_in_namespaces_behind_nginx(cluster_of: Any) -> None:
    why = _netns_unavailable()
    if why:
        pytest.skip(f"network namespaces unavailable: {why}")
    cluster = cluster_of(ClusterSpec(nodes=2, log="memory", netns=True))
    hosts = {node.host for node in cluster.nodes}
    assert len(hosts) == 2 and all(h.startswith("198.18.") for h in hosts)
    served = {_complete_stream(cluster)["X-Pushlab-Upstream"] for _ in range(2)}
    assert served == {node.address for node in cluster.nodes}
    cluster.kill(1)
    assert _complete_stream(cluster)["X-Pushlab-Upstream"].endswith(cluster.nodes[0].address)
    assert set(cluster.stats()) == {"node0"}


@pytest.mark.slow
def test_redis_log_cluster_serves_a_stream(cluster_of: Any) -> None:
    cluster = cluster_of(ClusterSpec(nodes=2, log="redis"))
    assert cluster.redis is not None
    first = _complete_stream(cluster)
    stream = first["X-Pushlab-Stream"]
    # the shared log: any node resumes it, also after the node that served it is killed
    served_by = next(n for n in cluster.nodes if first["X-Pushlab-Upstream"] == n.address)
    cluster.kill(served_by)
    _complete_stream(cluster, "/sse", {"Last-Event-ID": f"{stream}:1"})
    assert int(cluster.redis.info()["total_commands_processed"]) > 0
    wait_until(lambda: len(cluster.stats()) == 1, what="the stats of the one living node")


def test_stats_json_is_read_straight_from_a_node() -> None:
    # the helper Cluster.stats() uses, against a node of a 1-node cluster on loopback
    with Cluster(ClusterSpec(nodes=1, log="memory")) as cluster:
        node = cluster.nodes[0]
        stats = cluster.stats()["node0"]
        assert json.loads(json.dumps(stats)) == stats
        assert "hub" in stats
        pids = cluster.pids()
        assert node.pid in pids and cluster.nginx is not None and cluster.nginx.pid in pids
    assert [pid for pid in pids if procstat.alive(pid)] == []
