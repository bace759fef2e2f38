"""A stream survives the death of its node: two `pushlab serve --log redis://...` processes on
two ports share one real redis-server; a stream started on node A, whose node is then killed
with SIGKILL mid-answer, completes on node B with every seq exactly once and the seeded text
the dead node would have sent. Each resumable, incremental transport on its own wire."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest

from clients.base import ClientOptions, ResumePoint, Target
from clients.recorder import StreamRecord
from clients.webtransport import WebTransportClient
from harness.children import SERVER_PY, ServerProcess
from netem.redis import RedisServer, redis_binary
from streams.generator import texts
from streams.params import GenParams
from streams.resp import Parser, encode_command
from tests.support import UNIT
from transports import registry
from transports.sse import SSEParser

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed"),
]

PARAMS = GenParams(tokens=40, rate=40.0, ttft_ms=0.0, seed=11)
QUERY = "&".join(f"{k}={v}" for k, v in PARAMS.as_query().items())
KILL_AFTER = 8  # tokens read from node A before it is killed
LEASE_MS = 400  # short: the test waits out the dead node's lease

Token = tuple[int, str]  # (seq, text)
First = Callable[[aiohttp.ClientSession, str], Awaitable[tuple[str, list[Token]]]]
Rest = Callable[[aiohttp.ClientSession, str, str, int], Awaitable[list[Token]]]


def token_of(obj: dict[str, object]) -> Token:
    return int(obj["seq"]), str(obj["text"])  # type: ignore[call-overload]


async def sse_first(http: aiohttp.ClientSession, url: str) -> tuple[str, list[Token]]:
    got: list[Token] = []
    async with http.get(f"{url}/sse?{QUERY}") as resp:
        parser = SSEParser()
        while len(got) < KILL_AFTER:
            for event in parser.feed(await resp.content.readany()):
                if event.data and event.data != "[DONE]" and event.type == "message":
                    got.append(token_of(json.loads(event.data)))
        return resp.headers["X-Pushlab-Stream"], got


async def sse_rest(http: aiohttp.ClientSession, url: str, stream: str, after: int) -> list[Token]:
    async with http.get(f"{url}/sse", headers={"Last-Event-ID": f"{stream}:{after}"}) as resp:
        assert resp.status == 200, await resp.text()
        events = SSEParser().feed(await resp.read())
    assert not [e for e in events if e.type == "cancelled"], events[-3:]
    return [token_of(json.loads(e.data)) for e in events if e.data and e.data != "[DONE]"]


async def ndjson_first(http: aiohttp.ClientSession, url: str) -> tuple[str, list[Token]]:
    got: list[Token] = []
    async with http.get(f"{url}/ndjson?{QUERY}") as resp:
        while len(got) < KILL_AFTER:
            obj = json.loads(await resp.content.readline())
            if "type" not in obj:
                got.append(token_of(obj))
        return resp.headers["X-Pushlab-Stream"], got


async def ndjson_rest(
    http: aiohttp.ClientSession, url: str, stream: str, after: int
) -> list[Token]:
    async with http.get(f"{url}/ndjson?stream={stream}&after={after}") as resp:
        lines = [json.loads(line) for line in (await resp.read()).splitlines() if line]
    assert lines[-1] == {"type": "done", "stream": stream, "seq": 40, "reason": "done"}
    return [token_of(obj) for obj in lines if "type" not in obj]


async def websocket_first(http: aiohttp.ClientSession, url: str) -> tuple[str, list[Token]]:
    got: list[Token] = []
    async with http.ws_connect(f"{url}/ws") as ws:
        await ws.send_json({"type": "start", **PARAMS.as_dict()})
        stream = (await ws.receive_json())["stream"]
        while len(got) < KILL_AFTER:
            got.append(token_of(await ws.receive_json()))
    return stream, got


async def websocket_rest(
    http: aiohttp.ClientSession, url: str, stream: str, after: int
) -> list[Token]:
    got: list[Token] = []
    async with http.ws_connect(f"{url}/ws") as ws:
        await ws.send_json({"type": "resume", "stream": stream, "after": after})
        while (msg := await ws.receive_json())["type"] != "done":
            if msg["type"] == "token":
                got.append(token_of(msg))
    assert msg["reason"] == "done"
    return got


def poll_first(key: str, wait: str) -> First:
    async def first(http: aiohttp.ClientSession, url: str) -> tuple[str, list[Token]]:
        async with http.post(f"{url}/{key}?{QUERY}") as resp:
            stream = (await resp.json())["stream"]
        got: list[Token] = []
        while len(got) < KILL_AFTER:
            got += await poll_once(http, f"{url}/{key}/{stream}?after={len(got)}{wait}")
        return stream, got

    return first


def poll_rest(key: str, wait: str) -> Rest:
    async def rest(http: aiohttp.ClientSession, url: str, stream: str, after: int) -> list[Token]:
        got: list[Token] = []
        done = False
        for _ in range(500):  # bounded: 40 tokens come in far fewer polls
            async with http.get(f"{url}/{key}/{stream}?after={after + len(got)}{wait}") as resp:
                batch = await resp.json()
            got += [token_of(t) for t in batch["tokens"]]
            if done := batch["done"]:
                break
            await asyncio.sleep(0.02)  # a short poll's interval
        assert done and batch["reason"] == "done", batch
        return got

    return rest


async def poll_once(http: aiohttp.ClientSession, url: str) -> list[Token]:
    async with http.get(url) as resp:
        return [token_of(t) for t in (await resp.json())["tokens"]]


async def webtransport_first(http: aiohttp.ClientSession, url: str) -> tuple[str, list[Token]]:
    """A session on node A's QUIC endpoint, left after KILL_AFTER tokens (the lab's client)."""
    client = WebTransportClient(ClientOptions(abandon_after=KILL_AFTER))
    rec = StreamRecord("webtransport", "python", PARAMS.tokens)
    await client.run(Target.parse(url), PARAMS, rec)
    return rec.stream_id, [(seq, rec.texts[seq]) for seq in rec.seq]


async def webtransport_rest(
    http: aiohttp.ClientSession, url: str, stream: str, after: int
) -> list[Token]:
    """A session on node B's endpoint whose control stream resumes A's stream."""
    client = WebTransportClient()
    client.resume = ResumePoint(stream, after)
    rec = StreamRecord("webtransport", "python", PARAMS.tokens)
    await client.run(Target.parse(url), PARAMS, rec)
    assert rec.error == "", rec.error
    return [(seq, rec.texts[seq]) for seq in rec.seq]


# The resumable transports whose tokens arrive as they are made: the code is per transport
# by nature (its wire surface), which transports must have it is the registry's to say.
CASES: dict[str, tuple[First, Rest]] = {
    "sse": (sse_first, sse_rest),
    "ndjson": (ndjson_first, ndjson_rest),
    "websocket": (websocket_first, websocket_rest),
    "webtransport": (webtransport_first, webtransport_rest),
    "longpoll": (poll_first("longpoll", "&wait=2"), poll_rest("longpoll", "&wait=2")),
    "shortpoll": (poll_first("shortpoll", ""), poll_rest("shortpoll", "")),
}
COVERED = registry.keys_where(lambda t: t.resumable and t.incremental)


def test_every_incremental_resumable_transport_is_failed_over() -> None:
    assert set(CASES) == set(COVERED)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with RedisServer() as redis:
        yield redis.url


def node(redis_url: str, name: str) -> ServerProcess:
    return ServerProcess(["--log", redis_url, "--node-id", name, "--lease-ms", str(LEASE_MS)])


@pytest.mark.parametrize("key", COVERED)
async def test_a_stream_whose_node_is_killed_completes_on_another_node(
    redis_url: str, key: str
) -> None:
    first, rest = CASES[key]
    a, b = node(redis_url, "a"), node(redis_url, "b")
    a.start()
    try:
        b.start()
        async with aiohttp.ClientSession() as http, asyncio.timeout(20 * UNIT):
            stream, before = await first(http, a.url)
            os.kill(a.pid, signal.SIGKILL)  # mid-answer: 40 tokens take a second
            a.stop()  # reaps it; nothing left to stop
            after = await rest(http, b.url, stream, before[-1][0])
            async with http.get(f"{b.url}/streams/{stream}") as resp:
                state = await resp.json()
    finally:
        a.stop()
        b.stop()
    got = before + after
    assert [seq for seq, _ in got] == list(range(1, 41))  # every seq exactly once
    assert "".join(t for _, t in got) == "".join(texts(PARAMS))  # the seeded text, exactly
    assert state["state"] == "done" and state["tokens_emitted"] == 40


async def test_a_node_reports_the_shared_log_and_an_unreachable_one_is_one_line() -> None:
    with RedisServer() as redis:
        url = redis.url
        server = node(url, "solo")
        server.start()
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{server.url}/stats") as resp,
            ):
                log = (await resp.json())["log"]
        finally:
            server.stop()
    assert log["kind"] == "redis" and log["node"] == "solo" and log["available"] is True
    # the Redis is gone now: a node refuses to start, with one line and exit 1
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SERVER_PY), "--port", "0", "--log", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20 * UNIT)
    assert proc.returncode == 1 and out == b""
    assert err.decode().count("\n") == 1 and "cannot reach the log at redis://" in err.decode()


async def test_workers_share_one_port_and_a_stream_outlives_its_worker(redis_url: str) -> None:
    server = ServerProcess(["--log", redis_url, "--workers", "2", "--lease-ms", str(LEASE_MS)])
    server.start()
    try:
        pids = [int(p) for p in server.ready_fields["pids"].split(",")]
        assert server.ready_fields["workers"] == "2" and len(pids) == 2
        async with aiohttp.ClientSession() as http, asyncio.timeout(20 * UNIT):
            stream, before = await sse_first(http, server.url)
            # the worker that generates it: its node name ends in -w<index>
            owner = owner_of(redis_url, stream)
            os.kill(pids[int(owner.rsplit("-w", 1)[1])], signal.SIGKILL)
            after = await sse_rest(http, server.url, stream, before[-1][0])
    finally:
        server.stop()
    assert [seq for seq, _ in before + after] == list(range(1, 41))
    assert all(not _alive(pid) for pid in pids)  # the parent stopped the survivor by pid


def owner_of(url: str, stream: str) -> str:
    host, port = url.removeprefix("redis://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(encode_command("HGET", f"pl:m:{stream}", "owner"))
        parser = Parser()
        while not (replies := parser.replies()):
            parser.feed(sock.recv(4096))
    return replies[0].decode()  # type: ignore[attr-defined]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_resume_from_before_the_kept_history_is_a_410_and_a_1008(redis_url: str) -> None:
    server = ServerProcess(["--log", redis_url, "--log-max-len", "3"])
    server.start()
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(20 * UNIT):
            async with http.get(f"{server.url}/sse?tokens=10&rate=1000&ttft_ms=0") as resp:
                stream = resp.headers["X-Pushlab-Stream"]
                await resp.read()
            # another node's view: a node of its own that must read the trimmed log
            other = ServerProcess(["--log", redis_url])
            other.start()
            try:
                headers = {"Last-Event-ID": f"{stream}:2"}
                async with http.get(f"{other.url}/sse", headers=headers) as resp:
                    status, body = resp.status, await resp.json()
                async with http.ws_connect(f"{other.url}/ws") as ws:
                    await ws.send_json({"type": "resume", "stream": stream, "after": 2})
                    error = await ws.receive_json()
                    await ws.receive()
                    code = ws.close_code
                async with http.get(f"{other.url}/sse?stream={stream}&after=7") as resp:
                    kept = resp.status
            finally:
                other.stop()
    finally:
        server.stop()
    assert status == 410 and body["error"]["type"] == "history_gone_error"
    assert "keeps tokens from seq 8 on" in body["error"]["message"]
    assert error["type"] == "error" and error["error"]["type"] == "history_gone_error"
    assert code == 1008 and kept == 200
