"""Resume after any seq and cancel, on each transport's own wire surface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from clients.base import ResumePoint, Target
from clients.recorder import StreamRecord
from clients.webtransport import WebTransportClient
from streams.params import GenParams
from tests.support import UNIT, Served, wait_until_async
from transports import registry
from transports.sse import SSEParser

QUERY = "tokens=10&rate=1000&ttft_ms=0&seed=5"


async def finished_stream(http: aiohttp.ClientSession, served: Served) -> str:
    """A stream id whose 10 tokens have all been generated."""
    async with http.post(f"{served.url}/longpoll?{QUERY}") as resp:
        stream = (await resp.json())["stream"]

    async def done() -> bool:
        async with http.get(f"{served.url}/streams/{stream}") as resp:
            return bool((await resp.json())["state"] == "done")

    await wait_until_async(done, what=f"stream {stream} is done")
    return str(stream)


def seqs_of_ndjson(body: bytes) -> list[int]:
    return [obj["seq"] for obj in map(json.loads, body.splitlines()) if "type" not in obj]


Resume = Callable[[aiohttp.ClientSession, str, str, int], Awaitable[list[int]]]


async def resume_sse(http: aiohttp.ClientSession, url: str, stream: str, after: int) -> list[int]:
    """The Last-Event-ID an EventSource sends after a cut."""
    async with http.get(f"{url}/sse", headers={"Last-Event-ID": f"{stream}:{after}"}) as resp:
        if resp.status == 204:  # nothing left: EventSource must stop reconnecting
            return []
        events = SSEParser().feed(await resp.read())
        return [json.loads(e.data)["seq"] for e in events if e.data != "[DONE]"]


async def resume_ndjson(
    http: aiohttp.ClientSession, url: str, stream: str, after: int
) -> list[int]:
    async with http.get(f"{url}/ndjson?stream={stream}&after={after}") as resp:
        return seqs_of_ndjson(await resp.read())


def resume_poll(key: str) -> Resume:
    """A polling transport polls `GET /{key}/{stream}?after=` (docs/PROTOCOL.md)."""

    async def resume(http: aiohttp.ClientSession, url: str, stream: str, after: int) -> list[int]:
        async with http.get(f"{url}/{key}/{stream}?after={after}") as resp:
            batch = await resp.json()
            assert batch["done"]
            return [t["seq"] for t in batch["tokens"]]

    return resume


async def resume_oneshot(
    http: aiohttp.ClientSession, url: str, stream: str, after: int
) -> list[int]:
    async with http.get(f"{url}/oneshot?stream={stream}&after={after}") as resp:
        return [t["seq"] for t in (await resp.json())["tokens"]]


async def resume_websocket(
    http: aiohttp.ClientSession, url: str, stream: str, after: int
) -> list[int]:
    async with http.ws_connect(f"{url}/ws") as ws:
        await ws.send_json({"type": "resume", "stream": stream, "after": after})
        got = []
        async with asyncio.timeout(5 * UNIT):
            while (msg := await ws.receive_json())["type"] != "done":
                if msg["type"] == "token":
                    got.append(msg["seq"])
        return got


async def resume_webtransport(
    http: aiohttp.ClientSession, url: str, stream: str, after: int
) -> list[int]:
    """A session on the QUIC endpoint whose control stream says `resume` (the lab's client,
    handed the resume point)."""
    client = WebTransportClient()
    client.resume = ResumePoint(stream, after)
    rec = StreamRecord("webtransport", "python", 10)
    async with asyncio.timeout(5 * UNIT):
        await client.run(Target.parse(url), GenParams(tokens=10), rec)
    assert rec.error == ""
    return list(rec.seq)


# Each resumable transport's own wire surface for "resume after seq": the code is per
# transport by nature; which transports must have one is the registry's to say.
RESUMABLE = registry.keys_where(lambda t: t.resumable)
RESUME: dict[str, Resume] = {
    "sse": resume_sse,
    "websocket": resume_websocket,
    "webtransport": resume_webtransport,
    "ndjson": resume_ndjson,
    "oneshot": resume_oneshot,
    **{k: resume_poll(k) for k in registry.keys_where(lambda t: t.requests_per_answer == "many")},
}


def test_every_resumable_transport_has_its_wire_resume_checked() -> None:
    assert set(RESUME) == set(registry.keys_where(lambda t: t.resumable))


@pytest.mark.parametrize("after", [0, 4, 10])
@pytest.mark.parametrize("key", RESUMABLE)
async def test_every_resumable_transport_resumes_after_the_given_seq(
    served: Served, key: str, after: int
) -> None:
    async with aiohttp.ClientSession() as http:
        stream = await finished_stream(http, served)
        assert await RESUME[key](http, served.url, stream, after) == list(range(after + 1, 11))


async def test_sse_answers_a_resume_after_the_end_with_204(served: Served) -> None:
    async with aiohttp.ClientSession() as http:
        stream = await finished_stream(http, served)
        headers = {"Last-Event-ID": f"{stream}:10"}
        async with http.get(f"{served.url}/sse", headers=headers) as resp:
            assert resp.status == 204  # nothing left: EventSource must stop reconnecting


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
