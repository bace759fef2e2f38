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

Ownership. A stream id is 128 random bits (`secrets.token_hex(16)`): it travels in SSE ids,
URLs and logs, so it must not be guessable. Knowing it is still not enough: a stream records
its `owner` (the identity that created it, "" when anonymous) and `get`, `readable`,
`describe` and `cancel` given `owner=` refuse anyone else (PermissionDenied, 403, without
saying whose it is). `owner=None` is the hub's own callers (the reaper, the experiments).

Limits. A `Ledger` (streams/budget.py, whose theory of operation details them) counts
running streams and held bytes, in total and per client (an identity, else an address:
`create`'s `client`), and decides. `create` refuses a client past its share of running
streams or of held bytes (QuotaExceeded, 429), and anyone past `max_streams` running streams
or while running streams alone spend the memory budget (StreamLimitError, 503). Every held
token costs `len(payload) + len(text) + TOKEN_OVERHEAD`, accounted as it is appended (once
per wake in `_emit`, the batch's sum). An append past `memory_budget_bytes` first forgets
finished streams, the first finished first (`evicted`), then cancels the appending stream
("memory budget", `budget_cancelled`); one past its client's byte share cancels it too
("memory quota", `quota_cancelled`). So the hub holds at most the budget plus one batch:
normally one token; after a stalled loop or a takeover, those that fell due meanwhile, at
most `params.tokens`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import NamedTuple

from streams.budget import MEMORY_BUDGET, MEMORY_QUOTA, Ledger
from streams.errors import HistoryGone, ParamError, PermissionDenied, PushlabError, StreamNotFound
from streams.generator import Plan, plan
from streams.params import GenParams

# encode(stream_id, seq, t_emit_ns, text, params) -> the token's wire object as bytes
Encoder = Callable[[str, int, int, str, GenParams], bytes]
# source(params, messages) -> token texts as they arrive (an upstream model); None: generator
Source = Callable[[GenParams, "list[dict[str, object]] | None"], AsyncIterator[str]]

RUNNING, DONE, CANCELLED = "running", "done", "cancelled"

# What a held token costs beyond len(payload) + len(text). Measured with tracemalloc (CPython
# 3.11): 100,000 Tokens in a list, each with a fresh 8-character text and its text-envelope
# payload for a 32-hex id (~107 bytes): 238 bytes a token beyond those lengths (the tuple, 72
# bytes + 16 of GC header; seq and t_emit_ns, 32 and 48 as allocated; the bytes and str
# headers, 33 and 50; the list slot, 8; the allocator's rounding). A seeded stream's text is
# the corpus's own string, so it is over-counted by ~60 bytes (179 measured): erring high.
TOKEN_OVERHEAD = 240
# The most tokens one emission callback appends. A stream far behind its schedule (rate
# 100,000: every token due at once) used to append all of them in one callback: measured
# in benchmarks/abuse.py, 30 such streams of 100,000 tokens kept another client's first
# token waiting 13-14 s, and a client's memory share was checked once per 100,000 tokens
# (it held 1.95x its share before its streams were cancelled). 256 tokens are about 1.3 ms
# of work (~5 us a token); the rest is appended by the next callback, after the loop has
# served I/O, and the ledger checks the budget and the share after every batch.
EMIT_BATCH = 256

log = logging.getLogger("pushlab.hub")


def no_payload(stream_id: str, seq: int, t_emit_ns: int, text: str, params: GenParams) -> bytes:
    """The encoder of a stream whose one reader needs the texts only (a whole /v1 answer)."""
    return b""


def _account_nothing(stream: Stream, nbytes: int) -> None:
    """The accounting of a stream no hub holds (or no longer)."""


def _owned(stream: Stream, owner: str | None) -> Stream:
    """`stream`, if `owner` may use it (None: no check); PermissionDenied otherwise."""
    if owner is not None and stream.owner != owner:
        raise PermissionDenied(f"stream '{stream.id}' belongs to another identity", param="stream")
    return stream


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
    held_bytes: int  # tokens held by every stream, as accounted (see TOKEN_OVERHEAD)
    budget_bytes: int
    clients: int  # clients with a running stream
    evicted: int  # finished streams forgotten before their retention, for the budget
    budget_cancelled: int  # running streams cancelled: the hub's budget was spent
    quota_cancelled: int  # running streams cancelled: their client's share was spent


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Stream:
    """One generation's log and state; the producer appends, any number of readers follow."""

    # slots, not a __dict__: one Stream per open stream, thousands of them; tracemalloc, 1,000
    # Streams: 386 bytes each with a __dict__, 329 with slots (idle memory per connection is
    # a benchmark target); 2026-11-30, ids given: 301 bytes, 330 with owner, client,
    # held_bytes and _account
    __slots__ = ("_account", "_pushers", "_timer", "_waiters", "client", "created_s", "encode",
                 "finished_ns", "finished_s", "first_seq", "held_bytes", "id",
                 "last_listened_s", "listeners", "log", "owner", "params", "plan", "reason",
                 "state")  # fmt: skip

    def __init__(
        self,
        stream_id: str,
        params: GenParams,
        plan_: Plan,
        now_s: float,
        encode: Encoder,
        *,
        owner: str = "",
        client: str = "",
        account: Callable[[Stream, int], None] = _account_nothing,
    ) -> None:
        self.id = stream_id
        self.owner = owner  # the identity that created it ("": anonymous); see _owned
        self.client = client  # whose quotas it counts against (an identity or an address)
        self.held_bytes = 0  # its tokens, as the hub accounts them (TOKEN_OVERHEAD)
        # account(stream, nbytes): the holding hub's, for each token `_append` adds
        self._account = account
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
        """Append one token that came from elsewhere (a relay, the shared log) and account
        it to the holding hub, which may end the stream then (over its memory budget)."""
        self.log.append(token)
        self._wake()
        self._account(self, len(token.payload) + len(token.text) + TOKEN_OVERHEAD)

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
            "owned": self.owner != "",  # whose it is stays unsaid
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
        memory_budget_bytes: int = 1 << 30,
        client_share: float = 0.5,
        clock_ns: Callable[[], int] = time.time_ns,
        source: Source | None = None,
    ) -> None:
        self._encode = encode
        self.retention_s = retention_s
        self.idle_timeout_s = idle_timeout_s
        self.max_streams = max_streams
        self.memory_budget_bytes = memory_budget_bytes
        self.client_share = client_share
        self._clock_ns = clock_ns
        self._source = source
        self._relays: dict[str, asyncio.Task[None]] = {}
        self._streams: dict[str, Stream] = {}  # every stream this hub generates or generated
        # which of them run, which finished, the bytes they hold: see streams/budget.py
        self._ledger: Ledger[Stream] = Ledger(max_streams, memory_budget_bytes, client_share,
                                              self._drop)  # fmt: skip
        self._reaper: asyncio.Task[None] | None = None
        self._counts = {"created": 0, "done": 0, "cancelled": 0, "idle": 0, "expired": 0,
                        MEMORY_BUDGET: 0, MEMORY_QUOTA: 0}  # fmt: skip
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
        owner: str = "",
        client: str = "",
    ) -> Stream:
        """Start a new stream generating `params` (or relaying the upstream source, with
        `messages` as the prompt when given), its payloads made by `encode` (default: the
        hub's), owned by the identity `owner` and counted against `client`'s quotas;
        QuotaExceeded when `client` holds its share, StreamLimitError when the hub is full."""
        self._ledger.admit(client)
        stream_id = secrets.token_hex(16)
        relay = self._source is not None
        stream = self._new_stream(
            stream_id,
            params,
            Plan((), ()) if relay else plan(params),
            encode or self._encode,
            owner=owner,
            client=client,
        )
        self._admit(stream)
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
        to the model's own timing. Ends the stream however the relay ends, but for a cancel
        (the stream was cancelled, or a redislog node now follows it): a PushlabError's
        message is the reason (the source's are short and carry no upstream text); any other
        exception is a bug, logged with its traceback, reason "upstream: internal error"."""
        sink = self._sink
        reason = ""
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
                # done: ended by the append itself (over the memory budget), whose cancel of
                # this task lands only at its next wait, which buffered chunks may not reach
                if seq >= stream.params.tokens or stream.done:
                    break
        except PushlabError as exc:
            reason = f"upstream: {exc.message}"[:200]
        except Exception:  # a task that died silently would leave its readers waiting forever
            log.exception("relay of stream %s failed", stream.id)
            reason = "upstream: internal error"
        if stream.done:  # cancelled meanwhile (and counted there)
            return
        stream._finish(CANCELLED if reason else DONE, reason or "done")
        self._counts["cancelled" if reason else "done"] += 1
        self._ended(stream)

    async def get(self, stream_id: str, *, owner: str | None = None) -> Stream:
        """The stream `stream_id`; StreamNotFound when unknown or past retention,
        PermissionDenied when `owner` is given and is not the stream's."""
        return _owned(self.local(stream_id), owner)

    async def describe(self, stream_id: str, *, owner: str | None = None) -> dict[str, object]:
        """The stream's state, as `GET /streams/{id}` shows it."""
        return (await self.get(stream_id, owner=owner)).describe()

    def local(self, stream_id: str) -> Stream:
        """The stream `stream_id` as this process holds it (no I/O)."""
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamNotFound(
                f"no stream '{stream_id}' (unknown or expired)", param="stream"
            ) from None

    async def readable(
        self, stream_id: str, after: int | None = None, *, owner: str | None = None
    ) -> Stream:
        """`get` for a reader that frames the payloads from seq `after` on (a resume);
        ParamError when the stream has none (a whole /v1 answer, which only /v1 reads);
        HistoryGone when tokens after `after` are no longer held (a shared log trims)."""
        stream = await self.get(stream_id, owner=owner)
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

    async def cancel(
        self, stream_id: str, reason: str = "cancelled", *, owner: str | None = None
    ) -> Stream:
        """Stop generating `stream_id` now; readers see the end with state `cancelled`."""
        _owned(self.local(stream_id), owner)
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
        """Called once when a stream this hub generates ends (done or cancelled): it leaves
        the running streams and joins the finished ones, which eviction takes in that order.
        A subclass extends it (the shared log records the end there)."""
        self._release(stream)
        if self._streams.get(stream.id) is stream:
            self._ledger.retain(stream)

    # -- accounting: running streams, held bytes, clients ----------------------------------

    def _new_stream(
        self, stream_id: str, params: GenParams, plan_: Plan, encode: Encoder, *, owner: str,
        client: str,
    ) -> Stream:  # fmt: skip
        """A Stream whose appended tokens this hub accounts."""
        return Stream(stream_id, params, plan_, time.monotonic(), encode, owner=owner,
                      client=client, account=self._hold)  # fmt: skip

    def _admit(self, stream: Stream) -> None:
        """Hold `stream` as one this hub generates (or generated: a finished takeover)."""
        previous = self._streams.get(stream.id)
        if previous is not None and previous is not stream:  # ended here when the log was
            self._release(previous)  # lost, and now taken back from it
            self._forget_stream(previous)
        self._streams[stream.id] = stream
        if stream.done:
            self._ledger.retain(stream)
        else:
            self._ledger.run(stream)

    def _release(self, stream: Stream) -> None:
        """`stream` is no longer generated here (it ended, or another node generates it)."""
        self._ledger.release(stream)

    def _require_memory(self) -> None:
        """Forget finished streams while the budget is spent; StreamLimitError if it still is
        (running streams hold it all)."""
        self._ledger.require_memory()

    def _hold(self, stream: Stream, nbytes: int) -> None:
        """`stream` holds `nbytes` more: the ledger may forget finished streams for them,
        and end `stream` (past the budget, or its client's share)."""
        reason = self._ledger.hold(stream, nbytes)
        if reason:
            self._overdrawn(stream, reason)

    def _overdrawn(self, stream: Stream, reason: str) -> None:
        """End `stream` for the ledger's verdict `reason`, and count it."""
        if self._stop(stream, reason):
            self._counts[reason] += 1

    def _stop(self, stream: Stream, reason: str) -> bool:
        """End `stream` for `reason` if this hub generates it and it runs; whether it did. (A
        history being read in belongs to no hub yet: it is accounted, not ended.)"""
        if stream.done or self._streams.get(stream.id) is not stream:
            return False
        self.cancel_local(stream.id, reason)
        return True

    def _drop(self, stream: Stream) -> None:
        """Stop holding the finished `stream`, whose bytes the ledger took out (a resume
        gets StreamNotFound from now on)."""
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        stream._account = _account_nothing

    def _forget_stream(self, stream: Stream) -> None:
        """Stop holding the finished `stream` and its bytes."""
        self._ledger.forget(stream)
        self._drop(stream)

    def _unhold(self, stream: Stream) -> None:
        """Take `stream`'s bytes out of the accounts, for good."""
        self._ledger.unhold(stream)
        stream._account = _account_nothing

    def _emit(self, stream: Stream, i: int, start: float, loop: asyncio.AbstractEventLoop) -> None:
        """Append the tokens due by now from index `i` on, at most EMIT_BATCH of them, then
        set a timer for the next (already due: it fires after the loop has polled I/O).

        A chain of loop timers rather than a task per stream: one callback per token, no
        coroutine switch, and cancelling is cancelling the pending timer."""
        plan_, params, encode, sink = stream.plan, stream.params, stream.encode, self._sink
        n, first, log, nbytes = len(plan_.texts), i, stream.log, 0
        now, last = loop.time(), min(len(plan_.texts), i + EMIT_BATCH)
        while i < last and start + plan_.offsets_ns[i] / 1e9 <= now:
            t_emit_ns = self._clock_ns()
            text, seq = plan_.texts[i], i + 1
            payload = encode(stream.id, seq, t_emit_ns, text, params)
            token = Token(seq, t_emit_ns, text, payload)
            if sink is not None:  # the shared log, written before any reader is woken
                sink(stream, token)
            log.append(token)
            nbytes += len(payload) + len(text)
            i += 1
        if i > first:  # one wake for every token due together: a pushing reader writes them
            self._tokens_emitted += i - first  # in one write, as a woken one reads them
            stream._wake()
            # _hold inlined: one call less once per wake (timeit, 200,000 calls, best of 15,
            # interleaved: 242 ns when _hold did the sums itself, 233 inlined, 264 via _hold)
            reason = self._ledger.hold(stream, nbytes + (i - first) * TOKEN_OVERHEAD)
            if reason:
                self._overdrawn(stream, reason)
            if stream.done:  # over the memory budget or its client's share: cancelled
                return
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
                    self._forget_stream(stream)
                    self._counts["expired"] += 1
            elif stream.listeners == 0 and now_s - stream.last_listened_s >= self.idle_timeout_s:
                self._counts["idle"] += 1
                self.cancel_local(stream.id, reason="idle")

    async def _reap_forever(self) -> None:
        interval_s = max(0.05, min(1.0, self.idle_timeout_s / 4, self.retention_s / 4))
        while True:
            await asyncio.sleep(interval_s)
            self.reap()

    @property
    def held_bytes(self) -> int:
        """The bytes every held stream's tokens cost, as accounted (TOKEN_OVERHEAD)."""
        return self._ledger.held_bytes

    def statistics(self) -> HubStats:
        streams = self._streams.values()
        ledger = self._ledger.statistics()
        return HubStats(
            streams_running=ledger.streams_running,
            streams_held=len(self._streams),
            streams_created=self._counts["created"],
            streams_done=self._counts["done"],
            streams_cancelled=self._counts["cancelled"],
            streams_idle_cancelled=self._counts["idle"],
            streams_expired=self._counts["expired"],
            tokens_emitted=self._tokens_emitted,
            listeners=sum(s.listeners for s in streams),
            held_bytes=ledger.held_bytes,
            budget_bytes=ledger.budget_bytes,
            clients=ledger.clients_running,
            evicted=ledger.evicted,
            budget_cancelled=self._counts[MEMORY_BUDGET],
            quota_cancelled=self._counts[MEMORY_QUOTA],
        )
