"""The stream hub: every generation is a stream that lives independently of any connection.

Theory of operation
-------------------
`Hub.create(params)` plans the tokens (seeded generator) and sets a chain of event-loop
timers that append `Token(seq, t_emit_ns, text, payload)` to the stream's log at the planned
times (one timer callback per token; no task per stream).
Seqs run 1..N, so the tokens after seq `k` are `log[k:]`. Readers never own a buffer: each
keeps a cursor into the one log and awaits `wait_beyond(cursor)`; a slow or vanished reader
only falls behind in the log, which is bounded by `params.tokens` (itself bounded). That is
what makes resume after a reconnect, long polling and replay the same operation.

A stream's state moves running -> done | cancelled, never back. The reaper cancels a running
stream nobody has listened to for `idle_timeout_s` (a client that vanished), and forgets any
finished stream `retention_s` after it finished (after which a resume gets StreamNotFound).

`payload` is the token as its wire object (compact JSON), encoded once by the injected
`encode` function so that every transport and every reader shares the same bytes. A stream
may bring its own encoder (/v1 encodes its chunks there, once, instead of the envelope it
would not use), or `no_payload` when its reader uses only the texts: such a stream cannot be
read through another transport (`Hub.readable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import NamedTuple

from streams.errors import (
    HistoryGone,
    ParamError,
    PushlabError,
    StreamLimitError,
    StreamNotFound,
)
from streams.generator import Plan, plan
from streams.params import GenParams

# encode(stream_id, seq, t_emit_ns, text, params) -> the token's wire object as bytes
Encoder = Callable[[str, int, int, str, GenParams], bytes]
# source(params, messages) -> token texts as they arrive (an upstream model); None: generator
Source = Callable[[GenParams, "list[dict[str, object]] | None"], AsyncIterator[str]]

RUNNING, DONE, CANCELLED = "running", "done", "cancelled"


def no_payload(stream_id: str, seq: int, t_emit_ns: int, text: str, params: GenParams) -> bytes:
    """The encoder of a stream whose one reader needs the texts only (a whole /v1 answer)."""
    return b""


class Token(NamedTuple):
    """One emitted token. A tuple of atomic values: CPython's collector stops tracking such
    tuples, so a hub holding millions of them adds nothing to collection pauses."""

    seq: int
    t_emit_ns: int
    text: str
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class HubStats:
    streams_running: int
    streams_held: int
    streams_created: int
    streams_done: int
    streams_cancelled: int
    streams_idle_cancelled: int
    streams_expired: int
    tokens_emitted: int
    listeners: int


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Stream:
    """One generation's log and state; the producer appends, any number of readers follow."""

    # slots, not a __dict__: one Stream per open stream, thousands of them; tracemalloc, 1,000
    # Streams: 386 bytes each with a __dict__, 329 with slots (idle memory per connection is
    # a benchmark target)
    __slots__ = ("_pushers", "_timer", "_waiters", "created_s", "encode", "finished_ns",
                 "finished_s", "first_seq", "id", "last_listened_s", "listeners", "log",
                 "params", "plan", "reason", "state")  # fmt: skip

    def __init__(
        self, stream_id: str, params: GenParams, plan_: Plan, now_s: float, encode: Encoder
    ) -> None:
        self.id = stream_id
        self.params = params
        self.encode = encode
        self.plan = plan_
        self.log: list[Token] = []
        self.state = RUNNING
        self.reason = ""
        self.created_s = now_s
        self.finished_s: float | None = None
        self.finished_ns = 0  # time.time_ns() when it ended: comparable with clients' clocks
        self.last_listened_s = now_s
        self.listeners = 0
        # the first seq still held: 1 here; a stream read back from a trimmed shared log
        # starts later, and a resume from before it is told of the gap (Hub.readable)
        self.first_seq = 1
        self._waiters: list[asyncio.Future[bool]] = []
        self._pushers: tuple[Callable[[], None], ...] = ()  # see attach(); a shared () when none
        self._timer: asyncio.TimerHandle | None = None  # the next emission, while running

    @property
    def done(self) -> bool:
        return self.state != RUNNING

    @property
    def last_seq(self) -> int:
        return len(self.log)

    def since(self, after: int) -> list[Token]:
        """The tokens with seq > `after`, in order."""
        return self.log[after:]

    async def wait_beyond(self, after: int, timeout_s: float | None = None) -> bool:
        """Wait until a token with seq > `after` exists or the stream ended; False on timeout."""
        if len(self.log) > after or self.done:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        # a timer on the future itself: far cheaper per wait than an asyncio.timeout() scope
        timer = loop.call_later(timeout_s, _expire, fut) if timeout_s is not None else None
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if fut in self._waiters:  # timed out or cancelled: nobody will wake it now
                self._waiters.remove(fut)

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """Mark one reader attached for the duration (keeps the reaper away)."""
        self.listeners += 1
        try:
            yield
        finally:
            self.listeners -= 1
            self.last_listened_s = time.monotonic()

    def touch(self) -> None:
        """A poll counts as listening at this moment."""
        self.last_listened_s = time.monotonic()

    def _append(self, token: Token) -> None:
        self.log.append(token)
        self._wake()

    def _finish(self, state: str, reason: str) -> None:
        if self.done:
            return
        self.state, self.reason = state, reason
        self.finished_s = time.monotonic()
        self.finished_ns = time.time_ns()
        self._wake()

    def attach(self, push: Callable[[], None]) -> None:
        """Call `push()` synchronously, from the callback that appended them, each time new
        tokens are in the log or the stream ended, until `detach(push)`. For a reader that
        writes its socket itself (transports/web/common.py `deliver`): the token reaches the
        socket in the emitting callback instead of after the loop has run every other
        callback due in the same tick. `push` must not raise."""
        self._pushers += (push,)

    def detach(self, push: Callable[[], None]) -> None:
        self._pushers = tuple(p for p in self._pushers if p != push)  # ==: bound methods

    def _wake(self) -> None:
        if self._waiters:  # most wakes have none: no new list per token
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(True)
        for push in self._pushers:  # a tuple: a push may detach itself meanwhile
            push()

    def describe(self) -> dict[str, object]:
        return {
            "stream": self.id,
            "state": self.state,
            "reason": self.reason,
            "tokens_emitted": self.last_seq,
            "tokens_planned": self.params.tokens,
            "finished_ns": self.finished_ns,
            "listeners": self.listeners,
            "params": self.params.as_dict(),
        }


