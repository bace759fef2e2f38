"""What one connection may hold, and for how long: caps at accept, a deadline for the request
head, a deadline for the body, a quiet accept path when descriptors run out.

Theory of operation. Probes of the server as it was (issue 14) found no header or body read
timeout and aiohttp's default keep-alive of 3,630 s: 1,500 slowloris connections were held,
and at the descriptor limit new clients timed out while the loop logged 4.8 MB/s of
accept-error tracebacks at 100% CPU. Four bounds, each enforced where the bytes enter:

    connect --admit()--> refused: canned 503 (server full) / 429 (address holds its share),
       |                 `Retry-After: 1`, `Connection: close`, closed at once
       v
    waiting for a head --header_timeout_s from connect, or from the first byte of the next
       |                 head on a keep-alive connection--> 408, closed
       v
    reading the body  --body_timeout_s (read_body)--> 408 JSON error
       v
    response sent, idle --keepalive_s (aiohttp's keepalive_timeout)--> closed

`ConnectionLimits` is the accounting, sans-I/O: `admit(address)` returns b"" or the bytes of
the refusal, `release(address)` undoes an admission; per-address counts live in a dict whose
entries are deleted at zero, so an address that left costs nothing. `max_connections` 0
means the descriptor limit less RESERVED_FDS (files, the listening socket, Redis, the
upstream relay): the server refuses a connection it can still answer instead of failing
accept(2). `LimitedRunner` is the aiohttp glue: an AppRunner whose Server makes
`LimitedHandler`s, aiohttp's RequestHandler with the cap checked in `connection_made` and a
head timer. The timer costs one `call_at` per request head and nothing per token:
`data_received` is the only hot path touched, and there it is an attribute test and an
integer comparison (the server's writes, where tokens go, are not touched at all).

The head deadline runs from connect (a connection that never sends a whole head) and, on a
keep-alive connection, from the first byte of the next head (nginx's client_header_timeout);
between requests the idle connection is keepalive_s's. A request pipelined behind another in
one read is covered by keepalive_s only. After a body timeout aiohttp reads and discards what
is left of the body for its lingering time (10 s) before it closes the connection.

If accept(2) fails anyway (EMFILE/ENFILE: other descriptors, or --max-connections above the
limit), asyncio calls the loop's exception handler with "socket.accept() out of system
resource" and retries after 1 s; `AcceptErrors` refuses what waits in the backlog with the
503 through a reserve descriptor, counts the failures and logs one line per
ACCEPT_LOG_EVERY_S, with no traceback, and passes anything else to the default handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from streams.errors import QuotaExceeded, RequestTimeout, StreamLimitError
from transports.errors import error_body
from transports.web.config import ServerConfig

log = logging.getLogger("pushlab.server")

RESERVED_FDS = 256  # descriptors kept for everything but client connections
ACCEPT_LOG_EVERY_S = 10.0
SHED_MAX = 1024  # connections one accept failure may refuse
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def canned_response(status: int, reason: str, body: dict[str, Any]) -> bytes:
    """A whole HTTP/1.1 response that closes its connection: JSON `body`, `Retry-After: 1`
    (RFC 9110 section 10.2.3) for the client to come back."""
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + data


def default_max_connections() -> int:
    """The descriptor soft limit less RESERVED_FDS (half the limit when that is smaller)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(soft - RESERVED_FDS, soft // 2, 1)


class ConnectionLimits:
    """Open connections against the server's cap and each address's share of it (sans-I/O).

    Counters (`statistics()`): open, peak, refused_global, refused_client, header_timeouts,
    accept_errors."""

    def __init__(self, max_connections: int, client_share: float, header_timeout_s: float):
        self.max_connections = max_connections
        self.max_per_client = math.ceil(max_connections * client_share)
        self.header_timeout_s = header_timeout_s
        self.by_address: dict[str, int] = {}
        self.open = self.peak = 0
        self.refused_global = self.refused_client = self.header_timeouts = 0
        self.accept_errors = 0
        full = f"the server holds its maximum of {max_connections} connections"
        share = f"this address holds its share of {self.max_per_client} connections"
        late = f"no whole request head within {header_timeout_s:g} s"
        self.full = canned_response(503, "Service Unavailable",
                                    error_body(full, StreamLimitError.type))  # fmt: skip
        self.over_share = canned_response(429, "Too Many Requests",
                                          error_body(share, QuotaExceeded.type))  # fmt: skip
        self.head_late = canned_response(408, "Request Timeout",
                                         error_body(late, RequestTimeout.type))  # fmt: skip

    @classmethod
    def from_config(cls, config: ServerConfig) -> ConnectionLimits:
        cap = config.max_connections or default_max_connections()
        return cls(cap, config.client_share, config.header_timeout_s)

    def admit(self, address: str) -> bytes:
        """b"" and the connection counted, or the response refusing it (not counted)."""
        if self.open >= self.max_connections:
            self.refused_global += 1
            return self.full
        held = self.by_address.get(address, 0)
        if held >= self.max_per_client:
            self.refused_client += 1
            return self.over_share
        self.by_address[address] = held + 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        return b""

    def release(self, address: str) -> None:
        """An admitted connection closed."""
        self.open -= 1
        held = self.by_address[address] - 1
        if held:
            self.by_address[address] = held
        else:
            del self.by_address[address]

    def statistics(self) -> dict[str, int]:
        return {
            "open": self.open,
            "peak": self.peak,
            "max": self.max_connections,
            "max_per_client": self.max_per_client,
            "addresses": len(self.by_address),
            "refused_global": self.refused_global,
            "refused_client": self.refused_client,
            "header_timeouts": self.header_timeouts,
            "accept_errors": self.accept_errors,
        }


LIMITS = web.AppKey("connection_limits", ConnectionLimits)


class LimitedHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, with the connection cap and the head deadline."""

    __slots__ = ("_address", "_head_timer", "_limits")

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._address = ""
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else ""
        refusal = self._limits.admit(address)
        if refusal:
            # Never handed to aiohttp: with no manager, its connection_lost returns at once.
            self._manager = None
            transport.write(refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        self._address = address
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._manager is not None:  # admitted, and this is the first call
            self._limits.release(self._address)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter  # set while aiohttp waits for the next request head
        if self._head_timer is None and waiter is not None and not waiter.done():
            self._start_head_timer()  # the first bytes of a head on a kept-alive connection
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads and self._head_timer is not None:
            self._head_timer.cancel()  # a whole head arrived
            self._head_timer = None

    def _start_head_timer(self) -> None:
        loop = self._loop
        due = loop.time() + self._limits.header_timeout_s
        self._head_timer = loop.call_at(due, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self.transport is None:
            return  # a request is being handled: its body and response are not timed here
        self._limits.header_timeouts += 1
        self.transport.write(self._limits.head_late)
        self.force_close()


class LimitedServer(web.Server):
    """aiohttp's Server making LimitedHandlers, built from the one AppRunner made."""

    def __init__(self, base: web.Server, limits: ConnectionLimits) -> None:
        # base._kwargs: the RequestHandler arguments AppRunner gathered (keepalive_timeout,
        # access_log, debug); aiohttp has no public way to choose the handler class.
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation,
                         loop=asyncio.get_running_loop(), **base._kwargs)  # fmt: skip
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return LimitedHandler(self, self.limits, loop=self._loop, **self._kwargs)


