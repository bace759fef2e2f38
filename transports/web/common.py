"""What every server half shares: configuration (declared in config.py), app keys, parameters,
errors, counters."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

from aiohttp import web

from streams.errors import ParamError, PushlabError
from streams.hub import Hub, Stream, Token
from streams.params import GenParams, parse_number, parse_params
from transports.errors import error_body, exception_body
from transports.web.config import ServerConfig

log = logging.getLogger("pushlab.server")


HUB = web.AppKey("hub", Hub)
CONFIG = web.AppKey("config", ServerConfig)


class Counters:
    """Per-transport request and traffic counters for the /stats endpoint."""

    def __init__(self) -> None:
        self.by_transport: dict[str, dict[str, int]] = defaultdict(
            lambda: {"requests": 0, "open": 0, "tokens_sent": 0, "bytes_sent": 0, "errors": 0}
        )

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.by_transport.items()}


COUNTERS = web.AppKey("counters", Counters)

# Parameters a transport reads itself, beside the generation parameters.
RESUME_PARAMS = frozenset({"stream", "after"})


async def request_values(request: web.Request) -> dict[str, object]:
    """Parameters from the query string, merged with a JSON object body on POST."""
    values: dict[str, object] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError):
            raise ParamError("request body must be a JSON object", param=None) from None
        if body is not None and not isinstance(body, dict):
            raise ParamError("request body must be a JSON object", param=None)
        values.update(body or {})
    return values


def open_stream(
    request: web.Request, values: Mapping[str, object], extra: frozenset[str] = frozenset()
) -> tuple[Stream, int]:
    """Create a stream from generation params, or find the one to resume (`stream`, `after`)."""
    hub = request.app[HUB]
    if "stream" in values:
        unknown = sorted(set(values) - RESUME_PARAMS - extra)
        if unknown:
            raise ParamError(f"unknown parameter '{unknown[0]}' with 'stream'", param=unknown[0])
        stream = hub.readable(str(values["stream"]))
        return stream, checked_after(values, stream)
    params: GenParams = parse_params(values, allowed_extra=extra)
    return hub.create(params), 0


def checked_after(values: Mapping[str, object], stream: Stream) -> int:
    """The resume cursor `after`: 0 <= after <= the stream's planned token count."""
    return int(parse_number(values, "after", 0, 0, stream.params.tokens))


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def error_response(exc: PushlabError) -> web.Response:
    return json_response(exception_body(exc), status=exc.status)


_HTTP_TYPES = {404: "not_found_error", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Translate every error at the boundary into the one JSON error shape."""
    try:
        return await handler(request)
    except PushlabError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = error_body(exc.reason, _HTTP_TYPES.get(exc.status, "http_error"))
        resp = json_response(body, status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(error_body(f"internal error: {type(exc).__name__}", "server_error"),
                             status=500)  # fmt: skip


def streaming_headers(config: ServerConfig, content_type: str, stream: Stream) -> dict[str, str]:
    headers = {
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        "X-Pushlab-Stream": stream.id,
    }
    if config.accel_buffering_header:
        headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer this response
    return headers


async def follow(
    stream: Stream, after: int, heartbeat_s: float = 0.0
) -> AsyncGenerator[list[Token], None]:
    """The stream's tokens after `after`, in batches as they appear, while counted as a
    listener; an empty batch each time `heartbeat_s` (0: never) passes without a token; ends
    once the stream has ended and everything was yielded. Use with `contextlib.aclosing`."""
    sent = after
    with stream.listening():
        while True:
            batch = stream.since(sent)
            if batch:
                sent += len(batch)
                yield batch
            elif stream.done:
                return
            elif not await stream.wait_beyond(sent, heartbeat_s or None):
                yield []


def reader_gone(request: web.Request, stream: Stream) -> None:
    """A streaming reader's connection ended before the stream did: with
    `cancel_on_disconnect` the stream stops now (nothing to resume later); otherwise it keeps
    generating for a reconnect until the idle timeout."""
    if request.app[CONFIG].cancel_on_disconnect and not stream.done:
        request.app[HUB].cancel(stream.id, reason="disconnect")


async def serve_stream(
    request: web.Request,
    resp: web.StreamResponse,
    stream: Stream,
    counters: dict[str, int],
    pump: Callable[[], Awaitable[None]],
) -> web.StreamResponse:
    """Send a streaming response's headers, run its pump, and account for how it ended."""
    await resp.prepare(request)
    counters["open"] += 1
    try:
        await pump()
    except ConnectionError:
        counters["errors"] += 1
    finally:
        counters["open"] -= 1
        reader_gone(request, stream)
    return resp
