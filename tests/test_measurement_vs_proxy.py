"""The measurement checked by an independent party: a proxy counting what it forwarded.

`pushlab bench --server <proxy>` with `pushlab serve` behind the proxy: the bytes each
stream's client counted (kernel TCP_INFO) must agree with the proxy's count for that
connection within 1%, and a one-way delay injected by the proxy must appear in the
measured token latency.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
import pytest

from experiments.cli import main
from experiments.spec import over_tcp
from harness.children import ServerProcess
from netem.conditions import parse_net
from netem.proxy import FaultProxy
from tests.support import UNIT

BENCH = ["--clients", "1", "--tokens", "8", "--rate", "100", "--ttft-ms", "0",
         "--interval-ms", "20", "--no-warmup", "--no-progress", "--no-charts"]  # fmt: skip


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    proc = ServerProcess()
    proc.start()
    yield proc  # type: ignore[misc]
    proc.stop()


async def bench_through(proxy: FaultProxy, out: Path, transports: str) -> pd.DataFrame:
    argv = ["bench", "--transport", transports, "--server", proxy.url(), "--out", str(out), *BENCH]
    async with asyncio.timeout(60 * UNIT):
        assert await asyncio.to_thread(main, argv) == 0
        await proxy.wait_idle()
    return pd.read_parquet(out / "streams.parquet")


async def test_kernel_byte_counts_agree_with_the_proxy_per_stream(
    server: ServerProcess, tmp_path: Path
) -> None:
    # the transports whose bytes cross this TCP proxy (WebTransport's go over UDP, counted
    # against a UDP relay and the veth counters in tests/test_quic_counts.py)
    keys = over_tcp()
    async with FaultProxy(server.target.host, server.target.port) as proxy:
        streams = await bench_through(proxy, tmp_path, ",".join(keys))
        conns = sorted(proxy.statistics().conns, key=lambda c: c.started_s)
    assert list(streams["transport"]) == list(keys)
    assert (streams["bytes_source"] == "kernel").all()
    # transports run one after another, one connection per stream, so the proxy's
    # connections in start order are the streams in table order
    assert list(streams["connections"]) == [1] * len(keys) and len(conns) == len(keys)
    for row, conn in zip(streams.itertuples(), conns, strict=True):
        assert abs(row.bytes_down - conn.bytes_down) <= 0.01 * conn.bytes_down, row.transport
        assert abs(row.bytes_up - conn.bytes_up) <= 0.01 * conn.bytes_up, row.transport


@pytest.mark.slow
@pytest.mark.parametrize("delay_ms", [40])
async def test_an_injected_one_way_delay_shows_up_in_token_latency(
    server: ServerProcess, tmp_path: Path, delay_ms: int
) -> None:
    transports = "sse,websocket,ndjson"
    medians = {}
    for name, net in (("clean", ""), ("delayed", f"down.delay={delay_ms}ms")):
        async with FaultProxy(server.target.host, server.target.port, parse_net(net)) as proxy:
            await bench_through(proxy, tmp_path / name, transports)
        tokens = pd.read_parquet(tmp_path / name / "tokens.parquet")
        medians[name] = tokens.groupby("transport")["latency_ms"].median()
    added = medians["delayed"] - medians["clean"]
    for transport, extra_ms in added.items():
        assert delay_ms - 3 <= extra_ms <= delay_ms + 10, f"{transport}: +{extra_ms:.1f} ms"
