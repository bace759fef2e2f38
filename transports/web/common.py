"""What every server half shares: configuration (declared in config.py), app keys, parameters,
errors, counters."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any

from aiohttp import web

from streams.errors import ParamError, PushlabError
from streams.hub import Hub, Stream, Token
from streams.params import GenParams, parse_number, parse_params
from transports.errors import error_body, exception_body
from transports.jsonin import check_media_type, load_json
from transports.web.config import ServerConfig
from transports.web.limits import read_body

log = logging.getLogger("pushlab.server")


HUB = web.AppKey("hub", Hub)
CONFIG = web.AppKey("config", ServerConfig)


class Counters:
    """Per-transport request and traffic counters for the /stats endpoint."""

    def __init__(self) -> None:
        self.by_transport: dict[str, dict[str, int]] = defaultdict(
            lambda: {
                "requests": 0,
                "open": 0,
                "tokens_sent": 0,
                "bytes_sent": 0,
                "errors": 0,
                "write_timeouts": 0,  # connections closed because their reader stopped reading
            }
        )

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.by_transport.items()}


COUNTERS = web.AppKey("counters", Counters)

# Who is asking, set by the guard middleware (transports/web/guard.py) before any handler:
# the identity a credential proved ("" when --auth is off), and the key one client's quotas
# are counted under (its identity, else its address).
IDENTITY_KEY = web.RequestKey("pushlab_identity", str)
CLIENT_KEY = web.RequestKey("pushlab_client", str)


def owner_of(request: web.Request) -> str:
    """The identity that owns what this request creates, and must own what it reads."""
    return request.get(IDENTITY_KEY, "")


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
    """Parameters from the query string, merged with a JSON object body on POST. A name
    given twice (twice in the query, or in both the query and the body) is a ParamError:
    reading one of the two silently would let a proxy or a page add a value the client
    never sees used."""
    values = query_values(request)
    body = await json_body(request)
    if body is None:
        return values
    if not isinstance(body, dict):
        raise ParamError("request body must be a JSON object", param=None)
    both = sorted(set(values) & set(body))
    if both:
        name = both[0][:64]
        raise ParamError(f"parameter '{name}' is both in the query and the body", param=name)
    values.update(body)
    return values


def query_values(request: web.Request) -> dict[str, object]:
    """The query string's parameters, each given once (else a ParamError naming it)."""
    query = request.query
    if len(query) != len(query.keys()):  # keys() are distinct, items() are not
        seen: set[str] = set()
        for name, _ in query.items():
            if name in seen:
                raise ParamError(f"parameter '{name[:64]}' is given twice", param=name[:64])
            seen.add(name)
    return dict(query)


async def json_body(request: web.Request) -> Any:
    """A POST's JSON body (None when there is none), read with the one safe loader
    (transports/jsonin.py). A non-empty body must be declared JSON: a page of another
    origin can POST `text/plain` without a CORS preflight, so nothing else is read (415)."""
    if request.method != "POST" or not request.can_read_body:
        return None
    raw = await read_body(request)  # at most client_max_size (64 KiB, server.py), else a 413
    if not raw:
        return None
    check_media_type(request.content_type, request.charset)
    return load_json(raw)


async def open_stream(
    request: web.Request, values: Mapping[str, object], extra: frozenset[str] = frozenset()
) -> tuple[Stream, int]:
    """Create a stream from generation params, or find the one to resume (`stream`, `after`)."""
    hub = request.app[HUB]
    if "stream" in values:
        unknown = sorted(set(values) - RESUME_PARAMS - extra)
        if unknown:
            raise ParamError(f"unknown parameter '{unknown[0]}' with 'stream'", param=unknown[0])
        stream = await hub.readable(str(values["stream"]), owner=owner_of(request))
        after = checked_after(values, stream)
        if after < stream.first_seq - 1:
            stream = await hub.readable(stream.id, after, owner=owner_of(request))  # HistoryGone
        return stream, after
    params: GenParams = parse_params(values, allowed_extra=extra)
    return await hub.create(params, owner=owner_of(request), client=client_of(request)), 0


def checked_after(values: Mapping[str, object], stream: Stream) -> int:
    """The resume cursor `after`: 0 <= after <= the stream's planned token count."""
    return int(parse_number(values, "after", 0, 0, stream.params.tokens, integer=True))


def json_response(obj: object, status: int = 200) -> web.Response:
    """`obj` as UTF-8 JSON. Text that UTF-8 cannot encode (a lone surrogate: aiohttp decodes
    header bytes that are not UTF-8 with surrogateescape, and error messages quote headers)
    is sent as a JSON `\\uXXXX` escape, so any message makes a valid body."""
    body = json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return web.Response(body=body, status=status, content_type="application/json",
                        charset="utf-8")  # fmt: skip


