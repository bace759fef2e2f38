"""Fleets on a real Dask cluster (clients/cluster.py): the address check and an unreachable
scheduler in one line (fast), then a scheduler and two workers as two hosts, each worker in a
network namespace of its own, running `pushlab run latency --cluster` (slow, needs root).

Topology of the slow test (every address made here, RFC 2544's 198.18.0.0/15):

    root namespace: pushlab CLI (Dask client), dask scheduler and pushlab server, both on
                    A1 = 198.18.a.1 (link A's root end)
    namespace A:    dask worker on 198.18.a.2, reaches A1 on its veth
    namespace B:    dask worker on 198.18.b.2, reaches A1 through 198.18.b.1 (a route
                    added here; the root namespace delivers it locally, no forwarding)

All three share this machine's kernel clock, so token latency (server emit -> client
receive) is on one clock, as in a local run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import cluster
from clients.fleet import FleetPool
from experiments.cli import main
from harness.children import ROOT, ServerProcess, stop_process
from records import store
from streams.errors import ClusterUnavailable, ParamError
from tests.support import UNIT, wait_until

DASK = str(Path(sys.executable).with_name("dask"))
UNREACHABLE = "tcp://127.0.0.1:1"  # port 1: nothing listens there


@pytest.mark.parametrize("text", ["127.0.0.1:8786", "tcp://host", "tcp://h:0", "tcp://h:99999",
                                  "http://h:8786", "tcp://a b:1", ""])  # fmt: skip
def test_malformed_address_is_a_param_error(text: str) -> None:
    with pytest.raises(ParamError, match="expected tcp://HOST:PORT"):
        cluster.parse_address(text)
    assert cluster.parse_address("tcp://[::1]:8786") == "tcp://[::1]:8786"


def test_cli_refuses_a_malformed_address_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "latency", "--cluster", "10.0.0.1:8786"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected tcp://HOST:PORT" in err


def test_unreachable_scheduler_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(ClusterUnavailable, match=f"{UNREACHABLE} unreachable"):
        FleetPool(2, cluster=UNREACHABLE)


@pytest.mark.timeout(60 * UNIT)
def test_cli_unreachable_scheduler_exits_1_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    argv = ["run", "latency", "--quick", "--transport", "sse", "--cluster", UNREACHABLE,
            "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    try:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
    finally:
        cluster.set_default(None)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"Dask scheduler {UNREACHABLE} unreachable" in err
    assert not (tmp_path / "run").exists()


def test_cli_refuses_cluster_for_an_in_process_experiment() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "cancel", "--cluster", "tcp://127.0.0.1:8786"])
    assert exit_.value.code == 2
    assert cluster.default() is None


# ---- a real cluster of two hosts -------------------------------------------------------


@pytest.fixture
def two_hosts() -> Iterator[tuple[object, object]]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("network namespaces need Linux and root")
    from netem.netns import NetnsLink

    with NetnsLink() as a, NetnsLink() as b:
        route = ["ip", "-n", b.name, "route", "add", f"{a.client_host}/32", "via", b.client_host]
        subprocess.run(route, check=True, capture_output=True, timeout=10 * UNIT)
        yield a, b


def _scheduler(host: str, scheduler_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [DASK, "scheduler", "--host", host, "--port", "0", "--no-dashboard",
         "--scheduler-file", str(scheduler_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def address() -> str:
        if proc.poll() is not None:
            raise AssertionError(f"dask scheduler exited with {proc.returncode}")
        try:
            return str(json.loads(scheduler_file.read_text())["address"])
        except (OSError, ValueError, KeyError):
            return ""

    try:
        return proc, wait_until(address, timeout_units=30, what="the dask scheduler's address")
    except BaseException:
        stop_process(proc)
        raise


def _pushlab(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "experiments.cli", "run", "latency", "--quick",
            "--transport", "sse,websocket", "--clients", "2", "--no-progress", *args]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180 * UNIT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.slow
@pytest.mark.timeout(400 * UNIT)
def test_latency_on_two_hosts_matches_a_local_run(two_hosts: tuple, tmp_path: Path) -> None:
    from distributed import Client

    a, b = two_hosts
    scheduler, address = _scheduler(a.client_host, tmp_path / "scheduler.json")
    server = ServerProcess(host=a.client_host)
    try:
        for link in (a, b):  # stopped by their pids when the link closes
            link.popen([DASK, "worker", address, "--host", link.server_host, "--nthreads", "1",
                        "--no-nanny", "--no-dashboard"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        with Client(address, timeout=10 * UNIT, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60 * UNIT)
        url = server.start().url
        _pushlab("--server", url, "--cluster", address, "--out", str(tmp_path / "cluster"))
        _pushlab("--server", url, "--out", str(tmp_path / "local"))
    finally:
        server.stop()
        stop_process(scheduler)
    on_cluster, local = store.load(tmp_path / "cluster"), store.load(tmp_path / "local")
    for name in ("tokens", "streams"):
        cluster_table, local_table = getattr(on_cluster, name), getattr(local, name)
        assert list(cluster_table.columns) == list(local_table.columns)
        assert cluster_table.dtypes.to_dict() == local_table.dtypes.to_dict()
    streams = on_cluster.streams
    assert len(streams) == len(local.streams) == 8  # 2 transports x 2 rates x 2 clients
    assert (streams["error"] == "").all() and (streams["tokens_received"] == 10).all()
    load = on_cluster.extra["load_generators"]
    hosts = {addr.removeprefix("tcp://").rpartition(":")[0] for addr in load["address"]}
    assert hosts == {a.server_host, b.server_host}  # each point's two clients, one per host
    assert (load.groupby("condition")["address"].nunique() == 2).all()
    assert "load_generators" not in local.extra
