"""Resume after any seq and cancel, on each transport's own wire surface."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import UNIT, Served
from transports.sse import SSEParser

QUERY = "tokens=10&rate=1000&ttft_ms=0&seed=5"


async def finished_stream(http: aiohttp.ClientSession, served: Served) -> str:
    """A stream id whose 10 tokens have all been generated."""
    async with http.post(f"{served.url}/longpoll?{QUERY}") as resp:
        stream = (await resp.json())["stream"]
    async with asyncio.timeout(5 * UNIT):
        while True:
            async with http.get(f"{served.url}/streams/{stream}") as resp:
                if (await resp.json())["state"] == "done":
                    return str(stream)
            await asyncio.sleep(0.01)


def seqs_of_ndjson(body: bytes) -> list[int]:
    return [obj["seq"] for obj in map(json.loads, body.splitlines()) if "type" not in obj]


@pytest.mark.parametrize("after", [0, 4, 10])
async def test_every_transport_resumes_after_the_given_seq(served: Served, after: int) -> None:
    expected = list(range(after + 1, 11))
    async with aiohttp.ClientSession() as http:
        stream = await finished_stream(http, served)
        # SSE: the Last-Event-ID an EventSource sends after a cut
        async with http.get(
            f"{served.url}/sse", headers={"Last-Event-ID": f"{stream}:{after}"}
        ) as resp:
            if after == 10:
                assert resp.status == 204  # nothing left: EventSource must stop reconnecting
            else:
                events = SSEParser().feed(await resp.read())
                assert [json.loads(e.data)["seq"] for e in events if e.data != "[DONE]"] == expected
        async with http.get(f"{served.url}/ndjson?stream={stream}&after={after}") as resp:
            assert seqs_of_ndjson(await resp.read()) == expected
        for key in ("longpoll", "shortpoll"):
            async with http.get(f"{served.url}/{key}/{stream}?after={after}") as resp:
                batch = await resp.json()
                assert [t["seq"] for t in batch["tokens"]] == expected and batch["done"]
        async with http.get(f"{served.url}/oneshot?stream={stream}&after={after}") as resp:
            assert [t["seq"] for t in (await resp.json())["tokens"]] == expected
        async with http.ws_connect(f"{served.url}/ws") as ws:
            await ws.send_json({"type": "resume", "stream": stream, "after": after})
            got = []
            async with asyncio.timeout(5 * UNIT):
                while (msg := await ws.receive_json())["type"] != "done":
                    if msg["type"] == "token":
                        got.append(msg["seq"])
            assert got == expected


async def test_sse_opening_block_commits_the_stream_id_before_any_token(served: Served) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/sse?tokens=3&ttft_ms=5000") as resp,
    ):
        parser = SSEParser()
        async with asyncio.timeout(5 * UNIT):
            parser.feed(await resp.content.readuntil(b"\n\n"))
        assert parser.last_event_id == f"{resp.headers['X-Pushlab-Stream']}:0"
        assert parser.retry_ms == 1000


async def test_sse_sends_heartbeat_comments_while_idle(serve: object) -> None:
    served = await serve(heartbeat_s=0.05)  # type: ignore[operator]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/sse?tokens=2&ttft_ms=400") as resp,
    ):
        async with asyncio.timeout(5 * UNIT):
            body = await resp.read()
    assert body.count(b": keep-alive\n\n") >= 3
    events = SSEParser().feed(body)
    assert [e.data for e in events][-1] == "[DONE]" and len(events) == 3


async def test_delete_cancels_a_stream_and_readers_see_why(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/ndjson?tokens=1000&rate=100&ttft_ms=0") as resp:
            started = json.loads(await resp.content.readline())
            await resp.content.readline()
            async with http.delete(f"{served.url}/streams/{started['stream']}") as cancel:
                assert cancel.status == 200 and (await cancel.json())["state"] == "cancelled"
            async with asyncio.timeout(5 * UNIT):
                lines = (await resp.read()).splitlines()
        done = json.loads(lines[-1])
        assert done["type"] == "done" and done["reason"] == "cancelled" and done["seq"] < 1000


async def test_websocket_cancel_message_stops_generation(served: Served) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{served.url}/ws") as ws:
        await ws.send_json({"type": "start", "tokens": 1000, "rate": 200, "ttft_ms": 0})
        async with asyncio.timeout(5 * UNIT):
            started = await ws.receive_json()
            await ws.receive_json()  # first token
            await ws.send_json({"type": "cancel"})
            while (msg := await ws.receive_json())["type"] != "done":
                pass
        assert msg["reason"] == "cancelled" and msg["seq"] < 1000
        async with http.get(f"{served.url}/streams/{started['stream']}") as resp:
            assert (await resp.json())["state"] == "cancelled"


async def test_sse_ends_a_cancelled_stream_with_a_cancelled_event_then_done(served: Served) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/sse?tokens=1000&rate=100&ttft_ms=0") as resp,
    ):
        stream = resp.headers["X-Pushlab-Stream"]
        async with http.delete(f"{served.url}/streams/{stream}"):
            pass
        async with asyncio.timeout(5 * UNIT):
            events = SSEParser().feed(await resp.read())
    assert [e.type for e in events[-2:]] == ["cancelled", "message"]
    assert json.loads(events[-2].data)["reason"] == "cancelled" and events[-1].data == "[DONE]"
