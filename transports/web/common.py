"""What every server half shares: configuration (declared in config.py), app keys, parameters,
errors, counters."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any

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

# Who is asking, set by the guard middleware (transports/web/guard.py) before any handler:
# the identity a credential proved ("" when --auth is off), and the key one client's quotas
# are counted under (its identity, else its address).
IDENTITY_KEY = "pushlab.identity"
CLIENT_KEY = "pushlab.client"


def owner_of(request: web.Request) -> str:
    """The identity that owns what this request creates, and must own what it reads."""
    return str(request.get(IDENTITY_KEY, ""))


def client_of(request: web.Request) -> str:
    """The quota key of the client asking: `id:<identity>`, else `addr:<peer address>`."""
    key = request.get(CLIENT_KEY)
    if key is None:
        identity = owner_of(request)
        key = f"id:{identity}" if identity else f"addr:{request.remote or '?'}"
        request[CLIENT_KEY] = key
    return str(key)


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


async def open_stream(
    request: web.Request, values: Mapping[str, object], extra: frozenset[str] = frozenset()
) -> tuple[Stream, int]:
    """Create a stream from generation params, or find the one to resume (`stream`, `after`)."""
    hub = request.app[HUB]
    if "stream" in values:
        unknown = sorted(set(values) - RESUME_PARAMS - extra)
        if unknown:
            raise ParamError(f"unknown parameter '{unknown[0]}' with 'stream'", param=unknown[0])
        stream = await hub.readable(str(values["stream"]))
        after = checked_after(values, stream)
        if after < stream.first_seq - 1:
            stream = await hub.readable(stream.id, after)  # raises HistoryGone
        return stream, after
    params: GenParams = parse_params(values, allowed_extra=extra)
    return await hub.create(params), 0


def checked_after(values: Mapping[str, object], stream: Stream) -> int:
    """The resume cursor `after`: 0 <= after <= the stream's planned token count."""
    return int(parse_number(values, "after", 0, 0, stream.params.tokens))


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def error_response(exc: PushlabError) -> web.Response:
    resp = json_response(exception_body(exc), status=exc.status)
    if exc.retry_after_s is not None:
        resp.headers["Retry-After"] = retry_after(exc.retry_after_s)
    return resp


def retry_after(seconds: float) -> str:
    """The Retry-After value: whole seconds (RFC 9110 section 10.2.3), at least 1."""
    return str(max(1, math.ceil(seconds)))


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


# write(batch) -> the coroutine that writes `batch` ([] = a keep-alive) to one connection
Write = Callable[[list[Token]], Coroutine[Any, Any, None]]


