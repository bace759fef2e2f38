"""A UDP relay in front of a UDP server (QUIC), with delay, jitter and a silent cut.

Why: this kernel has no netem qdisc (netem/netns.py `capabilities()`), so delay cannot come
from tc, and QUIC cannot cross the TCP fault proxy (netem/proxy.py). This relay is that
proxy's UDP twin, driven by the same `--net` strings and the same sans-I/O timing
(netem/conditions.py): `delay=50ms` adds 50 ms each way, 100 ms to a round trip.

Theory of operation. The relay listens on one UDP socket. Each client address (host, port)
is one flow with its own upstream socket, connected to the server, so the server sees one
distinct peer per client (a QUIC connection per flow, as without the relay); what the
server sends back on that socket goes to that client address. Each direction of a flow
(up = client -> server, down = server -> client) is a `_Direction`, the sans-I/O core:

    datagram read at t --> accept(size, t) --> "drop" | release time (t + delay ± jitter)
                       --> FIFO queue --> one timer for the head --> sendto

`ReleaseSchedule` never releases a datagram before the previous one of its direction, so
jitter delays but never reorders (QUIC would survive reordering; the TCP proxy cannot
reorder, and the two paths must differ only in their transport). The queue has one timer,
for its head, that sends every datagram due in order: asyncio's timer heap does not keep
the order of equal deadlines. A release is never early and late by the loop's timer
granularity (epoll rounds up to the millisecond), as in the TCP proxy.

Cuts, what they mean for UDP. There is no FIN or RST to send: a cut path goes silent, which
is what a lost path looks like to QUIC (it retransmits into the void, then its idle timeout
or PTO gives up). `cut_after=2s` (time, from the flow's first datagram) and
`cut_after=4kB` (bytes forwarded, down by default, `up.cut_after=` for the other side) both
drop every later datagram of the flow, both directions; `cut_mode` is accepted and ignored.
Keys that shape bytes over time (`bandwidth`, `stall`, `slice`, `buffer`) are a one-line
error: a datagram relay has no stream to slice or stall, and a UDP bottleneck needs a queue
and a drop policy this relay does not model.

Counts, per flow and direction, of what the relay received and forwarded: datagrams and UDP
payload bytes (`dropped_*` counts the datagrams a cut ate). They are an independent count of
what QUIC sent, to set against the client's own (clients/quic.py counts the same payload).

Child-process form, as the TCP proxy's (`harness.children.ProxyProcess`):

    python -m netem.udprelay --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --net delay=50ms

prints `listening on 127.0.0.1:PORT` once bound, `net: ...`, and on SIGTERM/SIGINT one line
`flows=... datagrams_up=... bytes_up=...` (`parse_stats_line` reads it back). The TCP proxy
and this relay can listen on the same port number (TCP and UDP ports are separate spaces), so
one `Target` reaches a server's TCP (HTTP/1.1, HTTP/2) and UDP (HTTP/3) through the same
delay: `delayed_path()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import random
import signal
import socket
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Self

from netem.conditions import (
    Conditions,
    NetSpec,
    NetSpecError,
    ReleaseSchedule,
    format_net,
    parse_net,
)

Direction = Literal["up", "down"]
Address = tuple[Any, ...]  # what asyncio hands a datagram endpoint: (host, port[, ...])
READY_PREFIX = "listening on "
IDLE_TIMEOUT_S = 120.0  # a flow silent this long is forgotten (its upstream socket closed)
_MAX_DATAGRAM = 65535
# what a UDP path cannot mean, or what this relay does not model (module docstring)
_UNSUPPORTED = {
    "bandwidth_bps": "bandwidth",
    "stall_after_bytes": "stall_after",
    "stall_s": "stall",
    "slice_bytes": "slice",
    "buffer_all": "buffer",
}


def check_udp(net: NetSpec) -> NetSpec:
    """`net` if a UDP relay can apply it; else NetSpecError naming the key (one line)."""
    clean = Conditions()
    for cond in (net.up, net.down):
        for name, key in _UNSUPPORTED.items():
            if getattr(cond, name) != getattr(clean, name):
                raise NetSpecError(
                    f"net: {key} does not apply to the UDP relay (delay, jitter, cut_after, "
                    "seed do)",
                    param=key,
                )
    return net


def parse_udp_net(text: str) -> NetSpec:
    """`parse_net`, then `check_udp`."""
    return check_udp(parse_net(text))


# -- sans-I/O core ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Counts:
    received: int = 0  # datagrams read from the source
    received_bytes: int = 0
    sent: int = 0  # datagrams written to the destination
    sent_bytes: int = 0
    dropped: int = 0  # eaten by a cut (or by a send error: `errors`)
    errors: int = 0


class FlowTiming:
    """The timing and cut rules of one flow, both directions, as decisions (no I/O).

    `accept(direction, size, now_s)` says when a datagram read at `now_s` leaves (a time,
    never before the previous one of its direction), or None: drop it (the path is cut).
    `sent(direction, size)` accounts a datagram written, and may cut the path (bytes)."""

    def __init__(self, net: NetSpec, flow_id: int, started_s: float) -> None:
        self.net, self.started_s = net, started_s
        self._schedule = {
            d: ReleaseSchedule(getattr(net, d), random.Random(f"{net.seed}/{flow_id}/{d}"))
            for d in ("up", "down")
        }
        cut_times = [c.cut_after_s for c in (net.up, net.down) if c.cut_after_s is not None]
        self.cut_at_s = started_s + min(cut_times) if cut_times else math.inf
        self.counts = {"up": _Counts(), "down": _Counts()}
        self.cut = False
        self._check_bytes()  # cut_after=0: cut before any datagram

    def accept(self, direction: Direction, size: int, now_s: float) -> float | None:
        counts = self.counts[direction]
        counts.received += 1
        counts.received_bytes += size
        if now_s >= self.cut_at_s:
            self.cut = True
        if self.cut:
            counts.dropped += 1
            return None
        return self._schedule[direction].release_at(now_s)

    def due(self, direction: Direction, now_s: float) -> bool:
        """At release: False (drop) when the path was cut while the datagram waited."""
        if now_s >= self.cut_at_s:
            self.cut = True
        if self.cut:
            self.counts[direction].dropped += 1
        return not self.cut

    def sent(self, direction: Direction, size: int) -> None:
        counts = self.counts[direction]
        counts.sent += 1
        counts.sent_bytes += size
        self._check_bytes()

    def _check_bytes(self) -> None:
        for direction in ("up", "down"):
            limit = getattr(self.net, direction).cut_after_bytes
            if limit is not None and self.counts[direction].sent_bytes >= limit:
                self.cut = True


# -- statistics -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowStats:
    """One client address's flow; times are the event loop's clock, in seconds."""

    flow_id: int
    client: str  # host:port of the client
    started_s: float
    cut: bool
    datagrams_up: int  # forwarded to the server
    bytes_up: int  # UDP payload bytes forwarded to the server
    datagrams_down: int
    bytes_down: int
    datagrams_up_received: int
    bytes_up_received: int
    datagrams_down_received: int
    bytes_down_received: int
    dropped_up: int
    dropped_down: int


@dataclasses.dataclass(frozen=True)
class RelayStats:
    """Totals of a `UdpRelay` over every flow since it started."""

    flows: int
    flows_cut: int
    datagrams_up: int
    bytes_up: int
    datagrams_down: int
    bytes_down: int
    datagrams_up_received: int
    bytes_up_received: int
    datagrams_down_received: int
    bytes_down_received: int
    dropped_up: int
    dropped_down: int
    send_errors: int
    per_flow: tuple[FlowStats, ...] = ()

    def line(self) -> str:
        """`flows=1 flows_cut=0 datagrams_up=...`: every total, one line."""
        names = [f.name for f in dataclasses.fields(self) if f.name != "per_flow"]
        return " ".join(f"{name}={getattr(self, name)}" for name in names)


def parse_stats_line(text: str) -> dict[str, int]:
    """The totals of the last stats line in `text` (what the child prints as it stops)."""
    for line in reversed(text.splitlines()):
        if line.startswith("flows="):
            return {k: int(v) for k, v in (w.split("=", 1) for w in line.split())}
    return {}


# -- the relay --------------------------------------------------------------------------------


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay._from_client(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable from a client
        self.relay._errors += 1


class _Back(asyncio.DatagramProtocol):
    def __init__(self, flow: _Flow) -> None:
        self.flow = flow

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.flow.relay._from_server(self.flow, data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: no server
        self.flow.relay._errors += 1


class _Queue:
    """One direction's FIFO of (release time, datagram) and the one timer for its head."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.items: deque[tuple[float, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.items.clear()