class LimitedRunner(web.AppRunner):
    """An AppRunner whose connections are bounded by the app's ConnectionLimits (LIMITS)."""

    async def _make_server(self) -> web.Server:
        return LimitedServer(await super()._make_server(), self.app[LIMITS])


class AcceptErrors:
    """A loop exception handler for accept(2) failing for lack of descriptors or memory:
    the connections waiting in the backlog are refused (503) through a reserve descriptor,
    the failures counted and logged once per `every_s` as one line; anything else goes to
    the loop's default handler. `close()` gives the reserve back.

    Why shed rather than wait: CPython 3.11's selector loop (`_accept_connection`) does not
    stop at the error: it retries accept up to `backlog` (4096) times in the same tick,
    calling this handler and scheduling a retry timer each time. Measured with 100
    connections held against RLIMIT_NOFILE 64 for 5 s: 14.8 MB of tracebacks and 4.96 s of
    CPU with the default handler; 2.84 s of CPU and 135,140 failures with a handler that
    only counts; 0.07 s of CPU and one 80-byte line with this one, the 44 connections past
    the limit refused. Linux checks for a free descriptor before the backlog, so the loop's
    remaining retries in that tick fail too (about 4,000, each a close, an accept that finds
    the backlog empty and an open): `accept_errors` counts failed accept calls, not clients.
    A client that arrives during asyncio's 1 s pause waits in the backlog until the next
    try, then reads its 503 (the reserve-descriptor trick of libev and nginx)."""

    def __init__(self, limits: ConnectionLimits, every_s: float = ACCEPT_LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.limits, self.every_s, self.clock = limits, every_s, clock
        self.logged_s: float | None = None
        self.unlogged = 0
        self.reserve = os.open(os.devnull, os.O_RDONLY)  # -1 once it could not be taken back

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS
                and "accept" in str(context.get("message", ""))):  # fmt: skip
            loop.default_exception_handler(context)
            return
        self.limits.accept_errors += 1
        self.unlogged += 1
        listener = context.get("socket")
        shed = self.shed(listener.fileno()) if listener is not None else 0
        now = self.clock()
        if self.logged_s is None or now - self.logged_s >= self.every_s:
            log.warning("accept failed %d time(s) (%s); %d waiting connection(s) refused",
                        self.unlogged, exc.strerror or exc, shed)  # fmt: skip
            self.logged_s, self.unlogged = now, 0

    def shed(self, listener_fd: int) -> int:
        """Refuse (503) up to SHED_MAX connections waiting on `listener_fd`, each accepted
        into the reserve's descriptor; how many."""
        if self.reserve < 0:
            return 0
        os.close(self.reserve)
        shed = 0
        listener = socket.socket(fileno=listener_fd)  # the loop's socket: detached below
        try:
            while shed < SHED_MAX:
                try:
                    conn, _ = listener.accept()
                except OSError:  # the backlog is empty (EAGAIN), or no descriptor after all
                    break
                with conn, contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(self.limits.full)
                shed += 1
        finally:
            listener.detach()
            try:
                self.reserve = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self.reserve = -1
        self.limits.refused_global += shed
        return shed

    def close(self) -> None:
        if self.reserve >= 0:
            os.close(self.reserve)
            self.reserve = -1


async def read_body(request: web.Request) -> bytes:
    """`request.read()` within the server's body timeout, else RequestTimeout (408)."""
    from transports.web.common import CONFIG  # not at the top: common imports this module

    timeout_s = request.app[CONFIG].body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g} s") from None
