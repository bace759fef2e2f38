"""Bad input gets a clear JSON error and loses nothing; the server keeps serving."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import aiohttp
import pytest

from clients.fleet import FleetSpec, run_fleet
from streams.params import GenParams
from tests.support import UNIT, Served

ROOT = Path(__file__).resolve().parents[1]
STREAMING_GETS = ["/sse", "/ndjson", "/oneshot"]
CREATES = [("GET", p) for p in STREAMING_GETS] + [
    ("POST", p) for p in (*STREAMING_GETS, "/longpoll", "/shortpoll")
]


def assert_error_shape(body: dict[str, object], param: str | None) -> None:
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param


@pytest.mark.parametrize(("method", "path"), CREATES)
@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("tokens=0", "tokens"),
        ("tokens=abc", "tokens"),
        ("rate=-1", "rate"),
        ("rate=nan", "rate"),
        ("jitter=2", "jitter"),
        ("text=klingon", "text"),
        ("envelope=xml", "envelope"),
        ("bogus=1", "bogus"),
    ],
)
async def test_bad_generation_parameter_is_a_400_naming_it(
    served: Served, method: str, path: str, query: str, param: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{served.url}{path}?{query}") as resp,
    ):
        assert resp.status == 400
        assert resp.content_type == "application/json"
        assert_error_shape(await resp.json(), param)


@pytest.mark.parametrize("path", ["/sse", "/ndjson", "/oneshot", "/longpoll"])
@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
async def test_a_body_that_is_not_a_json_object_is_a_400(
    served: Served, path: str, body: bytes
) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{served.url}{path}", data=body) as resp:
        assert resp.status == 400
        assert_error_shape(await resp.json(), None)


@pytest.mark.parametrize(
    "path",
    [
        "/longpoll/nope?after=0",
        "/shortpoll/nope?after=0",
        "/streams/nope",
        "/ndjson?stream=nope",
        "/sse?stream=nope",
    ],
)
async def test_unknown_stream_is_a_404(served: Served, path: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}{path}") as resp:
        assert resp.status == 404
        body = await resp.json()
        assert body["error"]["type"] == "not_found_error"


async def test_unknown_last_event_id_is_a_404_and_malformed_is_a_400(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/sse", headers={"Last-Event-ID": "nope:3"}) as resp:
            assert resp.status == 404
        async with http.get(f"{served.url}/sse", headers={"Last-Event-ID": "garbage"}) as resp:
            assert resp.status == 400
            assert_error_shape(await resp.json(), "Last-Event-ID")


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/sse"), ("DELETE", "/ndjson"), ("GET", "/longpoll"), ("POST", "/ws")],
)
async def test_wrong_method_is_a_405_with_allow(served: Served, method: str, path: str) -> None:
    async with aiohttp.ClientSession() as http, http.request(method, f"{served.url}{path}") as resp:
        assert resp.status == 405
        assert "Allow" in resp.headers
        assert_error_shape(await resp.json(), None)


async def test_unknown_path_is_a_json_404(served: Served) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{served.url}/nowhere") as resp:
        assert resp.status == 404
        assert_error_shape(await resp.json(), None)


async def test_poll_cursor_beyond_the_end_and_wait_out_of_range_are_400s(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/longpoll?tokens=3&rate=1000") as resp:
            stream = (await resp.json())["stream"]
        for query, param in [
            ("after=4", "after"),
            ("after=-1", "after"),
            ("wait=61", "wait"),
            ("x=1", "x"),
        ]:
            async with http.get(f"{served.url}/longpoll/{stream}?{query}") as resp:
                assert resp.status == 400, query
                assert_error_shape(await resp.json(), param)
        async with http.get(f"{served.url}/shortpoll/{stream}?after=0&wait=1") as resp:
            assert resp.status == 400  # short polling never holds


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ("not json", None),
        ('["a list"]', None),
        ('{"type": "dance"}', "type"),
        ('{"type": "start", "tokens": -3}', "tokens"),
        ('{"type": "start", "colour": "red"}', "colour"),
        ('{"type": "resume", "stream": "nope", "after": 0}', "stream"),
        ('{"type": "resume", "stream": 5}', "stream"),
        ('{"type": "cancel"}', None),
    ],
)
async def test_malformed_websocket_message_gets_an_error_then_a_clean_close(
    served: Served, message: str, param: str | None
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{served.url}/ws") as ws:
        await ws.send_str(message)
        async with asyncio.timeout(5 * UNIT):
            reply = await ws.receive_json()
            closing = await ws.receive()
        assert reply["type"] == "error"
        assert_error_shape(reply, param)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008


async def test_binary_websocket_frame_is_refused_with_1003(served: Served) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{served.url}/ws") as ws:
        await ws.send_bytes(b"\x00\x01")
        async with asyncio.timeout(5 * UNIT):
            reply = await ws.receive_json()
            await ws.receive()
        assert reply["type"] == "error" and ws.close_code == 1003


async def test_server_keeps_serving_everyone_else_during_bad_input(served: Served) -> None:
    params = GenParams(tokens=30, rate=300.0, ttft_ms=0.0)

    async def abuse() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                async with http.get(f"{served.url}/sse?tokens=-1") as resp:
                    assert resp.status == 400
                async with http.ws_connect(f"{served.url}/ws") as ws:
                    await ws.send_str("{")
                    await ws.receive()
                # a client that vanishes mid-stream
                async with http.get(f"{served.url}/ndjson?tokens=50&rate=500") as resp:
                    await resp.content.readline()

    async with asyncio.timeout(20 * UNIT):
        good, _ = await asyncio.gather(
            run_fleet(FleetSpec("sse", 3), served.target, params), abuse()
        )
    assert all(r.error == "" and len(r.texts) == 30 for r in good)


SERVER_SIDE = [ROOT / "server.py", *sorted((ROOT / "transports").rglob("*.py")),
               *sorted((ROOT / "streams").glob("*.py"))]  # fmt: skip


def test_only_transports_errors_builds_an_error_body() -> None:
    """Every JSON error body goes through transports/errors.py: no other server-side module
    writes an `{"error": ...}` object literal."""
    builders = []
    for path in SERVER_SIDE:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "error" for k in node.keys
            ):
                builders.append(str(path.relative_to(ROOT)))
    assert builders == ["transports/errors.py"] * 2  # pushlab's shape and OpenAI's


async def test_a_whole_v1_answer_cannot_be_read_through_another_transport(
    served: Served,
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tokens": 3,
            "rate": 1000}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            stream = (await resp.json())["id"].removeprefix("chatcmpl-")
        async with http.get(f"{served.url}/sse?stream={stream}") as resp:
            assert resp.status == 400  # its hub log has no payloads to frame (texts only)
            assert_error_shape(await resp.json(), "stream")
        async with http.get(f"{served.url}/streams/{stream}") as resp:
            assert resp.status == 200 and (await resp.json())["tokens_emitted"] == 3