class Hub:
    """Creates, holds, cancels and forgets streams; see the module docstring."""

    def __init__(
        self,
        encode: Encoder,
        *,
        retention_s: float = 60.0,
        idle_timeout_s: float = 30.0,
        max_streams: int = 20_000,
        clock_ns: Callable[[], int] = time.time_ns,
        source: Source | None = None,
    ) -> None:
        self._encode = encode
        self.retention_s = retention_s
        self.idle_timeout_s = idle_timeout_s
        self.max_streams = max_streams
        self._clock_ns = clock_ns
        self._source = source
        self._relays: dict[str, asyncio.Task[None]] = {}
        self._streams: dict[str, Stream] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._counts = {"created": 0, "done": 0, "cancelled": 0, "idle": 0, "expired": 0}
        self._tokens_emitted = 0
        # sink(stream, token): called with each token just before it is appended (None: no
        # shared log; set by a subclass that mirrors the log elsewhere, streams/redislog.py)
        self._sink: Callable[[Stream, Token], None] | None = None

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="hub-reaper")

    async def aclose(self) -> None:
        for stream in self._streams.values():
            if stream._timer is not None:
                stream._timer.cancel()
                stream._timer = None
        for relay in list(self._relays.values()):
            relay.cancel()
        await asyncio.gather(*self._relays.values(), return_exceptions=True)
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        self._reaper = None

    async def create(
        self,
        params: GenParams,
        messages: list[dict[str, object]] | None = None,
        *,
        encode: Encoder | None = None,
    ) -> Stream:
        """Start a new stream generating `params` (or relaying the upstream source, with
        `messages` as the prompt when given), its payloads made by `encode` (default: the
        hub's); raises StreamLimitError when full."""
        if len(self._streams) >= self.max_streams:
            raise StreamLimitError(f"the server holds {self.max_streams} streams already")
        stream_id = secrets.token_hex(6)
        relay = self._source is not None
        stream = Stream(
            stream_id,
            params,
            Plan((), ()) if relay else plan(params),
            time.monotonic(),
            encode or self._encode,
        )
        self._streams[stream_id] = stream
        self._counts["created"] += 1
        self._register(stream, messages)
        if self._source is not None:
            task = asyncio.create_task(self._relay(stream, self._source(params, messages)))
            self._relays[stream_id] = task
            task.add_done_callback(lambda _: self._relays.pop(stream_id, None))
        else:
            loop = asyncio.get_running_loop()
            self._emit(stream, 0, loop.time(), loop)
        return stream

    async def _relay(self, stream: Stream, texts: AsyncIterator[str], seq: int = 0) -> None:
        """Append the upstream's tokens as they arrive, after seq `seq` (a continuation):
        t_emit_ns is their arrival here, so what clients measure is what the transport adds
        to the model's own timing."""
        sink = self._sink
        try:
            async for text in texts:
                seq += 1
                t_emit_ns = self._clock_ns()
                payload = stream.encode(stream.id, seq, t_emit_ns, text, stream.params)
                token = Token(seq, t_emit_ns, text, payload)
                if sink is not None:
                    sink(stream, token)
                stream._append(token)
                self._tokens_emitted += 1
                if seq >= stream.params.tokens:
                    break
        except PushlabError as exc:
            stream._finish(CANCELLED, f"upstream: {exc.message}"[:200])
            self._counts["cancelled"] += 1
            self._ended(stream)
            return
        if not stream.done:
            stream._finish(DONE, "done")
            self._counts["done"] += 1
            self._ended(stream)

    async def get(self, stream_id: str) -> Stream:
        """The stream `stream_id`; StreamNotFound when unknown or past retention."""
        return self.local(stream_id)

    async def describe(self, stream_id: str) -> dict[str, object]:
        """The stream's state, as `GET /streams/{id}` shows it."""
        return (await self.get(stream_id)).describe()

    def local(self, stream_id: str) -> Stream:
        """The stream `stream_id` as this process holds it (no I/O)."""
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamNotFound(
                f"no stream '{stream_id}' (unknown or expired)", param="stream"
            ) from None

    async def readable(self, stream_id: str, after: int | None = None) -> Stream:
        """`get` for a reader that frames the payloads from seq `after` on (a resume);
        ParamError when the stream has none (a whole /v1 answer, which only /v1 reads);
        HistoryGone when tokens after `after` are no longer held (a shared log trims)."""
        stream = await self.get(stream_id)
        if after is not None and after < stream.first_seq - 1:  # None: not known yet
            raise HistoryGone(
                f"stream '{stream_id}' keeps tokens from seq {stream.first_seq} on; "
                f"{after + 1}..{stream.first_seq - 1} are gone (resume with after="
                f"{stream.first_seq - 1} to continue past the gap)",
                param="after",
            )
        if stream.encode is no_payload:
            raise ParamError(f"stream '{stream_id}' can only be read at /v1", param="stream")
        return stream

    async def cancel(self, stream_id: str, reason: str = "cancelled") -> Stream:
        """Stop generating `stream_id` now; readers see the end with state `cancelled`."""
        return self.cancel_local(stream_id, reason)

    def cancel_local(self, stream_id: str, reason: str = "cancelled") -> Stream:
        """`cancel` of a stream this process holds (no I/O)."""
        stream = self.local(stream_id)
        if not stream.done:
            self._counts["cancelled"] += 1
            stream._finish(CANCELLED, reason)
            relay = self._relays.pop(stream_id, None)
            if relay is not None:
                relay.cancel()
            if stream._timer is not None:
                stream._timer.cancel()
                stream._timer = None
            self._ended(stream)
        return stream

    def _register(self, stream: Stream, messages: list[dict[str, object]] | None) -> None:
        """Called once for each new stream, before its first token; the shared log records
        the stream there."""

    def _ended(self, stream: Stream) -> None:
        """Called once when a stream this hub generates ends (done or cancelled); the shared
        log records the end there."""

    def _emit(self, stream: Stream, i: int, start: float, loop: asyncio.AbstractEventLoop) -> None:
        """Append every token due by now from index `i` on, then set a timer for the next.

        A chain of loop timers rather than a task per stream: one callback per token, no
        coroutine switch, and cancelling is cancelling the pending timer."""
        plan_, params, encode, sink = stream.plan, stream.params, stream.encode, self._sink
        n, first, log = len(plan_.texts), i, stream.log
        now = loop.time()
        while i < n and start + plan_.offsets_ns[i] / 1e9 <= now:
            t_emit_ns = self._clock_ns()
            text, seq = plan_.texts[i], i + 1
            token = Token(seq, t_emit_ns, text, encode(stream.id, seq, t_emit_ns, text, params))
            if sink is not None:  # the shared log, written before any reader is woken
                sink(stream, token)
            log.append(token)
            i += 1
        if i > first:  # one wake for every token due together: a pushing reader writes them
            self._tokens_emitted += i - first  # in one write, as a woken one reads them
            stream._wake()
        if i < n:
            stream._timer = loop.call_at(
                start + plan_.offsets_ns[i] / 1e9, self._emit, stream, i, start, loop
            )
        else:
            stream._timer = None
            stream._finish(DONE, "done")
            self._counts["done"] += 1
            self._ended(stream)

    def reap(self, now_s: float | None = None) -> None:
        """Cancel streams nobody listens to and forget streams past retention (one pass)."""
        now_s = time.monotonic() if now_s is None else now_s
        for stream in list(self._streams.values()):
            if stream.done:
                if stream.finished_s is not None and now_s - stream.finished_s >= self.retention_s:
                    del self._streams[stream.id]
                    self._counts["expired"] += 1
            elif stream.listeners == 0 and now_s - stream.last_listened_s >= self.idle_timeout_s:
                self._counts["idle"] += 1
                self.cancel_local(stream.id, reason="idle")

    async def _reap_forever(self) -> None:
        interval_s = max(0.05, min(1.0, self.idle_timeout_s / 4, self.retention_s / 4))
        while True:
            await asyncio.sleep(interval_s)
            self.reap()

    def statistics(self) -> HubStats:
        streams = self._streams.values()
        return HubStats(
            streams_running=sum(1 for s in streams if not s.done),
            streams_held=len(self._streams),
            streams_created=self._counts["created"],
            streams_done=self._counts["done"],
            streams_cancelled=self._counts["cancelled"],
            streams_idle_cancelled=self._counts["idle"],
            streams_expired=self._counts["expired"],
            tokens_emitted=self._tokens_emitted,
            listeners=sum(s.listeners for s in streams),
        )
