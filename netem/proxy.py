"""A fault-injecting TCP proxy in pure asyncio, in the spirit of Toxiproxy.

Theory of operation: each accepted client connection opens one upstream connection and runs,
in one TaskGroup, two tasks per direction (up = client -> server, down = server -> client):

    source --read--> reader task --(release_at_s, chunk)--> queue --> sender task --> destination

The reader stamps each chunk with its release time (read time + delay ± jitter, in order:
`ReleaseSchedule`) and keeps reading while chunks wait, so delay is latency, not stop-and-wait;
the queue is bounded in bytes, which pushes back on the source. The sender sleeps until the
head's release time, then applies stall, cut, slice and bandwidth (`Shaper`). Writers have
a zero write-buffer limit (after `drain()` every byte is in the kernel) and TCP_NODELAY. EOF is
propagated as a half-close (`write_eof`), so HTTP/1.1 and WebSocket closing handshakes work.
A release is never early, and late by the loop's timer granularity: epoll rounds timeouts up to
the millisecond, about +0.5 ms per delayed hop on average.

How a connection ends (`ConnStats.end`):
    "eof"              both directions reached EOF; both sides are closed normally
    "cut"              a cut_after_* condition fired; both sides get RST or FIN (cut_mode)
    "reset"            a peer reset it or another socket error (OSError, kept in `error`);
                       the other side gets RST
    "upstream_failed"  connecting upstream raised OSError (kept in `error`); the client gets RST
    "closed"           the proxy closed it (`aclose`)
Any other exception is a bug: it fails the proxy's TaskGroup (every connection is closed, the
listener stops) and `aclose()` re-raises it. `set_net()` affects connections accepted after it:
a connection keeps the NetSpec it was accepted with.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import struct
import sys
from asyncio import StreamReader, StreamWriter
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Self, cast

from netem.conditions import CutMode, NetSpec, ReleaseSchedule, Shaper, format_net, parse_net

_READ_CHUNK_BYTES = 64 * 1024
_QUEUE_LIMIT_BYTES = 256 * 1024
_CLOSE_TIMEOUT_S = 1.0

Direction = Literal["up", "down"]
End = Literal["eof", "cut", "reset", "upstream_failed", "closed"]
Shut = Literal["fin", "rst", "abort"]
_Side = tuple[StreamReader, StreamWriter]


@dataclass(frozen=True)
class ConnStats:
    """One proxied connection; times are the event loop's monotonic clock, in seconds."""

    conn_id: int
    started_s: float
    ended_s: float | None  # None while open
    end: End | None
    error: str | None  # repr of the peer error that ended it, if any
    bytes_up: int  # written to the server
    bytes_down: int  # written to the client
    bytes_up_received: int  # read from the client
    bytes_down_received: int  # read from the server


@dataclass(frozen=True)
class ProxyStats:
    """Counters of a `FaultProxy`, all connections since it started."""

    connections_total: int
    connections_open: int
    bytes_up: int
    bytes_down: int
    bytes_up_received: int
    bytes_down_received: int
    cuts: int
    resets: int
    upstream_failures: int
    conns: tuple[ConnStats, ...]


@dataclass
class _Conn:
    conn_id: int
    started_s: float
    ended_s: float | None = None
    end: End | None = None
    error: str | None = None
    sent: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    received: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    def snapshot(self) -> ConnStats:
        return ConnStats(
            self.conn_id, self.started_s, self.ended_s, self.end, self.error,
            self.sent["up"], self.sent["down"], self.received["up"], self.received["down"],
        )  # fmt: skip


class _Cut(Exception):
    """A cut_after_* condition fired (control flow inside one connection's TaskGroup)."""

    def __init__(self, mode: CutMode, reason: str) -> None:
        super().__init__(reason)
        self.mode: CutMode = mode


async def _sleep_until(deadline_s: float) -> None:
    delay_s = deadline_s - asyncio.get_running_loop().time()
    if delay_s > 0:
        await asyncio.sleep(delay_s)