def error_response(exc: PushlabError, *, openai: bool = False) -> web.Response:
    """The JSON error for `exc` (OpenAI's shape for /v1, which its SDKs read)."""
    resp = json_response(exception_body(exc, openai=openai), status=exc.status)
    if exc.retry_after_s is not None:
        resp.headers["Retry-After"] = retry_after(exc.retry_after_s)
    if exc.status == 401:  # RFC 6750 section 3: the scheme a client should use
        resp.headers["WWW-Authenticate"] = 'Bearer realm="pushlab"'
    return resp


def retry_after(seconds: float) -> str:
    """The Retry-After value: whole seconds (RFC 9110 section 10.2.3), at least 1."""
    return str(max(1, math.ceil(seconds)))


_HTTP_TYPES = {404: "not_found_error", 405: "method_not_allowed", 413: "request_too_large"}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Translate every error at the boundary into the one JSON error shape. Once a response
    has begun (a stream's headers, a WebSocket's 101) no other can be written into it: the
    error goes on to aiohttp, which logs it and closes the connection."""
    try:
        return await handler(request)
    except Exception as exc:
        started = request.writer.output_size > 0
        redirect = isinstance(exc, web.HTTPException) and exc.status < 400
        if started or redirect or isinstance(exc, ConnectionError):
            raise
        return _error_response(request, exc)


def _error_response(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, PushlabError):
        return error_response(exc, openai=request.path.startswith("/v1/"))
    if isinstance(exc, web.HTTPException):
        body = error_body(exc.reason, _HTTP_TYPES.get(exc.status, "http_error"))
        resp = json_response(body, status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
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
    """The stream's tokens after `after`, in batches of at most WRITE_CHUNK_BYTES as they
    appear, while counted as a listener; an empty batch each time `heartbeat_s` (0: never)
    passes without a token; ends once the stream has ended and everything was yielded. Use
    with `contextlib.aclosing`."""
    sent = after
    with stream.listening():
        while True:
            backlog = stream.since(sent)
            if backlog:
                start = 0
                while start < len(backlog):
                    end = chunk_end(backlog, start)
                    sent += end - start
                    yield backlog[start:end]
                    start = end
            elif stream.done:
                return
            elif not await stream.wait_beyond(sent, heartbeat_s or None):
                yield []


# write(batch) -> the coroutine that writes `batch` ([] = a keep-alive) to one connection
Write = Callable[[list[Token]], Coroutine[Any, Any, None]]

# The most token bytes one `write` is handed (payloads, each counted with
# TOKEN_FRAMING_BYTES for its framing: an SSE id line, a WebSocket frame header), at least one
# token. A batch lands in the transport's buffer whole before the writer waits for it to
# drain, and aiohttp's drain threshold (StreamWriter.write's LIMIT; the WebSocket handler's
# writer_limit, set to this) and asyncio's default high-water mark are 64 KiB: with chunks of
# this size the buffer holds about one chunk beyond the high-water mark whatever the
# backlog, 74-170 KB at most per connection in tests/test_bounds.py (2026-11-30). Before,
# a reader's whole backlog was joined into one write: 2-3 MB there for a finished
# 20,000-token stream (issue 14). Larger chunks would save nothing measurable: one 64 KiB
# write is ~600 tokens of ~80 bytes, so the per-write cost (a join, a transport.write, a
# syscall) is already amortised.
WRITE_CHUNK_BYTES = 64 * 1024
TOKEN_FRAMING_BYTES = 32


def chunk_end(tokens: list[Token], start: int, limit_bytes: int = WRITE_CHUNK_BYTES) -> int:
    """The end of a chunk of `tokens` from `start`: at least one token, and no more than fit
    in `limit_bytes` with each payload counted with TOKEN_FRAMING_BYTES."""
    # ~90 ns a token on the lab machine (2026-11-30), paid only by a reader catching up (a
    # resume, a slow socket), never by one written token at a time; list/accumulate/bisect
    # in C measured no faster
    size = 0
    for end in range(start, len(tokens)):
        size += len(tokens[end].payload) + TOKEN_FRAMING_BYTES
        if size > limit_bytes:
            return max(end, start + 1)
    return len(tokens)


class WriteTimeout(ConnectionError):
    """A write waited `write_timeout_s` for the socket to drain: the reader stopped reading.
    A ConnectionError, since the connection is as good as gone: whoever owns it aborts it
    (`abort_stalled`)."""


async def within(pending: Awaitable[None], timeout_s: float) -> None:
    """Await a write that is waiting for the socket to drain, at most `timeout_s` (0: no
    limit), else WriteTimeout. Only writes that already suspended come here: a write that
    finishes at once never sets a timer."""
    if not timeout_s:
        await pending
        return
    try:
        async with asyncio.timeout(timeout_s) as scope:
            await pending
    except TimeoutError:
        if not scope.expired():  # a TimeoutError from the write itself
            raise
        raise WriteTimeout(f"no write progress for {timeout_s:g} s") from None


async def written(write: Coroutine[Any, Any, None], timeout_s: float) -> None:
    """`await write`, but WriteTimeout when it waits more than `timeout_s` for the socket."""
    pending = _run_now(write)
    if pending is not None:
        await within(pending, timeout_s)


def abort_stalled(transport: asyncio.Transport | None, counters: dict[str, int]) -> None:
    """Close the connection of a reader that stopped reading (after a WriteTimeout). Abort,
    not close: a close would first wait for the buffered bytes nobody reads."""
    counters["write_timeouts"] += 1
    if transport is not None:
        transport.abort()


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

    Bounds (issue 14): each write gets at most one chunk (`chunk_end`), so a reader behind
    by a long backlog adds to the transport's buffer one chunk at a time, each after the
    previous one drained. A write that suspended, and only such a write, is awaited with
    the `write_timeout_s` timer (`within`): a reader that stopped reading gets WriteTimeout
    and stops counting as a listener, so the hub's idle reaper can end its stream.
    """

    __slots__ = ("error", "heartbeat_s", "last_s", "loop", "sent", "stream", "timer",
                 "unfinished", "wakeup", "write", "write_timeout_s")  # fmt: skip

    def __init__(self, stream: Stream, after: int, write: Write, heartbeat_s: float,
                 write_timeout_s: float) -> None:  # fmt: skip
        self.stream, self.sent, self.write, self.heartbeat_s = stream, after, write, heartbeat_s
        self.write_timeout_s = write_timeout_s
        self.loop = asyncio.get_running_loop()
        self.last_s = self.loop.time()  # the last write: the keep-alive counts from it
        self.wakeup: asyncio.Future[None] | None = None  # set while the task sleeps
        self.unfinished: _Unfinished | None = None
        self.error: Exception | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        stream, loop = self.stream, self.loop
        while True:
            backlog = stream.since(self.sent)
            if backlog:
                start = 0
                while start < len(backlog):  # one chunk per write, each after the last drained
                    end = chunk_end(backlog, start)
                    self.sent += end - start
                    await written(self.write(backlog[start:end]), self.write_timeout_s)
                    self.last_s = loop.time()
                    start = end
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
                    await within(unfinished, self.write_timeout_s)
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
        if len(batch) > 1:  # rare: one token per callback is the rule
            end = chunk_end(batch, 0)
            if end < len(batch):  # more than one write's worth: the task writes the rest
                self._send(batch[:end])
                self._hand_over()
                return
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


