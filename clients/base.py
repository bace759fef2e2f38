"""What every client shares: the target, options, the resume point and the reconnect loop.

A client's `attempt()` follows its stream over one connection (or one run of polls) and
returns the end reason when the stream ended, or raises TransportError when the
connection broke. `run()` retries retryable failures with exponential backoff plus jitter,
resuming from the client's `ResumePoint`, and records the outcome in the `StreamRecord`.
The stack below is injected: an HTTP layer factory (default `HTTP11`) over a connector
(default TCP), and the sleep the backoff waits with, so tests can script all three.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import ClassVar

from clients.http import HTTP11, HTTPLayer, HTTPLayerFactory, Response
from clients.net import Connector, Target, tcp_connector
from clients.recorder import StreamRecord
from streams.errors import PushlabError, TransportError
from streams.params import GenParams
from transports.token import TokenRecord, loads

__all__ = ["Client", "ClientOptions", "ResumePoint", "Target", "expect", "request_for"]


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    max_reconnects: int = 5  # consecutive reconnects without a new token before giving up
    backoff_ms: float = 50.0  # first reconnect delay; doubles per consecutive failure
    backoff_max_ms: float = 2000.0
    interval_ms: float = 100.0  # short polling: time between polls
    wait_s: float = 25.0  # long polling: how long the server may hold a poll
    ws_compress: bool = False  # offer permessage-deflate
    method: str = "GET"  # sse, ndjson, oneshot: GET with a query, or POST with a JSON body
    seed: int = 0  # for backoff jitter
    abandon_after: int = 0  # stop reading after this many tokens (0: never): the cancel case
    abandon: str = "close"  # how: "close" the connection / stop polling, or "cancel" explicitly
    accept_gzip: bool = False  # send Accept-Encoding: gzip and decode gzip bodies
    part_tokens: int = 0  # ask for at most this many tokens per request, then continue (0: off)
    wt_delivery: str = "stream"  # WebTransport: tokens on a "stream", or one per "datagram"
    quic_cc: str = "reno"  # congestion controller of the client's QUIC connections


def parts(params: GenParams, part_tokens: int) -> list[GenParams]:
    """The requests of one answer: all of it, or `part_tokens` at a time with offsets."""
    if part_tokens <= 0 or part_tokens >= params.tokens:
        return [params]
    return [
        dataclasses.replace(params, tokens=min(part_tokens, params.tokens - offset), offset=offset)
        for offset in range(0, params.tokens, part_tokens)
    ]


Sleep = Callable[[float], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class ResumePoint:
    """Where the client's next request continues its stream; moved only by `update`.

    The client holds it (the `StreamRecord` only records what arrived). `after` is in the
    stream's own seqs, not the answer's: the highest seq held, or the poll cursor."""

    stream_id: str = ""  # empty: no stream yet, the next request starts one
    after: int = 0  # the next request asks for what follows this seq
    event_id: str = ""  # SSE: the last event ID the parser committed (sent as Last-Event-ID)

    def update(self, stream_id: str = "", after: int = 0, event_id: str = "") -> None:
        """Move forward only: the first stream id sticks, `after` never goes back, and an
        empty event id keeps the previous one (as EventSource keeps its last event ID)."""
        self.stream_id = self.stream_id or stream_id
        self.after = max(self.after, after)
        self.event_id = event_id or self.event_id


class Abandoned(Exception):
    """Raised inside a client when it has read `abandon_after` tokens (not an error)."""


class Client:
    """Base of every client; subclasses implement `attempt`."""

    key: ClassVar[str] = ""
    name: ClassVar[str] = "python"

    part_offset = 0  # seqs of the current part start after this many tokens

    def __init__(
        self,
        options: ClientOptions | None = None,
        *,
        http: HTTPLayerFactory = HTTP11,
        connector: Connector = tcp_connector,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.options = options or ClientOptions()
        self._rng = random.Random(self.options.seed)
        self._http, self._connector, self._sleep = http, connector, sleep
        self.resume = ResumePoint()

    async def run(self, target: Target, params: GenParams, rec: StreamRecord) -> None:
        """Follow one answer to its end (reconnecting as allowed, and in parts of
        `part_tokens` when set); never raises PushlabError."""
        http = self._http(target, self._connector, accept_gzip=self.options.accept_gzip)
        try:
            for part in parts(params, self.options.part_tokens):
                self.part_offset = part.offset
                if part.offset:  # a follow-up request, as a long-reply "continue" does
                    rec.continuation_started(part.offset)
                    self.new_part()
                reason = await self._follow(http, part, rec)
                if reason != "done":
                    break
            rec.finished(reason)
        except Abandoned:
            await self.abandon(http, rec)
        except PushlabError as exc:
            rec.failed(exc)
        finally:
            rec.conns = await http.aclose()
            rec.http_requests = http.requests
            rec.body_bytes_down = http.body_bytes_down
            rec.stream_id = rec.part_streams[0] if rec.part_streams else rec.stream_id

    async def _follow(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        """One stream to its end, retrying retryable failures with backoff."""
        failures = 0
        while True:
            received = len(rec.texts)
            try:
                return await self.attempt(http, params, rec)
            except TransportError as exc:
                rec.connection_broken()
                await http.close_conn()
                failures = 1 if len(rec.texts) > received else failures + 1
                if not exc.retryable or failures > self.options.max_reconnects:
                    raise
                rec.reconnects += 1
                await self._sleep(self._backoff_s(failures))

    def new_part(self) -> None:
        """Forget the resume point before a follow-up request: it is a new stream."""
        self.resume = ResumePoint()

    def stream_known(self, rec: StreamRecord, stream_id: str) -> None:
        """A response named the stream (before any token): resume it, and record it."""
        self.resume.update(stream_id)
        rec.stream_id = rec.stream_id or stream_id

    def deliver(
        self, rec: StreamRecord, tok: TokenRecord, t_ns: int, t_perf: int, request: int
    ) -> None:
        """Record one token (its seq counted over the whole answer when it arrives in parts);
        raise Abandoned once `abandon_after` tokens are held. Every token moves the resume
        point here, so no client can forget to."""
        self.resume.update(tok.stream, tok.seq)
        if self.part_offset:
            tok = dataclasses.replace(tok, seq=tok.seq + self.part_offset)
        rec.token(tok, t_ns, t_perf, request)
        if self.options.abandon_after and len(rec.texts) >= self.options.abandon_after:
            raise Abandoned

    async def abandon(self, http: HTTPLayer, rec: StreamRecord) -> None:
        """Walk away: close the connection, or also cancel with `DELETE /streams/{id}`."""
        rec.abandoned()
        await http.close_conn()
        if self.options.abandon == "cancel" and self.resume.stream_id:
            resp = await http.request("DELETE", f"/streams/{self.resume.stream_id}")
            await expect(http, resp, 200, "application/json")
            await http.read_body()

    def _backoff_s(self, failures: int) -> float:
        base = min(self.options.backoff_max_ms, self.options.backoff_ms * 2 ** (failures - 1))
        return base * (0.5 + self._rng.random() / 2) / 1e3  # "equal jitter"

    async def attempt(self, http: HTTPLayer, params: GenParams, rec: StreamRecord) -> str:
        raise NotImplementedError


async def expect(
    http: HTTPLayer, resp: Response, status: int = 200, content_type: str = ""
) -> None:
    """Raise TransportError (with the server's error message) for an unexpected status or
    content type; a 4xx or a wrong content type is not worth retrying."""
    if resp.status != status:
        message = await error_message(http, resp)
        raise TransportError(f"HTTP {resp.status}: {message}", retryable=resp.status >= 500)
    if content_type and not resp.headers.get("content-type", "").startswith(content_type):
        raise TransportError(
            f"wrong content type {resp.headers.get('content-type')!r}", retryable=False
        )


async def error_message(http: HTTPLayer, resp: Response) -> str:
    """The server's JSON error message for a non-2xx response, else the body's start."""
    body = await http.read_body()
    try:
        return str(loads(body)["error"]["message"])
    except (PushlabError, KeyError, TypeError):
        text = " ".join(body.decode("utf-8", "replace").split())  # e.g. a proxy's HTML page
        return text[:120]


def request_for(
    path: str, params: GenParams, method: str, extra: dict[str, str] | None = None
) -> tuple[str, bytes]:
    """(target, body) for a stream-starting request: a query string, or a JSON body."""
    from urllib.parse import urlencode

    from transports.token import dumps

    if method == "POST":  # a name in both the query and the body is refused: body only
        return path, dumps({**params.as_dict(), **(extra or {})})
    return f"{path}?{urlencode({**params.as_query(), **(extra or {})})}", b""
