"""OpenAI-compatible server half: `POST /v1/chat/completions`, `GET /v1/models`.

Bytes from transports/openai.py. Errors here use OpenAI's shape (with `code`). A /v1 stream
cannot be resumed (it carries no event ids), so a client that disconnects cancels it.

The hub encodes each token once with the encoder the stream is created with: a streamed
answer's is its `ChunkEncoder`, so the payload *is* the chunk and this handler only frames it;
a whole answer's is `no_payload`, since only the texts are joined. (Before, the hub encoded
the openai envelope for every /v1 token and this handler threw it away.)
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import aclosing

from aiohttp import web

from streams.errors import PushlabError
from streams.hub import Stream, no_payload
from transports import openai as codec
from transports.errors import exception_body
from transports.web.common import (
    CONFIG,
    COUNTERS,
    HUB,
    WriteTimeout,
    abort_stalled,
    client_of,
    follow,
    json_body,
    owner_of,
    pieces,
    retry_after,
    send_body,
    written,
)

KEY = "openai"


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(exc: PushlabError) -> web.Response:
    # json.dumps' own spacing and ASCII escapes: these bytes are what /v1 has always sent
    resp = _json(json.dumps(exception_body(exc, openai=True)).encode(), status=exc.status)
    if exc.retry_after_s is not None:  # 429 and 503: the SDK's retry honours Retry-After
        resp.headers["Retry-After"] = retry_after(exc.retry_after_s)
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    counters = request.app[COUNTERS].by_transport[KEY]
    counters["requests"] += 1
    try:
        body = await json_body(request)  # the OpenAI SDKs send application/json
        chat = codec.parse_request(body)
        tokens = min(chat.params.tokens, chat.max_tokens or chat.params.tokens)
        reason = "length" if tokens < chat.params.tokens else "stop"
        created_s = int(time.time())
        encoder = codec.ChunkEncoder(chat, created_s)
        stream = await request.app[HUB].create(
            dataclasses.replace(chat.params, tokens=tokens),
            messages=body["messages"],
            encode=encoder if chat.stream else no_payload,
            owner=owner_of(request),
            client=client_of(request),
        )
    except PushlabError as exc:
        counters["errors"] += 1
        return _error(exc)
    if not chat.stream:
        return await _whole(request, chat, stream, created_s, reason, counters)
    return await _streamed(request, encoder, stream, reason, counters)


async def _whole(request: web.Request, chat: codec.ChatRequest, stream: Stream, created_s: int,
                 reason: str, counters: dict[str, int]) -> web.StreamResponse:  # fmt: skip
    """The answer as one JSON body once generation has ended. The body is built whole (the
    token budget bounds it: 100,000 tokens) and written in WRITE_CHUNK_BYTES pieces, each
    under the write timeout, so a client that stops reading neither holds it in the
    transport's buffer nor its connection open."""
    with stream.listening():
        while not stream.done:
            await stream.wait_beyond(stream.last_seq)
    if stream.reason != "done":
        return _error(PushlabError(f"generation ended early: {stream.reason}"))
    text = "".join(t.text for t in stream.log)
    completion_id = codec.completion_id(stream.id)
    body = codec.completion(chat, completion_id, created_s, text, stream.last_seq, reason)
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    return await send_body(request, resp, pieces(body), counters)


async def _streamed(request: web.Request, encoder: codec.ChunkEncoder, stream: Stream,
                    reason: str, counters: dict[str, int]) -> web.StreamResponse:  # fmt: skip
    config = request.app[CONFIG]
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Pushlab-Stream": stream.id}  # fmt: skip
    if config.accel_buffering_header:
        headers["X-Accel-Buffering"] = "no"
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    timeout_s = config.write_timeout_s
    counters["open"] += 1
    try:
        async with aclosing(follow(stream, 0, config.heartbeat_s)) as batches:
            async for batch in batches:
                data = b"".join(codec.event(t.payload) for t in batch)  # encoded by the hub
                # a comment: no id, no data
                await written(resp.write(data or b": keep-alive\n\n"), timeout_s)
                counters["tokens_sent"] += len(batch)
        if stream.reason == "done":
            end = encoder.finish(stream.id, reason, stream.last_seq)
        else:
            end = encoder.error(stream.reason)
        await written(resp.write(end), timeout_s)
        await written(resp.write_eof(), timeout_s)
    except WriteTimeout:
        abort_stalled(request.transport, counters)
    except ConnectionError:
        counters["errors"] += 1
    finally:
        counters["open"] -= 1
        if not stream.done:  # nobody can resume a /v1 stream: stop generating for nobody
            await request.app[HUB].cancel(stream.id, reason="disconnect")
    return resp


async def list_models(request: web.Request) -> web.Response:
    return _json(codec.models())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