async def deliver(stream: Stream, after: int, write: Write, heartbeat_s: float = 0.0,
                  write_timeout_s: float = 0.0) -> None:  # fmt: skip
    """Write the stream's tokens after `after` with `write(batch)` as they appear, at most
    WRITE_CHUNK_BYTES per batch, while counted as a listener, until the stream has ended and
    every token was written; `write([])` is the keep-alive, each time `heartbeat_s` (0:
    never) passes without a write; WriteTimeout when a write waits `write_timeout_s` (0: no
    limit) for the socket. `follow` without the async generator, the future per token and
    the task switch: while the reader is caught up, the emitting callback writes
    (`_Deliverer`)."""
    with stream.listening():
        await _Deliverer(stream, after, write, heartbeat_s, write_timeout_s).run()


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
    """Send a streaming response's headers, run its pump, and account for how it ended; a
    reader that stopped reading (WriteTimeout) loses its connection."""
    await resp.prepare(request)
    counters["open"] += 1
    try:
        await pump()
    except WriteTimeout:
        abort_stalled(request.transport, counters)
    except ConnectionError:
        counters["errors"] += 1
    finally:
        counters["open"] -= 1
        await reader_gone(request, stream)
    return resp


async def send_body(
    request: web.Request,
    resp: web.StreamResponse,
    parts: Iterable[bytes | memoryview],
    counters: dict[str, int],
) -> web.StreamResponse:
    """Send `resp` with `parts` (each at most about WRITE_CHUNK_BYTES) as its body, one write
    each, so a long answer never sits in the transport's buffer whole; a reader that stops
    reading for `write_timeout_s` loses its connection. Set `resp.content_length` first to
    send a body of known length unchunked."""
    timeout_s = request.app[CONFIG].write_timeout_s
    try:
        await resp.prepare(request)
        for part in parts:
            await written(resp.write(part), timeout_s)
        await written(resp.write_eof(), timeout_s)
    except WriteTimeout:
        abort_stalled(request.transport, counters)
    except ConnectionError:
        counters["errors"] += 1
    return resp


def pieces(data: bytes, size: int = WRITE_CHUNK_BYTES) -> Iterator[memoryview]:
    """`data` in consecutive views of at most `size` bytes (no copies)."""
    view = memoryview(data)
    return (view[i : i + size] for i in range(0, len(data), size))
