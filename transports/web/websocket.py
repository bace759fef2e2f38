"""WebSocket server half: `GET /ws`, one stream at a time per connection.

Message schema in transports/websocket.py; compression (permessage-deflate) only when the
server was started with `ws_compress`, since it changes the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from streams.errors import ParamError, PushlabError
from streams.hub import Stream
from transports import websocket as codec
from transports.errors import exception_body
from transports.web.common import CONFIG, COUNTERS, HUB, follow, reader_gone

KEY = "websocket"
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
    )
    await ws.prepare(request)
    counters["open"] += 1
    sender: asyncio.Task[None] | None = None
    stream: Stream | None = None
    try:
        async for msg in ws:
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
                    request.app[HUB].cancel(stream.id)
                    continue
                if sender is not None and not sender.done():
                    raise ParamError("a stream is already running on this connection", param="type")
                stream, after = open_for(request, command)
            except PushlabError as exc:
                counters["errors"] += 1
                await fail(ws, exc, codec.CLOSE_POLICY_VIOLATION)
                break
            sender = asyncio.create_task(pump(ws, stream, after, counters))
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        if stream is not None:
            reader_gone(request, stream)
        counters["open"] -= 1
    return ws


def open_for(request: web.Request, command: codec.Start | codec.Resume) -> tuple[Stream, int]:
    hub = request.app[HUB]
    if isinstance(command, codec.Start):
        return hub.create(command.params), 0
    stream = hub.readable(command.stream)
    if command.after > stream.params.tokens:
        raise ParamError(f"'after' {command.after} is beyond the stream's end", param="after")
    return stream, command.after


async def fail(ws: web.WebSocketResponse, exc: PushlabError, code: int) -> None:
    """Tell the client what was wrong, then close cleanly (RFC 6455 section 7.1.2)."""
    await ws.send_frame(codec.encode_error(exception_body(exc)), WSMsgType.TEXT)
    await ws.close(code=code, message=exc.message[:120].encode())


async def pump(
    ws: web.WebSocketResponse, stream: Stream, after: int, counters: dict[str, int]
) -> None:
    """Send the stream's tokens after `after` as they appear, then `done`."""
    text = WSMsgType.TEXT
    await ws.send_frame(codec.encode_started(stream.id, after), text)
    async with contextlib.aclosing(follow(stream, after)) as batches:
        async for batch in batches:
            for token in batch:
                message = codec.encode_token_message(token.payload)
                await ws.send_frame(message, text)
                counters["bytes_sent"] += len(message)
            counters["tokens_sent"] += len(batch)
    await ws.send_frame(codec.encode_done(stream.id, stream.last_seq, stream.reason), text)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws", handle)