class _Unfinished:
    """Awaiting it finishes a coroutine that `_run_now` ran until it first suspended on
    `pending`: the awaiting task takes the coroutine over where it stopped (cancellation and
    results are passed through as `await coro` would pass them)."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, None], pending: object) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, None]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                value = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation: the coroutine decides
                try:
                    pending = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                pending = coro.send(value)
            except StopIteration:
                return


def _run_now(coro: Coroutine[Any, Any, None]) -> _Unfinished | None:
    """Run `coro` right here until it finishes (None) or suspends (what finishes it)."""
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return _Unfinished(coro, pending)


class _Deliverer:
    """One reader of `deliver`: the task half (`run`) and the synchronous half (`push`,
    attached to the stream while the reader is caught up).

    Why: a token used to reach its socket only after the emitting timer callback returned,
    the reader's future woke its task and the loop had run every other callback due in the
    same tick first; libuv fires timers at millisecond granularity, so at 20,000 tokens/s
    about twenty emissions run back to back, then twenty tasks: 0.3 ms between a token's
    stamp and its write at the median (benchmarks/analysis.md, 2026-11-30). `push` writes
    in the emitting callback itself, with the transport's own write coroutine run to its
    end right there: aiohttp's `write()`/`send_frame()` only suspend to wait for a full
    socket buffer to drain (or to compress), and when one does suspend, the task takes
    that coroutine over (`_Unfinished`) and writes the rest itself, awaiting as before.
    Nothing is written twice or skipped: `sent` is the one cursor, and only one half holds
    it at a time (push only while attached and the task asleep). A write that raises (the
    connection closed) hands the error to the task, which raises it where `await write`
    would have; the emitting callback never sees it.
    """

    __slots__ = ("error", "heartbeat_s", "last_s", "loop", "sent", "stream", "timer",
                 "unfinished", "wakeup", "write")  # fmt: skip

    def __init__(self, stream: Stream, after: int, write: Write, heartbeat_s: float) -> None:
        self.stream, self.sent, self.write, self.heartbeat_s = stream, after, write, heartbeat_s
        self.loop = asyncio.get_running_loop()
        self.last_s = self.loop.time()  # the last write: the keep-alive counts from it
        self.wakeup: asyncio.Future[None] | None = None  # set while the task sleeps
        self.unfinished: _Unfinished | None = None
        self.error: Exception | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        stream, loop = self.stream, self.loop
        while True:
            batch = stream.since(self.sent)
            if batch:
                self.sent += len(batch)
                await self.write(batch)  # aiohttp waits for the socket here as it needs
                self.last_s = loop.time()
                continue
            if stream.done:
                return
            self.wakeup = loop.create_future()  # caught up: push writes from now on
            stream.attach(self.push)
            if self.heartbeat_s:
                self.timer = loop.call_at(self.last_s + self.heartbeat_s, self.beat)
            try:
                await self.wakeup
                if self.unfinished is not None:
                    unfinished, self.unfinished = self.unfinished, None
                    await unfinished
            finally:
                stream.detach(self.push)
                self.wakeup = None
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                if self.unfinished is not None:  # cancelled before taking it over
                    self.unfinished.coro.close()
                    self.unfinished = None
            if self.error is not None:
                error, self.error = self.error, None
                raise error

    def push(self) -> None:
        """From the callback that appended tokens or ended the stream (Stream.attach)."""
        if self.wakeup is None or self.wakeup.done():
            return  # the task holds the cursor now
        batch = self.stream.since(self.sent)
        if batch:
            self._send(batch)
        if self.stream.done:
            self._hand_over()

    def beat(self) -> None:
        """The keep-alive timer: one per reader, moved on by each write, not one per wait."""
        self.timer = None
        if self.wakeup is None or self.wakeup.done():
            return
        due = self.last_s + self.heartbeat_s
        if self.loop.time() < due:  # something was written since this timer was set
            self.timer = self.loop.call_at(due, self.beat)
            return
        self._send([])
        if not self.wakeup.done():
            self.timer = self.loop.call_at(self.last_s + self.heartbeat_s, self.beat)

    def _send(self, batch: list[Token]) -> None:
        self.sent += len(batch)
        self.last_s = self.loop.time()
        try:
            self.unfinished = _run_now(self.write(batch))
        except Exception as exc:  # the connection is gone, mostly: the task raises it
            self.error = exc
            self._hand_over()
            return
        if self.unfinished is not None:  # waiting for the socket: the task finishes it
            self._hand_over()

    def _hand_over(self) -> None:
        self.stream.detach(self.push)
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)


async def deliver(stream: Stream, after: int, write: Write, heartbeat_s: float = 0.0) -> None:
    """Write the stream's tokens after `after` with `write(batch)` as they appear, while
    counted as a listener, until the stream has ended and every token was written;
    `write([])` is the keep-alive, each time `heartbeat_s` (0: never) passes without a
    write. `follow` without the async generator, the future per token and the task switch:
    while the reader is caught up, the emitting callback writes (`_Deliverer`)."""
    with stream.listening():
        await _Deliverer(stream, after, write, heartbeat_s).run()


async def reader_gone(request: web.Request, stream: Stream) -> None:
    """A streaming reader's connection ended before the stream did: with
    `cancel_on_disconnect` the stream stops now (nothing to resume later); otherwise it keeps
    generating for a reconnect until the idle timeout."""
    if request.app[CONFIG].cancel_on_disconnect and not stream.done:
        await request.app[HUB].cancel(stream.id, reason="disconnect")


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
        await reader_gone(request, stream)
    return resp