class _Pump:
    """One direction of one connection: `read_loop` feeds `send_loop` through a queue."""

    def __init__(
        self, direction: Direction, net: NetSpec, conn: _Conn, src: StreamReader, dst: StreamWriter
    ) -> None:
        self._direction, self._conn, self._src, self._dst = direction, conn, src, dst
        self._cond = net.up if direction == "up" else net.down
        self._queue: deque[tuple[float, bytes] | None] = deque()  # None: EOF
        self._queued_bytes = 0
        self._queue_nonempty, self._queue_has_room = asyncio.Event(), asyncio.Event()
        self._queue_has_room.set()
        rng = random.Random(f"{net.seed}/{conn.conn_id}/{direction}")
        self._schedule = ReleaseSchedule(self._cond, rng)

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        held: list[bytes] = []
        while data := await self._src.read(_READ_CHUNK_BYTES):
            self._conn.received[self._direction] += len(data)
            if self._cond.buffer_all:
                held.append(data)
            else:
                await self._put((self._schedule.release_at(loop.time()), data))
        if held:
            await self._put((self._schedule.release_at(loop.time()), b"".join(held)))
        await self._put(None)

    async def _put(self, item: tuple[float, bytes] | None) -> None:
        await self._queue_has_room.wait()  # bounded in bytes: push back on the source
        self._queue.append(item)
        self._queued_bytes += len(item[1]) if item else 0
        self._queue_nonempty.set()
        if self._queued_bytes >= _QUEUE_LIMIT_BYTES:
            self._queue_has_room.clear()

    async def _get(self) -> tuple[float, bytes] | None:
        while not self._queue:
            self._queue_nonempty.clear()
            await self._queue_nonempty.wait()
        item = self._queue.popleft()
        self._queued_bytes -= len(item[1]) if item else 0
        if self._queued_bytes < _QUEUE_LIMIT_BYTES:
            self._queue_has_room.set()
        return item

    async def send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        shaper = Shaper(self._cond, loop.time())
        self._cut_if(shaper.wrote(0, loop.time()))
        while (item := await self._get()) is not None:
            release_at_s, data = item
            await _sleep_until(release_at_s)
            view = memoryview(data)
            while view:
                size, wait_s = shaper.next_piece(len(view), loop.time())
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                self._check_dst()
                self._dst.write(view[:size])
                await self._dst.drain()
                self._conn.sent[self._direction] += size
                view = view[size:]
                self._cut_if(shaper.wrote(size, loop.time()))
                if self._cond.slice_bytes is not None:
                    await asyncio.sleep(0)  # let the peer read this segment on its own
        self._check_dst()
        self._dst.write_eof()

    def _check_dst(self) -> None:
        if self._dst.transport.is_closing():  # only its peer closes it (uvloop: RuntimeError)
            raise ConnectionResetError(f"{self._direction} destination closed by its peer")

    def _cut_if(self, due: bool) -> None:
        if due:
            limit = self._cond.cut_after_bytes
            raise _Cut(self._cond.cut_mode, f"{self._direction} cut_after_bytes={limit}")


def _tune(writer: StreamWriter) -> None:
    if writer.transport.is_closing():  # the peer already reset it: the pumps will see that
        return
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.transport.set_write_buffer_limits(high=0)


def _shut(writer: StreamWriter, how: Shut) -> None:
    """Start closing one side: FIN after flushing, RST (SO_LINGER (1, 0)), or abort (drop, FIN)."""
    if how == "fin":
        writer.close()
        return
    if how == "rst" and not writer.transport.is_closing():
        linger = struct.pack("ii", 1, 0)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    writer.transport.abort()


async def _wait_closed(writer: StreamWriter, conn: _Conn) -> None:
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except TimeoutError:  # the peer does not read what is left to flush: drop it
        writer.transport.abort()
    except OSError as exc:  # the peer went away first (counted): an expected way to end
        conn.error = conn.error or repr(exc)