class _Flow:
    def __init__(self, relay: UdpRelay, flow_id: int, client: Address, now_s: float) -> None:
        self.relay, self.flow_id, self.client = relay, flow_id, client
        self.timing = FlowTiming(relay.net, flow_id, now_s)
        self.last_s = now_s
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []  # up datagrams due before the upstream socket is ready
        loop = relay._loop
        self.queues: dict[Direction, _Queue] = {"up": _Queue(loop), "down": _Queue(loop)}

    def stats(self) -> FlowStats:
        up, down = self.timing.counts["up"], self.timing.counts["down"]
        host, port = self.client[:2]
        return FlowStats(
            self.flow_id, f"{host}:{port}", self.timing.started_s, self.timing.cut,
            up.sent, up.sent_bytes, down.sent, down.sent_bytes,
            up.received, up.received_bytes, down.received, down.received_bytes,
            up.dropped, down.dropped,
        )  # fmt: skip


class UdpRelay:
    """UDP from `listen_host:listen_port` to `upstream_host:upstream_port` under `net`."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        net: NetSpec | None = None,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.net = check_udp(net or NetSpec())
        self._listen = (listen_host, listen_port)
        self.idle_timeout_s = idle_timeout_s
        self._front: asyncio.DatagramTransport | None = None
        self._flows: dict[Address, _Flow] = {}
        self._all: list[_Flow] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.TimerHandle | None = None
        self._errors = 0
        self._loop: asyncio.AbstractEventLoop  # set by start()

    @property
    def address(self) -> tuple[str, int]:
        if self._front is None:
            raise RuntimeError("UdpRelay not started")
        host, port = self._front.get_extra_info("sockname")[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    def set_net(self, net: NetSpec) -> None:
        """Use `net` for flows that start from now on; live flows keep theirs."""
        self.net = check_udp(net)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._listen[0] else socket.AF_INET
        self._front, _ = await self._loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=self._listen, family=family
        )
        self._schedule_reaper()

    async def aclose(self) -> None:
        """Stop: close every socket, cancel every queued datagram."""
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for flow in self._all:
            self._close_flow(flow)
        if self._front is not None:
            self._front.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def statistics(self) -> RelayStats:
        flows = tuple(flow.stats() for flow in self._all)

        def total(name: str) -> int:
            return sum(getattr(f, name) for f in flows)

        names = [f.name for f in dataclasses.fields(FlowStats)]
        counted = {n: total(n) for n in names if n.startswith(("datagrams", "bytes", "dropped"))}
        return RelayStats(flows=len(flows), flows_cut=sum(f.cut for f in flows),
                          send_errors=self._errors, per_flow=flows, **counted)  # fmt: skip

    # -- datagrams --

    def _from_client(self, data: bytes, addr: Address) -> None:
        now_s = self._loop.time()
        flow = self._flows.get(addr)
        if flow is None:
            flow = _Flow(self, len(self._all), addr, now_s)
            self._flows[addr] = flow
            self._all.append(flow)
            task = self._loop.create_task(self._open_upstream(flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._enqueue(flow, "up", data, now_s)

    def _from_server(self, flow: _Flow, data: bytes) -> None:
        self._enqueue(flow, "down", data, self._loop.time())

    def _enqueue(self, flow: _Flow, direction: Direction, data: bytes, now_s: float) -> None:
        flow.last_s = now_s
        release_s = flow.timing.accept(direction, len(data), now_s)
        if release_s is None:
            return
        queue = flow.queues[direction]
        if release_s <= now_s and not queue.items:  # no delay: straight through
            self._send(flow, direction, data)
            return
        queue.items.append((release_s, data))
        if queue.timer is None:
            queue.timer = self._loop.call_at(release_s, self._release, flow, direction)

    def _release(self, flow: _Flow, direction: Direction) -> None:
        queue = flow.queues[direction]
        queue.timer = None
        now_s = self._loop.time()
        while queue.items and queue.items[0][0] <= now_s:
            _, data = queue.items.popleft()
            if flow.timing.due(direction, now_s):
                self._send(flow, direction, data)
        if queue.items:
            queue.timer = self._loop.call_at(queue.items[0][0], self._release, flow, direction)

    def _send(self, flow: _Flow, direction: Direction, data: bytes) -> None:
        if direction == "up":
            if flow.upstream is None:
                flow.pending.append(data)  # sent, and counted, once the socket is open
                return
            transport: asyncio.DatagramTransport | None = flow.upstream
            addr = None
        else:
            transport, addr = self._front, flow.client
        if transport is None or transport.is_closing():
            flow.timing.counts[direction].dropped += 1
            return
        transport.sendto(data, addr)
        flow.timing.sent(direction, len(data))

    async def _open_upstream(self, flow: _Flow) -> None:
        family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        try:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _Back(flow), remote_addr=self.upstream, family=family
            )
        except OSError:
            self._errors += 1
            flow.timing.counts["up"].dropped += len(flow.pending)
            flow.pending.clear()
            return
        flow.upstream = transport
        pending, flow.pending = flow.pending, []
        for data in pending:
            self._send(flow, "up", data)

    def _close_flow(self, flow: _Flow) -> None:
        for queue in flow.queues.values():
            queue.cancel()
        if flow.upstream is not None:
            flow.upstream.close()
        self._flows.pop(flow.client, None)

    def _schedule_reaper(self) -> None:
        self._reaper = self._loop.call_later(self.idle_timeout_s / 4, self._reap)

    def _reap(self) -> None:
        now_s = self._loop.time()
        for flow in list(self._flows.values()):
            busy = any(q.items for q in flow.queues.values())
            if not busy and now_s - flow.last_s > self.idle_timeout_s:
                self._close_flow(flow)  # its counts stay in statistics()
        self._schedule_reaper()


# -- child process ----------------------------------------------------------------------------


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


async def main(argv: Sequence[str] | None = None) -> int:
    """`python -m netem.udprelay --upstream HOST:PORT [--listen HOST:PORT] [--net SPEC]`."""
    parser = argparse.ArgumentParser(prog="python -m netem.udprelay", description=main.__doc__)
    parser.add_argument("--listen", type=_split_host_port, default=("127.0.0.1", 0))
    parser.add_argument("--upstream", type=_split_host_port, required=True)
    parser.add_argument("--net", default="", help="e.g. delay=50ms,jitter=5ms,cut_after=2s")
    args = parser.parse_args(argv)
    try:
        net = parse_udp_net(args.net)
    except NetSpecError as exc:  # one line, exit 2 (as argparse's own errors)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    (listen_host, listen_port), (upstream_host, upstream_port) = args.listen, args.upstream
    relay = UdpRelay(
        upstream_host, upstream_port, net, listen_host=listen_host, listen_port=listen_port
    )
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await relay.start()
        except OSError as exc:
            print(f"{parser.prog}: error: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return 1
        print(f"{READY_PREFIX}{_join_host_port(*relay.address)}", flush=True)
        print(f"net: {format_net(relay.net) or '(clean)'}", flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await relay.aclose()
        if relay._front is not None:
            print(relay.statistics().line(), flush=True)
    return 0


# harness.children imports clients and transports: only the child-process helpers need it
def _child_classes() -> Any:
    from harness.children import ChildProcess, ProxyProcess

    return ChildProcess, ProxyProcess


class UdpRelayProcess:
    """`python -m netem.udprelay` as a child on 127.0.0.1:`listen_port` (0: any), in front of
    the UDP server at `upstream` (host, port), stopped by its pid; `stop()` returns the
    totals it printed (`parse_stats_line`)."""

    def __init__(self, upstream: tuple[str, int], net: str = "", listen_port: int = 0) -> None:
        child_process, _ = _child_classes()
        argv = ["-m", "netem.udprelay", "--listen", f"127.0.0.1:{listen_port}",
                "--upstream", _join_host_port(*upstream), "--net", net]  # fmt: skip
        self.child = child_process(argv, READY_PREFIX)
        self.totals: dict[str, int] = {}

    def start(self) -> int:
        """Start it; its port once it listens (ChildStartError if it does not)."""
        return int(self.child.start().port)

    def stop(self) -> dict[str, int]:
        self.totals = parse_stats_line(self.child.stop())
        return self.totals

    @property
    def pid(self) -> int:
        return int(self.child.pid)


@dataclasses.dataclass
class DelayedPath:
    """A TCP fault proxy and a UDP relay on the same port number in front of one server."""

    port: int
    tcp_pid: int = -1
    udp_pid: int = -1
    udp_totals: dict[str, int] = dataclasses.field(default_factory=dict)  # set on exit


@contextlib.contextmanager
def delayed_path(host: str, port: int, net: str, attempts: int = 3) -> Iterator[DelayedPath]:
    """The TCP fault proxy (`python -m netem.proxy`) on a free port P and this relay on UDP
    P, both in front of `host:port` under `net` (which must suit both: delay, jitter, seed);
    both stopped by their pids on exit, when `udp_totals` gets the relay's counts."""
    from clients.base import Target
    from streams.errors import ChildStartError

    _, proxy_process = _child_classes()
    parse_udp_net(net)  # refuse what the relay cannot do before starting anything
    for attempt in range(attempts):
        tcp = proxy_process(Target(host, port), net)
        tcp.start()
        udp = UdpRelayProcess((host, port), net, listen_port=tcp.target.port)
        try:
            udp.start()
        except ChildStartError:  # UDP port P taken by someone else: try another P
            tcp.stop()
            if attempt == attempts - 1:
                raise
            continue
        path = DelayedPath(tcp.target.port, tcp.pid, udp.pid)
        try:
            yield path
        finally:
            path.udp_totals = udp.stop()
            tcp.stop()
        return


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
