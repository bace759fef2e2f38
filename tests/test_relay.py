"""A second pushlab's /v1 as the upstream model: every transport carries its tokens."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from clients.fleet import FleetSpec, run_fleet
from harness.children import SERVER_PY, ServerProcess
from streams.generator import texts
from streams.params import GenParams
from tests.conftest import UNIT
from transports.registry import KEYS

PARAMS = GenParams(tokens=15, rate=200.0, ttft_ms=20.0, seed=4, text="mixed")
UPSTREAM_EXTRA = json.dumps({"rate": 200, "ttft_ms": 20, "text": "mixed"})


@pytest.fixture(scope="module")
def relay() -> ServerProcess:
    upstream = ServerProcess()
    target = upstream.start()
    proc = ServerProcess(["--upstream", f"{target.url}/v1", "--upstream-extra", UPSTREAM_EXTRA])
    proc.start()
    yield proc  # type: ignore[misc]
    proc.stop()
    upstream.stop()


@pytest.mark.parametrize("key", KEYS)
async def test_every_transport_carries_exactly_the_upstreams_tokens(
    relay: ServerProcess, key: str
) -> None:
    async with asyncio.timeout(20 * UNIT):
        [rec] = await run_fleet(FleetSpec(key, 1), relay.target, PARAMS)
    assert rec.error == ""
    assert [rec.texts[s] for s in sorted(rec.texts)] == texts(
        PARAMS
    )  # the upstream's, token by token
    assert list(rec.seq) == list(range(1, PARAMS.tokens + 1))
    emitted = np.frombuffer(rec.t_emit_ns, dtype=np.int64)
    received = np.frombuffer(rec.t_recv_ns, dtype=np.int64)
    assert (np.diff(emitted) >= 0).all()  # stamped on arrival at the relay, in order
    assert (received >= emitted).all()


async def test_an_unreachable_upstream_ends_streams_with_the_reason() -> None:
    proc = ServerProcess(["--upstream", "http://127.0.0.1:9/v1"])  # discard port: nothing listens
    target = proc.start()
    try:
        async with asyncio.timeout(20 * UNIT):
            [rec] = await run_fleet(FleetSpec("ndjson", 1), target, PARAMS)
    finally:
        proc.stop()
    assert rec.end_reason.startswith("upstream") and "unreachable" in rec.end_reason
    assert len(rec.texts) == 0


def test_bad_upstream_extra_is_a_one_line_error() -> None:
    out = subprocess.run(
        [sys.executable, str(SERVER_PY), "--port", "0", "--upstream", "http://127.0.0.1:9/v1",
         "--upstream-extra", "[1,2]"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "pushlab serve: --upstream-extra must be a JSON object"
