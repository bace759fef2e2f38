"""A second pushlab's /v1 as the upstream model: every transport carries its tokens."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
from aiohttp import web

from clients.fleet import FleetSpec, run_fleet
from harness.children import SERVER_PY, ServerProcess
from streams.errors import TransportError
from streams.generator import texts
from streams.params import GenParams
from streams.upstream import UpstreamConfig
from tests.support import UNIT
from transports.registry import KEYS
from transports.web.config import ServerConfig
from transports.web.upstream import Upstream

PARAMS = GenParams(tokens=15, rate=200.0, ttft_ms=20.0, seed=4, text="mixed")
UPSTREAM_EXTRA = json.dumps({"rate": 200, "ttft_ms": 20, "text": "mixed"})


@pytest.fixture(scope="module")
def relay() -> ServerProcess:
    upstream = ServerProcess()
    target = upstream.start()
    proc = ServerProcess(
        config=ServerConfig(upstream=f"{target.url}/v1", upstream_extra=UPSTREAM_EXTRA)
    )
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
        capture_output=True, text=True, timeout=30 * UNIT,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip() == "pushlab serve: --upstream-extra must be a JSON object"


async def _relayed(body: bytes) -> tuple[list[str], TransportError | None]:
    """The texts the relay yields from an upstream answering `body`, and how it ended."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream = Upstream(UpstreamConfig(f"http://127.0.0.1:{port}/v1"))
    await upstream.start()
    texts_: list[str] = []
    try:
        async with asyncio.timeout(10 * UNIT):
            async for text in upstream(PARAMS, None):
                texts_.append(text)
        return texts_, None
    except TransportError as exc:
        return texts_, exc
    finally:
        await upstream.aclose()
        await runner.cleanup()


def _chunk(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def test_the_relay_reads_an_upstreams_chunks_with_the_codec() -> None:
    role = {"choices": [{"delta": {"role": "assistant"}}]}
    body = b"".join(_chunk(c) for c in [role, *({"choices": [{"delta": {"content": t}}]}
                                                for t in ("a", "", "b"))])  # fmt: skip
    assert await _relayed(body + b"data: [DONE]\n\n" + _chunk({"x": 1})) == (["a", "b"], None)
    texts_, exc = await _relayed(body)  # no [DONE]: the upstream broke off
    assert texts_ == ["a", "b"] and exc is not None and "before [DONE]" in exc.message


@pytest.mark.parametrize(
    ("tail", "words"),
    [(_chunk({"error": {"message": "boom"}}), "upstream error: boom"),
     (b"data: {not json\n\n", "upstream sent invalid JSON")],
)  # fmt: skip
async def test_an_upstream_error_or_bad_chunk_ends_the_relay_for_good(
    tail: bytes, words: str
) -> None:
    texts_, exc = await _relayed(_chunk({"choices": [{"delta": {"content": "a"}}]}) + tail)
    assert texts_ == ["a"]
    assert exc is not None and words in exc.message and not exc.retryable
