"""Bad input gets a clear JSON error and loses nothing; the server keeps serving."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from clients.fleet import FleetSpec, run_fleet
from streams.params import GenParams
from tests.support import UNIT, Served
from transports import websocket as ws_codec
from transports.jsonin import MAX_DEPTH
from transports.sse import SSEParser

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
        ("tokens=5_0", "tokens"),  # int() would read 50
        ("tokens=%D9%A5", "tokens"),  # an Arabic-Indic five: int() would read 5
        ("rate=%C2%B2", "rate"),  # a superscript two: isdigit() but not int()
        ("rate=%205", "rate"),
        ("seed=1e3", "seed"),
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
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}{path}", data=body, headers=JSON) as resp,
    ):
        assert resp.status == 400
        assert_error_shape(await resp.json(), None)


async def assert_serves_a_stream(http: aiohttp.ClientSession, served: Served) -> None:
    """The server still streams three tokens in order after whatever came before."""
    async with http.get(f"{served.url}/sse?tokens=3&rate=1000&ttft_ms=0") as resp:
        assert resp.status == 200
        events = SSEParser().feed(await resp.read())
    assert [json.loads(e.data)["seq"] for e in events if e.data.startswith("{")] == [1, 2, 3]


POST_ROUTES = ["/sse", "/ndjson", "/oneshot", "/longpoll", "/shortpoll", "/v1/chat/completions"]
JSON = {"Content-Type": "application/json"}
DEPTH = MAX_DEPTH + 1

# (case, body, Content-Type or None for none at all) -> (status, error type, param)
HOSTILE_BODIES = [
    ("nested 50,000 deep", b"[" * 50_000, "application/json", 400, "invalid_request_error", None),
    ("nested one too deep", b"[" * DEPTH + b"]" * DEPTH, "application/json", 400,
     "invalid_request_error", None),
    ("duplicate key", b'{"tokens": 3, "tokens": 4}', "application/json", 400,
     "invalid_request_error", "tokens"),
    ("NaN", b'{"rate": NaN}', "application/json", 400, "invalid_request_error", None),
    ("Infinity", b'{"tokens": -Infinity}', "application/json", 400, "invalid_request_error",
     None),
    ("not UTF-8", b'{"text": "\xff"}', "application/json", 400, "invalid_request_error", None),
    ("text/plain", b'{"tokens": 3}', "text/plain", 415, "unsupported_media_type_error", None),
    ("a form", b"tokens=3", "application/x-www-form-urlencoded", 415,
     "unsupported_media_type_error", None),
    ("latin-1", b'{"tokens": 3}', "application/json; charset=latin-1", 415,
     "unsupported_media_type_error", None),
    ("no Content-Type", b'{"tokens": 3}', None, 415, "unsupported_media_type_error", None),
    ("over 64 KiB", b" " * 70_000, "application/json", 413, "request_too_large", None),
]  # fmt: skip


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize(
    ("body", "content_type", "status", "type_", "param"),
    [pytest.param(*case[1:], id=case[0]) for case in HOSTILE_BODIES],
)
async def test_every_hostile_body_is_a_documented_4xx_and_the_server_goes_on(
    served: Served, path: str, body: bytes, content_type: str | None, status: int, type_: str,
    param: str | None,
) -> None:  # fmt: skip
    headers = {"Content-Type": content_type} if content_type else {}
    skip = () if content_type else ("Content-Type",)
    async with aiohttp.ClientSession(skip_auto_headers=skip) as http:
        async with http.post(f"{served.url}{path}", data=body, headers=headers) as resp:
            assert resp.status == status
            assert resp.content_type == "application/json"
            error = (await resp.json())["error"]
        assert (error["type"], error["param"]) == (type_, param)
        await assert_serves_a_stream(http, served)


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.pushlab+json"]
)
async def test_json_media_types_with_and_without_charset_are_read(
    served: Served, path: str, content_type: str
) -> None:
    body: dict[str, object] = {"tokens": 2, "rate": 1000, "ttft_ms": 0}
    if path.startswith("/v1"):
        body |= {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Content-Type": content_type}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}{path}", data=json.dumps(body), headers=headers) as resp,
    ):
        assert resp.status in (200, 201)
        await resp.read()


@pytest.mark.parametrize("path", [p for p in POST_ROUTES if not p.startswith("/v1")])
async def test_an_empty_body_needs_no_content_type(served: Served, path: str) -> None:
    url = f"{served.url}{path}?tokens=2&rate=1000&ttft_ms=0"
    async with aiohttp.ClientSession() as http, http.post(url, data=b"") as resp:
        assert resp.status in (200, 201)
        await resp.read()


@pytest.mark.parametrize(("method", "path"), CREATES)
@pytest.mark.parametrize(
    ("query", "body"),
    [("tokens=3&tokens=4", None), ("tokens=3&rate=5&rate=5", None), ("tokens=3", {"tokens": 3})],
)
async def test_a_parameter_given_twice_is_a_400_naming_it(
    served: Served, method: str, path: str, query: str, body: dict[str, int] | None
) -> None:
    if body is not None and method == "GET":
        return  # a GET carries no body
    param = "rate" if "rate=5&" in query else "tokens"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{served.url}{path}?{query}", json=body) as resp,
    ):
        assert resp.status == 400
        assert_error_shape(await resp.json(), param)


@pytest.mark.parametrize(
    ("path", "content", "param"),
    [
        ("/v1/chat/completions", [{"type": "text", "text": 5}], "messages[0].content[0]"),
        ("/v1/chat/completions", 5, "messages[0].content"),
    ],
)
async def test_v1_content_of_the_wrong_type_is_a_400(
    served: Served, path: str, content: object, param: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}{path}", json=body) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert (error["type"], error["param"], error["code"]) == (
                "invalid_request_error", param, None)  # fmt: skip
        await assert_serves_a_stream(http, served)


async def test_v1_model_name_is_capped(served: Served) -> None:
    body = {"model": "m" * 60_000, "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "tokens": 100}  # fmt: skip
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{served.url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "model"


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
        for bad in ["garbage", "abc:\u00b2", "abc:\u0665", "abc:1_0", "abc:" + "9" * 5000]:
            async with http.get(f"{served.url}/sse", headers={"Last-Event-ID": bad}) as resp:
                assert resp.status == 400
                assert_error_shape(await resp.json(), "Last-Event-ID")
        await assert_serves_a_stream(http, served)


async def raw_request(served: Served, head: bytes) -> tuple[int, bytes]:
    """Send `head` as it is (aiohttp's client would encode it) and read status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.target.port)
    try:
        writer.write(head)
        async with asyncio.timeout(5 * UNIT):
            response = await reader.read()  # Connection: close
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    "header",
    [b"Last-Event-ID: \xff\xfe:1", b"Last-Event-ID: nope\xff:1", b"Origin: http://\xff.example",
     b"Host: \xff"],
)  # fmt: skip
async def test_a_header_that_is_not_utf8_gets_a_json_error_not_a_crash(
    served: Served, header: bytes
) -> None:
    host = b"" if header.startswith(b"Host") else b"Host: 127.0.0.1\r\n"
    head = b"GET /sse?tokens=2 HTTP/1.1\r\n" + host + header + b"\r\nConnection: close\r\n\r\n"
    status, body = await raw_request(served, head)
    assert 400 <= status < 500
    error = json.loads(body.decode("utf-8"))["error"]  # strict UTF-8: the body must be valid
    assert error["message"]
    async with aiohttp.ClientSession() as http:
        await assert_serves_a_stream(http, served)


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
            ("after=1.5", "after"),  # a cursor is whole: not truncated to 1
            ("after=%D9%A1", "after"),
            ("wait=61", "wait"),
            ("x=1", "x"),
        ]:
            async with http.get(f"{served.url}/longpoll/{stream}?{query}") as resp:
                assert resp.status == 400, query
                assert_error_shape(await resp.json(), param)
        async with http.get(f"{served.url}/shortpoll/{stream}?after=0&wait=1") as resp:
            assert resp.status == 400  # short polling never holds
        async with http.get(f"{served.url}/longpoll/{stream}?after=0&after=3") as resp:
            assert resp.status == 400
            assert_error_shape(await resp.json(), "after")


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
        ("[" * 50_000, None),  # was an HTTP 500 written into the upgraded socket
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), None),
        ('{"type": "start", "type": "start"}', "type"),
        ('{"type": "start", "rate": NaN}', None),
        ('{"type": "start", "tokens": "5_0"}', "tokens"),
        ('{"type": "resume", "stream": "x", "after": 1e400}', "after"),
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
        await assert_serves_a_stream(http, served)


@pytest.mark.parametrize(
    ("frame", "code"),
    [(b'{"type": "start", "pad": "' + b"x" * 70_000 + b'"}', 1009), (b'{"type": "\xff"}', 1007)],
)
async def test_a_frame_the_reader_refuses_is_closed_with_its_code(
    served: Served, frame: bytes, code: int
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{served.url}/ws") as ws:
            await ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
            async with asyncio.timeout(5 * UNIT):
                closing = await ws.receive()
            assert closing.type == aiohttp.WSMsgType.CLOSE and ws.close_code == code
        await assert_serves_a_stream(http, served)


async def test_a_websocket_server_fault_is_an_error_then_1011(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ws_codec, "parse_client_message", broken)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{served.url}/ws") as ws:
            await ws.send_str('{"type": "cancel"}')
            async with asyncio.timeout(5 * UNIT):
                reply = await ws.receive_json()
                closing = await ws.receive()
            assert reply["type"] == "error" and reply["error"]["type"] == "server_error"
            assert closing.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1011
        await assert_serves_a_stream(http, served)


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
