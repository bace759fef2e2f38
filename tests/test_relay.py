"""A second pushlab's /v1 as the upstream model: every transport carries its tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from clients.fleet import FleetSpec, run_fleet
from harness.children import SERVER_PY, ServerProcess
from streams.errors import TransportError
from streams.generator import texts
from streams.hub import CANCELLED, Hub
from streams.params import GenParams
from streams.upstream import UpstreamConfig
from tests.support import UNIT, ServeFactory
from transports.errors import openai_error_body
from transports.openai import event
from transports.registry import KEYS
from transports.sse import DONE, encode_event
from transports.token import dumps, encode_token
from transports.web.common import HUB
from transports.web.config import ServerConfig
from transports.web.upstream import EVENT_BYTES, Upstream

PARAMS = GenParams(tokens=15, rate=200.0, ttft_ms=20.0, seed=4, text="mixed")
UPSTREAM_EXTRA = json.dumps({"rate": 200, "ttft_ms": 20, "text": "mixed"})


@pytest.fixture(scope="module")
def relay() -> Iterator[ServerProcess]:
    upstream = ServerProcess()
    target = upstream.start()
    proc = ServerProcess(
        config=ServerConfig(upstream=f"{target.url}/v1", upstream_extra=UPSTREAM_EXTRA)
    )
    proc.start()
    yield proc
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


async def test_events_without_a_token_are_read_however_many_come() -> None:
    """Only bytes that complete no event are bounded: a reasoning model streams thousands of
    chunks with no `content` before its answer, and the relay waits for it."""
    thinking = _chunk({"choices": [{"delta": {"reasoning_content": "hm"}}]})
    answer = _chunk({"choices": [{"delta": {"content": "a"}}]}) + b"data: [DONE]\n\n"
    body = thinking * (2 * EVENT_BYTES // len(thinking)) + answer
    assert await _relayed(body) == (["a"], None)


@pytest.mark.parametrize(
    ("tail", "message"),
    [(_chunk({"error": {"message": "boom"}}), "error event"),
     (b"data: {not json boom\n\n", "malformed event")],
)  # fmt: skip
async def test_an_upstream_error_or_bad_chunk_ends_the_relay_for_good(
    tail: bytes, message: str
) -> None:
    texts_, exc = await _relayed(_chunk({"choices": [{"delta": {"content": "a"}}]}) + tail)
    assert texts_ == ["a"]
    assert exc is not None and exc.message == message and not exc.retryable  # no "boom"


# What a hosted API's refusal may hold: a client of the relay must never see it.
SECRET = "sk-live-7f3a9c-acct-jane.doe@example.com"
TOKEN = _chunk({"choices": [{"delta": {"content": "a"}}]})
GOOD = b"".join(_chunk({"choices": [{"delta": {"content": f" w{i}"}}]}) for i in range(5))
Reply = bytes | Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeModel:
    """An OpenAI-compatible upstream that answers every request with `reply` (an event
    stream's bytes, or a handler)."""

    def __init__(self) -> None:
        self.reply: Reply = GOOD + DONE
        self.url = ""

    async def answer(self, request: web.Request) -> web.StreamResponse:
        if isinstance(self.reply, bytes):
            return web.Response(body=self.reply, content_type="text/event-stream")
        return await self.reply(request)


@pytest.fixture
async def fake_model() -> AsyncIterator[FakeModel]:
    model = FakeModel()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", model.answer)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    model.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    yield model
    await runner.cleanup()


async def _refuse(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": f"Incorrect API key: {SECRET}"}}, status=401)


async def _reset_midstream(request: web.Request) -> web.StreamResponse:
    await request.read()  # nothing unread: the close is a FIN after the bytes, never an RST
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(TOKEN + b"data: " + SECRET.encode())
    assert request.transport is not None
    request.transport.abort()  # the chunked body never ends: a cut, not an end
    return resp


MALFORMED, OVERSIZE = "upstream: malformed event", "upstream: malformed event (over 1 MiB)"
LONG = 2 * EVENT_BYTES
CASES = [
    pytest.param(b'data: [1, 2, "' + SECRET.encode() + b'"]\n\n', MALFORMED, id="json-list"),
    pytest.param(_chunk({"choices": 5, "org": SECRET}), MALFORMED, id="choices-not-a-list"),
    pytest.param(TOKEN + _chunk({"choices": [SECRET]}), MALFORMED, id="choice-not-an-object"),
    pytest.param(b"data: {" + SECRET.encode() + b"\n\n", MALFORMED, id="invalid-json"),
    pytest.param(TOKEN + b"data: \xff\xfe" + SECRET.encode() + b"\n\n", MALFORMED,
                 id="invalid-utf8"),
    pytest.param(b"data: " + b"[" * 100_000 + b"\n\n", MALFORMED, id="nested-too-deep"),
    pytest.param(_chunk({"error": {"message": SECRET}}), "upstream: error event", id="error-event"),
    pytest.param(_refuse, "upstream: HTTP 401", id="error-status"),
    pytest.param(b"data: " + SECRET.encode() + b"x" * LONG, OVERSIZE, id="huge-line"),
    pytest.param((b"data: " + SECRET.encode() + b"\n") * (LONG // 40), OVERSIZE,
                 id="event-never-ends"),
    pytest.param(_reset_midstream, "upstream: connection lost", id="reset-midstream"),
    pytest.param(TOKEN, "upstream: ended before [DONE]", id="no-done"),
]  # fmt: skip
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.mark.parametrize(("reply", "reason"), CASES)
async def test_a_broken_upstream_ends_the_stream_for_every_reader_with_a_generic_reason(
    fake_model: FakeModel, serve: ServeFactory, caplog: pytest.LogCaptureFixture,
    reply: Reply, reason: str,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING, logger="pushlab.upstream")
    fake_model.reply = reply
    served = await serve(upstream=fake_model.url)
    v1 = f"{served.url}/v1/chat/completions"
    async with asyncio.timeout(20 * UNIT), aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/sse?tokens=5") as resp:
            sse_bytes, sid = await resp.read(), resp.headers["X-Pushlab-Stream"]
        async with http.get(f"{served.url}/streams/{sid}") as resp:
            described_bytes = await resp.read()
        async with http.post(v1, json={**CHAT, "stream": True}) as resp:
            v1_bytes = await resp.read()
        async with http.post(v1, json={**CHAT, "stream": False}) as resp:
            whole_status, whole_bytes = resp.status, await resp.read()
        fake_model.reply = GOOD + DONE  # and the relay goes on serving
        async with http.get(f"{served.url}/sse?tokens=5") as resp:
            good_bytes = await resp.read()
    described = json.loads(described_bytes)
    assert (described["state"], described["reason"]) == (CANCELLED, reason)
    info = {"stream": sid, "seq": described["tokens_emitted"], "reason": reason}
    assert sse_bytes.endswith(encode_event(dumps(info).decode(), event="cancelled") + DONE)
    assert v1_bytes.endswith(event(dumps(openai_error_body(reason, "server_error"))))
    assert whole_status == 500
    assert json.loads(whole_bytes)["error"]["message"] == f"generation ended early: {reason}"
    for got in (sse_bytes, described_bytes, v1_bytes, whole_bytes):
        assert SECRET.encode() not in got
    assert good_bytes.count(b"\ndata: {") == 5 and good_bytes.endswith(DONE)
    assert b"event: cancelled" not in good_bytes
    stats = served.app[HUB].statistics()
    assert (stats.streams_created, stats.streams_cancelled, stats.streams_done) == (4, 3, 1)
    assert stats.streams_running == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "pushlab.upstream"]
    assert logged and all(len(m) < 1000 for m in logged)  # logged, and bounded
    if reply is _refuse or reason.endswith("error event"):
        assert all(SECRET in m for m in logged)  # what the operator needs is in the log


async def test_a_broken_answer_is_logged_without_the_upstream_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")  # a head aiohttp refuses
        await writer.drain()
        writer.close()

    monkeypatch.setenv("PUSHLAB_TEST_UPSTREAM_KEY", SECRET)
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = UpstreamConfig(f"http://127.0.0.1:{port}/v1", api_key_env="PUSHLAB_TEST_UPSTREAM_KEY")
    upstream = Upstream(config)
    await upstream.start()
    try:
        async with asyncio.timeout(10 * UNIT):
            with pytest.raises(TransportError) as caught:
                async for _ in upstream(PARAMS, None):
                    pass
    finally:
        await upstream.aclose()
        server.close()
        await server.wait_closed()
    assert caught.value.message == "unreachable"
    # aiohttp's exception carries the request, key included, in its repr: not in the log
    assert "ClientResponseError" in caplog.text and SECRET not in caplog.text


def _fails_in_source(params: GenParams, messages: object) -> AsyncIterator[str]:
    async def texts_() -> AsyncIterator[str]:
        yield "a"
        raise ZeroDivisionError  # any bug below the hub: the source's

    return texts_()


def _fails_in_encoder(stream_id: str, seq: int, t_emit_ns: int, text: str,
                      params: GenParams) -> bytes:  # fmt: skip
    raise ZeroDivisionError  # any bug in the hub's own path: the encoder's


async def _one_token(params: GenParams, messages: object) -> AsyncIterator[str]:
    yield "a"


@pytest.mark.parametrize(
    ("source", "encode"), [(_fails_in_source, encode_token), (_one_token, _fails_in_encoder)]
)
async def test_a_bug_in_a_relay_ends_its_stream_and_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture, source: Callable[..., AsyncIterator[str]],
    encode: Callable[..., bytes],
) -> None:  # fmt: skip
    hub = Hub(encode, source=source)
    await hub.start()
    try:
        stream = await hub.create(GenParams(tokens=5))
        async with asyncio.timeout(10 * UNIT):
            while not stream.done:
                await stream.wait_beyond(stream.last_seq)
        stats = hub.statistics()
    finally:
        await hub.aclose()
    assert (stream.state, stream.reason) == (CANCELLED, "upstream: internal error")
    assert (stats.streams_cancelled, stats.streams_done, stats.streams_running) == (1, 0, 0)
    [record] = [r for r in caplog.records if r.name == "pushlab.hub"]
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError


async def test_a_relay_cancelled_midway_is_counted_once() -> None:
    async def slow(params: GenParams, messages: object) -> AsyncIterator[str]:
        yield "a"
        await asyncio.Event().wait()  # the model thinks forever
        yield "b"

    hub = Hub(encode_token, source=slow)
    await hub.start()
    try:
        stream = await hub.create(GenParams(tokens=5))
        relay = hub._relays[stream.id]
        async with asyncio.timeout(10 * UNIT):
            await stream.wait_beyond(0)
            await hub.cancel(stream.id)
            await asyncio.gather(relay, return_exceptions=True)  # it has run its end
        stats = hub.statistics()
    finally:
        await hub.aclose()
    assert (stream.state, stream.reason) == (CANCELLED, "cancelled")
    assert (stats.streams_cancelled, stats.streams_done, stats.tokens_emitted) == (1, 0, 1)
