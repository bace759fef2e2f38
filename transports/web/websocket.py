"""WebSocket server half: `GET /ws`, one stream at a time per connection.

Message schema in transports/websocket.py; compression (permessage-deflate) only when the
server was started with `ws_compress`, since it changes the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from streams.errors import ParamError, PushlabError
from streams.hub import Stream, Token
from transports import websocket as codec
from transports.errors import exception_body
from transports.web.common import (
    CONFIG,
    COUNTERS,
    HUB,
    WRITE_CHUNK_BYTES,
    WriteTimeout,
    abort_stalled,
    client_of,
    deliver,
    owner_of,
    reader_gone,
    written,
)

KEY = "websocket"
log = logging.getLogger("pushlab.server")
MAX_MESSAGE_BYTES = 64 * 1024


async def handle(request: web.Request) -> web.WebSocketResponse:
    counters = request.app[COUNTERS].by_transport[KEY]
    counters["requests"] += 1
    config = request.app[CONFIG]
    # the keep-alive of a WebSocket is a protocol ping (RFC 6455 5.5.2); the client's pong
    # answers it, and a quiet connection stays busy for the proxies in between
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat_s or None,
        compress=request.app[CONFIG].ws_compress,
        max_msg_size=MAX_MESSAGE_BYTES,
        # send_frame waits for the socket only after this many bytes (aiohttp: 256 KiB);
        # the writes' own bound (common.WRITE_CHUNK_BYTES), so a stalled reader holds as
        # little here as over HTTP (tests/test_bounds.py)
        writer_limit=WRITE_CHUNK_BYTES,
    )
    await ws.prepare(request)
    counters["open"] += 1
    sender: asyncio.Task[None] | None = None
    stream: Stream | None = None
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:  # the frame reader already closed (1009, 1002, 1007)
                counters["errors"] += 1
                break
            if msg.type != WSMsgType.TEXT:
                await fail(
                    ws,
                    ParamError("only JSON text messages are accepted"),
                    codec.CLOSE_UNSUPPORTED_DATA,
                )
                break
            try:
                command = codec.parse_client_message(msg.data)
                if isinstance(command, codec.Cancel):
                    if stream is None:
                        raise ParamError("nothing to cancel: no stream started on this connection")
                    await request.app[HUB].cancel(stream.id, owner=owner_of(request))
                    continue
                if sender is not None and not sender.done():
                    raise ParamError("a stream is already running on this connection", param="type")
                stream, after = await open_for(request, command)
            except PushlabError as exc:
                counters["errors"] += 1
                await fail(ws, exc, codec.CLOSE_POLICY_VIOLATION)
                break
            sender = asyncio.create_task(
                pump(ws, stream, after, counters, config.write_timeout_s, request.transport)
            )
    except ConnectionError:
        counters["errors"] += 1  # the client went away while we wrote
    except Exception as exc:  # after the 101 no HTTP error can be sent: an error frame, 1011
        log.error("websocket handler failed on %s", request.path, exc_info=exc)
        counters["errors"] += 1
        await fail(ws, PushlabError(f"internal error: {type(exc).__name__}"),
                   codec.CLOSE_INTERNAL_ERROR)  # fmt: skip
    finally:
        if sender is not None:
            sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, ConnectionError):
                pass
            except Exception as exc:
                log.error("websocket sender failed on %s", request.path, exc_info=exc)
        if stream is not None:
            await reader_gone(request, stream)
        counters["open"] -= 1
    return ws


async def open_for(request: web.Request, command: codec.Start | codec.Resume) -> tuple[Stream, int]:
    hub = request.app[HUB]
    if isinstance(command, codec.Start):
        return await hub.create(command.params, owner=owner_of(request),
                                client=client_of(request)), 0  # fmt: skip
    stream = await hub.readable(command.stream, command.after, owner=owner_of(request))
    if command.after > stream.params.tokens:
        raise ParamError(f"'after' {command.after} is beyond the stream's end", param="after")
    return stream, command.after


async def fail(ws: web.WebSocketResponse, exc: PushlabError, code: int) -> None:
    """Tell the client what was wrong, then close cleanly (RFC 6455 section 7.1.2); a
    client already gone is not an error of ours."""
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError):
        await ws.send_frame(codec.encode_error(exception_body(exc)), WSMsgType.TEXT)
        await ws.close(code=code, message=codec.close_reason(exc.message))


async def pump(
    ws: web.WebSocketResponse,
    stream: Stream,
    after: int,
    counters: dict[str, int],
    write_timeout_s: float = 0.0,
    transport: asyncio.Transport | None = None,
) -> None:
    """Send the stream's tokens after `after` as they appear, then `done`; a frame that
    waits `write_timeout_s` (0: no limit) for the socket aborts `transport` (the reader
    stopped reading; the stream stays resumable)."""
    try:
        await _send_all(ws, stream, after, counters, write_timeout_s)
    except WriteTimeout:
        abort_stalled(transport, counters)


async def _send_all(ws: web.WebSocketResponse, stream: Stream, after: int,
                    counters: dict[str, int], write_timeout_s: float) -> None:  # fmt: skip
    text, encode = WSMsgType.TEXT, codec.encode_token_message
    await written(ws.send_frame(codec.encode_started(stream.id, after), text), write_timeout_s)

    async def send_each(messages: list[bytes]) -> None:
        for message in messages:
            await ws.send_frame(message, text)

    def write(batch: list[Token]) -> Coroutine[Any, Any, None]:
        # often run by the hub's emitting callback itself (common.deliver): keep it plain
        counters["tokens_sent"] += len(batch)
        if len(batch) == 1:  # one frame per token: the common case at a paced rate
            message = encode(batch[0].payload)
            counters["bytes_sent"] += len(message)
            return ws.send_frame(message, text)
        messages = [encode(t.payload) for t in batch]
        counters["bytes_sent"] += sum(map(len, messages))
        return send_each(messages)

    await deliver(stream, after, write, write_timeout_s=write_timeout_s)
    done = codec.encode_done(stream.id, stream.last_seq, stream.reason)
    await written(ws.send_frame(done, text), write_timeout_s)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws", handle)
