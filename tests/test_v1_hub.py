"""/v1 and the hub: each token is JSON-encoded once, into the bytes /v1 sends, and a whole
answer makes the hub encode nothing (issue 10: the hub used to encode an envelope /v1 threw
away)."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support import UNIT, Served
from transports import openai as codec
from transports.token import loads
from transports.web.common import HUB

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tokens": 6,
        "rate": 1000, "ttft_ms": 0, "seed": 2}  # fmt: skip


async def test_a_streamed_answer_sends_the_hubs_payloads_as_they_are(served: Served) -> None:
    async with asyncio.timeout(10 * UNIT), aiohttp.ClientSession() as http:
        url = f"{served.url}/v1/chat/completions"
        async with http.post(url, json={**BODY, "stream": True}) as resp:
            stream_id = resp.headers["X-Pushlab-Stream"]
            sent = await resp.read()
    log = served.app[HUB].local(stream_id).log
    assert len(log) == 6
    framed = b"".join(codec.event(t.payload) for t in log)
    assert sent.startswith(framed)  # the payload *is* the chunk: no second encoding
    tokens = [codec.decode_chunk(loads(t.payload)).token for t in log]
    assert [(t.seq, t.text) for t in tokens if t] == [(t.seq, t.text) for t in log]


async def test_a_whole_answer_leaves_the_payloads_empty(served: Served) -> None:
    url = f"{served.url}/v1/chat/completions"
    async with (
        asyncio.timeout(10 * UNIT),
        aiohttp.ClientSession() as http,
        http.post(url, json=BODY) as resp,
    ):
        answer = await resp.json()
    log = served.app[HUB].local(answer["id"].removeprefix("chatcmpl-")).log
    assert [t.payload for t in log] == [b""] * 6
    assert "".join(t.text for t in log) == answer["choices"][0]["message"]["content"]