class FaultProxy:
    """A TCP proxy from `listen_host:listen_port` to `upstream_host:upstream_port` under `net`."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        net: NetSpec | None = None,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.net = net or NetSpec()
        self._listen = (listen_host, listen_port)
        self._server: asyncio.Server | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._stop, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: list[_Conn] = []
        self._closing = self._failed = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the proxy listens on, once started."""
        if self._server is None:
            raise RuntimeError("FaultProxy not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{_join_host_port(*self.address)}"

    def set_net(self, net: NetSpec) -> None:
        """Use `net` for connections accepted from now on; live connections keep theirs."""
        self.net = net

    async def start(self) -> None:
        """Bind and start accepting; `port`, `address` and `url()` are valid afterwards."""
        if self._supervisor is not None:
            raise RuntimeError("FaultProxy already started")
        ready = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(ready))
        await ready
        try:
            self._server = await asyncio.start_server(self._on_client, *self._listen)
        except BaseException:
            self._stop.set()
            await self._supervisor
            raise

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                ready.set_result(None)
                await self._stop.wait()
        finally:
            self._closing = True
            if self._server is not None:
                self._server.close()

    async def aclose(self) -> None:
        """Stop listening, close every live connection, await every task; re-raise a bug."""
        if self._supervisor is None:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        self._stop.set()
        try:
            await self._supervisor
        finally:
            if self._server is not None:
                await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_idle(self) -> None:
        """Wait until every connection accepted so far is closed and fully counted."""
        await self._idle.wait()

    def statistics(self) -> ProxyStats:
        conns = tuple(conn.snapshot() for conn in self._conns)
        ends = [c.end for c in conns]
        return ProxyStats(
            connections_total=len(conns),
            connections_open=sum(c.ended_s is None for c in conns),
            bytes_up=sum(c.bytes_up for c in conns),
            bytes_down=sum(c.bytes_down for c in conns),
            bytes_up_received=sum(c.bytes_up_received for c in conns),
            bytes_down_received=sum(c.bytes_down_received for c in conns),
            cuts=ends.count("cut"),
            resets=ends.count("reset"),
            upstream_failures=ends.count("upstream_failed"),
            conns=conns,
        )

    def _on_client(self, reader: StreamReader, writer: StreamWriter) -> None:
        if self._closing or self._failed or self._group is None:
            writer.transport.abort()  # accepted while shutting down
            return
        conn = _Conn(conn_id=len(self._conns), started_s=asyncio.get_running_loop().time())
        self._conns.append(conn)
        self._idle.clear()
        task = self._group.create_task(self._serve(conn, self.net, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, conn: _Conn, net: NetSpec, reader: StreamReader, writer: StreamWriter
    ) -> None:
        writers = [writer]
        how: Shut = "abort"
        try:
            try:
                upstream = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                conn.end, conn.error, how = "upstream_failed", repr(exc), "rst"
                return
            writers.append(upstream[1])
            how = await self._relay(conn, net, (reader, writer), upstream)
        except asyncio.CancelledError:
            conn.end = conn.end or "closed"
            raise
        except Exception:
            self._failed = True  # a bug: it fails the TaskGroup, aclose() re-raises it
            raise
        finally:
            for each in writers:  # every side starts closing before any wait can be cancelled
                _shut(each, how)
            try:
                for each in writers:
                    await _wait_closed(each, conn)
            finally:
                conn.ended_s = asyncio.get_running_loop().time()
                if all(c.ended_s is not None for c in self._conns):
                    self._idle.set()

    async def _relay(self, conn: _Conn, net: NetSpec, client: _Side, upstream: _Side) -> Shut:
        """Pump both directions until both EOFs, a cut or a reset; return how to close."""
        _tune(client[1])
        _tune(upstream[1])
        up = _Pump("up", net, conn, client[0], upstream[1])
        down = _Pump("down", net, conn, upstream[0], client[1])
        deadline_s, time_cut_mode = _time_cut(net, conn.started_s)
        how: Shut = "fin"
        timeout = asyncio.timeout_at(deadline_s)
        try:
            async with timeout:
                try:
                    async with asyncio.TaskGroup() as group:
                        for pump in (up, down):
                            group.create_task(pump.read_loop())
                            group.create_task(pump.send_loop())
                except* _Cut as group_exc:
                    conn.end, how = "cut", cast(_Cut, group_exc.exceptions[0]).mode
                except* OSError as group_exc:  # ConnectionResetError, BrokenPipeError, ...
                    if conn.end is None:
                        conn.end, conn.error, how = "reset", repr(group_exc.exceptions[0]), "rst"
        except TimeoutError:
            if not timeout.expired():
                raise
            conn.end, how = "cut", time_cut_mode
        conn.end = conn.end or "eof"
        return how


def _time_cut(net: NetSpec, started_s: float) -> tuple[float | None, CutMode]:
    """Deadline of the earliest cut_after_s of either direction (down wins a tie), and its mode."""
    cuts = [(c.cut_after_s, c.cut_mode) for c in (net.down, net.up) if c.cut_after_s is not None]
    if not cuts:
        return None, "fin"
    after_s, mode = min(cuts, key=lambda cut: cut[0])
    return started_s + after_s, mode


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _net_arg(text: str) -> NetSpec:
    try:
        return parse_net(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


async def main(argv: Sequence[str] | None = None) -> int:
    """`python -m netem.proxy --upstream HOST:PORT [--listen HOST:PORT] [--net SPEC]`."""
    parser = argparse.ArgumentParser(prog="python -m netem.proxy", description=main.__doc__)
    parser.add_argument("--listen", type=_split_host_port, default=("127.0.0.1", 0))
    parser.add_argument("--upstream", type=_split_host_port, required=True)
    parser.add_argument("--net", type=_net_arg, default=NetSpec(), help="e.g. delay=50ms")
    args = parser.parse_args(argv)
    (listen_host, listen_port), (upstream_host, upstream_port) = args.listen, args.upstream
    proxy = FaultProxy(
        upstream_host, upstream_port, args.net, listen_host=listen_host, listen_port=listen_port
    )
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with proxy:
            print(f"listening on {_join_host_port(*proxy.address)}", flush=True)
            print(f"net: {format_net(proxy.net) or '(clean)'}", flush=True)
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        stats = proxy.statistics()
        fields = [f for f in ProxyStats.__dataclass_fields__ if f != "conns"]
        print(" ".join(f"{f}={getattr(stats, f)}" for f in fields), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
