"""Experiment `loss`: token latency tails versus real packet loss, per transport, TCP and QUIC.

The server runs inside a network namespace of our own, reached over a veth pair; nftables
drops that share of TCP AND UDP packets at random in both directions, each where it is
received (netem/netns.py), so the kernel's TCP and each QUIC stack's own loss recovery
(RFC 9002) decide what the clients see. Where the machine cannot create namespaces or random
drop, the run stops with the reason (never a silent skip).

Two parts, at every loss of the sweep (`analysis/loss.py` reads them):
(i) each transport on its own connections to the server (WebTransport: QUIC to the server's
    own endpoint in the namespace, found by GET /webtransport, tokens on a reliable
    stream), plus, for every transport whose connection is a "session" (registry), the same
    with one DATAGRAM per token (`ClientOptions(wt_delivery="datagram")`): unreliable, so
    loss costs tokens, counted per stream, never left out;
(ii) N SSE streams through Caddy (h1 h2 h3, in the namespace in front of the server) over
    ONE HTTP/3 connection, ONE HTTP/2 connection, or N HTTP/1.1 connections: per-stream p99
    and the longest gap. HTTP/2's streams share TCP's one byte order (a lost segment holds
    them all); HTTP/3's streams are ordered each on its own (RFC 9000 2.2: "stream data
    ... ordered within a stream"), so a loss holds only the stream whose bytes it carried.
Each point warms up on a clean link, then measures at its loss; the packets dropped during
the measurement are counted (nft counters). The main tokens/streams tables hold part (i)'s
per-transport arms (as before QUIC); every arm's summary is in the extra table `arms`, the
added arms' rows in `arm_tokens`/`arm_streams`, and the congestion controllers and socket
buffers in use in `path`: aioquic's reno on the Python client (its default) and, on the
server, the `--quic-cc` of its WebTransport endpoint (from /stats); quic-go's reno in Caddy
(hard-wired: `NewCubicSender(..., true /* use Reno */)`, read in quic-go's source); the
kernel's TCP congestion control and net.core buffer sysctls on both sides of the veth.

The tokens flow server -> client, so the SENDER's controller decides loss recovery, and the
senders all run in our namespace: the server (TCP, and QUIC with `--quic-cc`) and Caddy (TCP;
its quic-go is reno, fixed). `net.ipv4.tcp_congestion_control` is a per-namespace sysctl
(Linux >= 4.15; a new namespace starts with the root's, BBR on this machine), so the lab can
align TCP with QUIC without touching the machine. `Spec.cc` is a second sweep dimension, each
setting a whole run of both parts on a fresh namespace: "kernel" leaves the namespace's TCP
default and the server's `--quic-cc` default (reno); "reno" / "cubic" writes that controller
into the namespace's sysctl (only if the kernel already has it: nothing is loaded) and runs
the server and the Python clients' QUIC with it. The `path` table reads back, per setting,
what was in force (the namespace's sysctl, the server's /stats), never what was asked for.
The main tables hold the first setting's part (i); the other settings' arms go to
`arm_tokens`/`arm_streams`, and every arm row carries its `cc_setting`. The client's own TCP
(root namespace) is left alone: it sends only requests and ACKs.

No netem here (this kernel has none), so no RTT: the veth's round trip is well under a
millisecond, and each loss costs what the stack's timers and the next token make of it.

Measured (2-core VM, `pushlab run loss`, the default spec, once, other sessions' tests
running now and then): at 10 % each way, token p99 (n=80) sse 217 ms, websocket 224,
webtransport 68 (its 2 QUIC connections declared 14 packets lost and resent them: nothing
lost); the datagram arm lost 4 of 80 tokens, and the 76 that came had a p99 of 2.0 ms
(nothing waits for a resend). Through Caddy, 8 SSE streams: per-stream p99 (median) 7.6 ms
over ONE HTTP/3 connection, 196 ms over ONE HTTP/2 connection (every stream behind TCP's
one byte order), 82 ms over 8 HTTP/1.1 connections; longest gap 88 / 266 / 321 ms. At 5 %
HTTP/2 happened to stay at 3.0 ms and HTTP/3 at 6.1: one run, few losses per arm, so
compare arms within a loss, not one loss with the next.

Controllers (`pushlab run loss --set cc=kernel,reno`, once, 4.4 min, machine quiet; read back:
namespace TCP bbr then reno, server QUIC reno both times): at 10 %, token p99 (n=80)
kernel / reno: sse 53 / 71 ms, websocket 220 / 231, webtransport 53 / 64, datagram 1.2 /
1.2 (3 / 14 of 80 tokens lost); through Caddy, per-stream p99 HTTP/3 5.2 / 5.6, HTTP/2
1161 / 103, HTTP/1.1 54 / 95. QUIC's WebTransport stayed ahead of every TCP arm and HTTP/3
ahead of both TCP ways: aligning TCP on reno flipped no TCP-vs-QUIC pair (the reading says
so from the arms). HTTP/2's 1161 ms under BBR is one run's tail, not yet a finding.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from analysis.loss import (
    ARM_COLUMNS,
    PATH_COLUMNS,
    SHARED,
    arm_summary,
    loss_facts,
    loss_reading,
    with_setting,
)
from clients.base import ClientOptions, Target
from clients.fleet import FleetSpec, run_fleet
from clients.recorder import StreamRecord, to_tables
from experiments.descriptor import Experiment
from experiments.engine import WARMUP, Point, condition_keys, measure_records, run_sync
from experiments.spec import RunSpec
from harness.children import ServerProcess
from netem.netns import LinkSpec, NetnsError, NetnsLink, NetnsUnavailable
from presentation import charts_net
from records.schema import Tables, concat
from streams.errors import ParamError
from streams.params import GenParams
from transports import registry

if TYPE_CHECKING:
    import pandas as pd

    from netem.fronts import ServedPath
    from records.store import StoredRun

NAME = "loss"
SHARED_TRANSPORT = "sse"  # part (ii): the streams through Caddy (a WebSocket has no HTTP/2 form)
CADDY_QUIC_CC = "reno (quic-go, fixed)"
CC_SETTINGS = ("kernel", "reno", "cubic")  # Spec.cc: "kernel" = leave the defaults
CADDY_RCVBUF = "quic-go asks 2 MiB"  # unless its log says it could not get it (then its words)
_TCP_CC = "/proc/sys/net/ipv4/tcp_congestion_control"
_TCP_CC_AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
_SYSCTLS = {
    "tcp_congestion_control": _TCP_CC,
    "rmem_default": "/proc/sys/net/core/rmem_default",
    "rmem_max": "/proc/sys/net/core/rmem_max",
    "wmem_default": "/proc/sys/net/core/wmem_default",
    "wmem_max": "/proc/sys/net/core/wmem_max",
}


@dataclasses.dataclass(frozen=True)
class Spec(RunSpec):
    losses_pct: tuple[float, ...] = (0.0, 1.0, 5.0, 10.0)
    tokens: int = 40
    rate: float = 20.0
    ttft_ms: float = 100.0
    clients: int = 2
    options: ClientOptions = dataclasses.field(
        default_factory=lambda: ClientOptions(max_reconnects=10, interval_ms=100.0)
    )
    datagram: bool = True  # (i): a datagram arm for each "session" transport measured
    streams: int = 8  # (ii): N streams on one HTTP/3, one HTTP/2, or N HTTP/1.1 (0: no part ii)
    # each a whole sweep: "kernel" (namespace TCP default, server's --quic-cc default), or
    # "reno"/"cubic" for the namespace's TCP and the QUIC of server and clients alike
    cc: tuple[str, ...] = ("kernel", "reno")

    def __post_init__(self) -> None:
        if self.streams < 0:
            raise ParamError("streams must be 0 (no shared-connection arms) or more",
                             param="streams")  # fmt: skip
        if any(not 0 <= loss < 100 for loss in self.losses_pct):
            raise ParamError("losses_pct: each loss must be in [0, 100)", param="losses_pct")
        if not self.cc or len(set(self.cc)) < len(self.cc) or set(self.cc) - set(CC_SETTINGS):
            raise ParamError(f"cc: one or more distinct of {', '.join(CC_SETTINGS)}, got "
                             f"{','.join(self.cc) or 'none'}", param="cc")  # fmt: skip


def quick(spec: Spec) -> Spec:
    """Small, and ONE controller setting (the first: "kernel" by default), so the suite
    measures what it did before `cc` existed, in the same time."""
    return dataclasses.replace(spec, losses_pct=(0.0, 10.0), tokens=20, rate=40.0, clients=1,
                               streams=4, cc=spec.cc[:1])  # fmt: skip


def _params(spec: Spec) -> GenParams:
    return GenParams(tokens=spec.tokens, rate=spec.rate, ttft_ms=spec.ttft_ms, seed=spec.seed)


def _condition(spec: Spec, cc: str, loss: float, arm: str = "") -> str:
    """The point's label, `loss=10% [arm]`, with ` cc=<setting>` when the run measures more
    than one setting."""
    tag = f" cc={cc}" if len(spec.cc) > 1 else ""
    return f"loss={loss:g}%" + (f" {arm}" if arm else "") + tag


def _options(spec: Spec, cc: str) -> ClientOptions:
    """The clients' options under setting `cc`: their QUIC follows it unless "kernel"."""
    return spec.options if cc == "kernel" else dataclasses.replace(spec.options, quic_cc=cc)


def points(spec: Spec, cc: str = "") -> list[Point]:
    """Part (i): every transport at every loss, under setting `cc` (default: the first)."""
    cc = cc or spec.cc[0]
    return [
        Point(t, _params(spec), condition=_condition(spec, cc, loss), sweep=("loss_pct", loss),
              clients=spec.clients, options=_options(spec, cc))
        for loss in spec.losses_pct
        for t in spec.transports
    ]  # fmt: skip


def datagram_points(spec: Spec, cc: str = "") -> list[Point]:
    """Part (i)'s added arms: one token per datagram, for each session transport measured."""
    if not spec.datagram:
        return []
    cc = cc or spec.cc[0]
    sessions = [t for t in spec.transports if registry.get(t).connection == "session"]
    options = dataclasses.replace(_options(spec, cc), wt_delivery="datagram")
    return [
        Point(t, _params(spec), condition=_condition(spec, cc, loss, f"{t} datagram"),
              sweep=("loss_pct", loss), clients=spec.clients, options=options)
        for loss in spec.losses_pct
        for t in sessions
    ]  # fmt: skip


def shared_arms(n: int) -> tuple[tuple[str, str, int], ...]:
    """(label, HTTP version, streams per connection) of part (ii)'s arms."""
    return ((f"HTTP/3 x{n} one connection", "3", n), (f"HTTP/2 x{n} one connection", "2", n),
            (f"HTTP/1.1 x{n} connections", "1.1", 1))  # fmt: skip


def _clean_warmup(point: Point, target: Target, link: NetnsLink) -> None:
    """One stream alone on a clean link, over the point's stack and options."""
    link.set_loss(0.0)
    alone = FleetSpec(point.transport, 1, stack=dataclasses.replace(point.stack, multiplex=1))
    run_sync(run_fleet(alone, target, WARMUP, point.options))


def _measure(point: Point, target: Target, link: NetnsLink
             ) -> tuple[list[StreamRecord], dict[str, int]]:  # fmt: skip
    """Warm up clean, then the point at its loss; its records and the packets dropped."""
    assert point.sweep is not None
    _clean_warmup(point, target, link)
    link.set_loss(point.sweep[1])
    before = link.counters()
    records = run_sync(measure_records(point, target, warmup=False))
    after = link.counters()
    link.set_loss(0.0)
    return records, {k: after[k] - before[k] for k in ("dropped_in_packets", "dropped_out_packets")}


def _client_socket(records: Sequence[StreamRecord]) -> tuple[str, int]:
    """The congestion controller and UDP receive buffer of the arm's QUIC connections
    ("kernel", -1 for TCP, whose controller is the kernel's: the `path` table)."""
    quic = [c for r in records for c in r.conns if c.cc]
    if not quic:
        return "kernel", -1
    return "/".join(sorted({c.cc for c in quic})), max(c.rcvbuf for c in quic)


def _arm_row(keys: dict[str, object], tables: Tables, records: Sequence[StreamRecord], arm: str,
             delivery: str, http: str, dropped: dict[str, int], setting: str
             ) -> dict[str, Any]:  # fmt: skip
    cc, rcvbuf = _client_socket(records)
    summary = arm_summary(tables.tokens, tables.streams)
    transport = records[0].transport if records else ""
    return {**keys, "cc_setting": setting, "loss_pct": keys["sweep_value"], "arm": arm,
            "transport": transport, "delivery": delivery, "http": http, **summary, "cc": cc,
            "rcvbuf": rcvbuf, **dropped}  # fmt: skip


def _apply_cc(link: NetnsLink, setting: str) -> list[str]:
    """Put setting `setting` in force in the namespace: its TCP default controller (a
    per-namespace sysctl; "kernel" leaves it), and the server arguments that go with it. A
    controller the kernel does not have stops the run (nothing is loaded here)."""
    if setting == "kernel":
        return []
    prefix = ["ip", "netns", "exec", link.name]
    done = subprocess.run([*prefix, "cat", _TCP_CC_AVAILABLE], capture_output=True, text=True,
                          timeout=10)  # fmt: skip
    available = done.stdout.split()
    if setting not in available:
        raise NetnsUnavailable(f"cc={setting}: not among this kernel's TCP controllers "
                               f"({' '.join(available) or done.stderr.strip()}); nothing is "
                               "loaded here")  # fmt: skip
    done = subprocess.run([*prefix, "tee", _TCP_CC], input=setting, capture_output=True,
                          text=True, timeout=10)  # fmt: skip
    if done.returncode != 0:
        raise NetnsError(f"setting {_TCP_CC} in {link.name}: {done.stderr.strip()}")
    return ["--quic-cc", setting]


def _sysctls(netns: str | None = None) -> dict[str, str]:
    """The kernel settings of one side (the root namespace, or `netns`)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    out = {}
    for name, path in _SYSCTLS.items():
        done = subprocess.run([*prefix, "cat", path], capture_output=True, text=True, timeout=10)
        out[name] = done.stdout.strip() if done.returncode == 0 else "unknown"
    return out


def _server_quic(target: Target) -> tuple[str, str]:
    """The server's WebTransport endpoint: its congestion controller and UDP receive buffer."""
    from harness.sampler import read_stats

    endpoint = read_stats(target).get("webtransport") or {}
    if not endpoint:
        return "no QUIC endpoint", "n/a"
    return str(endpoint.get("cc", "unknown")), str(endpoint.get("rcvbuf", "unknown"))


def _caddy_rcvbuf(log: str) -> str:
    """What Caddy's QUIC listener got: quic-go logs a warning only when it could not."""
    for line in log.splitlines():
        if "receive buffer size" in line:
            return line.strip()[-160:]
    return CADDY_RCVBUF


def path_rows(link: NetnsLink, client: tuple[str, int], server: tuple[str, str],
              caddy_log: str | None, setting: str = "kernel"
              ) -> list[dict[str, object]]:  # fmt: skip
    """The `path` table: per side, congestion controllers and buffers in use under `setting`
    (read back from the namespace and the server, not assumed)."""
    root, inside = _sysctls(), _sysctls(link.name)
    root, inside = {"cc_setting": setting, **root}, {"cc_setting": setting, **inside}
    rows: list[dict[str, object]] = [
        {"side": "client (root namespace, aioquic)", **root, "quic_cc": client[0],
         "udp_rcvbuf": str(client[1]) if client[1] >= 0 else "n/a"},
        {"side": "server (namespace, aioquic endpoint)", **inside, "quic_cc": server[0],
         "udp_rcvbuf": server[1]},
    ]  # fmt: skip
    if caddy_log is not None:
        rows.append({"side": "Caddy (namespace, quic-go)", **inside, "quic_cc": CADDY_QUIC_CC,
                     "udp_rcvbuf": _caddy_rcvbuf(caddy_log)})  # fmt: skip
    return rows


def _own_arms(spec: Spec, setting: str, run_id: str, link: NetnsLink, bar: Any
              ) -> tuple[list[Tables], list[Tables], list[dict[str, Any]], Any]:  # fmt: skip
    """Part (i) under `setting`: the per-transport tables, the datagram arms' tables, their
    arm rows, (client, server) QUIC."""
    main: list[Tables] = []
    added: list[Tables] = []
    rows: list[dict[str, Any]] = []
    client: tuple[str, int] = ("none measured", -1)
    server = ServerProcess(_apply_cc(link, setting), host=link.server_host,
                           prefix=["ip", "netns", "exec", link.name])  # fmt: skip
    target: Target = server.start()
    try:
        for point in points(spec, setting) + datagram_points(spec, setting):
            delivery = "datagram" if point.options.wt_delivery == "datagram" and \
                registry.get(point.transport).connection == "session" else "stream"
            records, dropped = _measure(point, target, link)
            keys = condition_keys(run_id, NAME, point)
            tables = to_tables(records, keys)
            (added if delivery == "datagram" else main).append(tables)
            arm = point.transport + (" datagram" if delivery == "datagram" else "")
            rows.append(_arm_row(keys, tables, records, arm, delivery, "", dropped, setting))
            if rows[-1]["cc"] != "kernel":
                client = (str(rows[-1]["cc"]), int(rows[-1]["rcvbuf"]))
            bar.update()
        quic = _server_quic(target)
    finally:
        server.stop()
    return main, added, rows, (client, quic)


def _shared_arms(spec: Spec, setting: str, run_id: str, link: NetnsLink, bar: Any
                 ) -> tuple[list[Tables], list[dict[str, Any]], str]:  # fmt: skip
    """Part (ii): N SSE streams through Caddy in the namespace (its TCP under the namespace's
    controller, already set by part (i)); tables, arm rows, Caddy's log."""
    from netem.caddy_netns import caddy_in_namespace

    added: list[Tables] = []
    rows: list[dict[str, Any]] = []
    with caddy_in_namespace(link, http3=True) as (path, caddy):
        for loss in spec.losses_pct:
            for arm, http, multiplex in shared_arms(spec.streams):
                point = _shared_point(spec, setting, path, loss, arm, http, multiplex)
                records, dropped = _measure(point, path.target, link)
                keys = condition_keys(run_id, NAME, point)
                tables = to_tables(records, keys)
                added.append(tables)
                rows.append(_arm_row(keys, tables, records, arm, SHARED, http, dropped,
                                     setting))  # fmt: skip
                bar.update()
    return added, rows, caddy.log()


def _shared_point(spec: Spec, setting: str, path: ServedPath, loss: float, arm: str, http: str,
                  multiplex: int) -> Point:  # fmt: skip
    return Point(SHARED_TRANSPORT, _params(spec), condition=_condition(spec, setting, loss, arm),
                 sweep=("loss_pct", loss), clients=spec.streams,
                 options=_options(spec, setting),
                 stack=path.stack(http=http, multiplex=multiplex))  # fmt: skip


def run(spec: Spec, run_id: str = "", progress: bool = False) -> Tables:
    import pandas as pd
    from tqdm import tqdm

    total = len(points(spec)) + len(datagram_points(spec))
    total += len(spec.losses_pct) * len(shared_arms(spec.streams)) if spec.streams else 0
    main: list[Tables] = []
    added: list[Tables] = []
    rows: list[dict[str, Any]] = []
    path: list[dict[str, object]] = []
    with tqdm(total=total * len(spec.cc), desc=NAME, unit="point", disable=not progress) as bar:
        for i, setting in enumerate(spec.cc):  # a fresh namespace each: nothing leaks on
            with NetnsLink(LinkSpec(loss_pct=0.0)) as link:
                own, dgram, own_rows, (client, server) = _own_arms(spec, setting, run_id, link,
                                                                   bar)  # fmt: skip
                (added if i else main).extend(own)  # main tables: the first setting's
                added += dgram
                rows += own_rows
                caddy_log = None
                if spec.streams:
                    shared, shared_rows, caddy_log = _shared_arms(spec, setting, run_id, link,
                                                                  bar)  # fmt: skip
                    added += shared
                    rows += shared_rows
                path += path_rows(link, client, server, caddy_log, setting)
    extra = concat(added) if added else None
    tables = concat(main)
    return dataclasses.replace(tables, extra={
        "arms": pd.DataFrame(rows),
        "path": pd.DataFrame(path, columns=PATH_COLUMNS),
        **({"arm_tokens": extra.tokens, "arm_streams": extra.streams} if extra else {}),
    })  # fmt: skip


def facts(run: StoredRun) -> dict[str, dict[str, float]]:
    return loss_facts(run.extra["arms"])


def tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    return [
        ("Per controller setting and loss, per arm: p99 (n), longest gap, tokens lost",
         with_setting(run.extra["arms"])[ARM_COLUMNS]),
        ("Congestion controllers and socket buffers in force, per setting (read back)",
         with_setting(run.extra["path"])[PATH_COLUMNS]),
    ]  # fmt: skip


FIGURES = {  # each at the highest loss measured
    "loss_p99_ms": ("ms", "token latency p99 at the highest packet loss measured (loss)"),
    "loss_gap_max_ms": ("ms", "longest gap between tokens at the highest loss (loss)"),
    "loss_dgram_p99_ms": ("ms", "token p99, one datagram per token, highest loss (loss)"),
    "loss_dgram_tokens_lost": ("tokens", "tokens lost as datagrams at the highest loss (loss)"),
    "loss_h3_p99_ms": ("ms", "per-stream p99 (median), N streams on one HTTP/3 conn. (loss)"),
    "loss_h2_p99_ms": ("ms", "per-stream p99 (median), N streams on one HTTP/2 conn. (loss)"),
    "loss_h1_p99_ms": ("ms", "per-stream p99 (median), N HTTP/1.1 connections (loss)"),
}

EXPERIMENT = Experiment(
    NAME,
    "token latency tails versus real packet loss, TCP and QUIC (network namespace, nftables)",
    Spec,
    quick,
    run,
    generic_charts=False,
    figures=FIGURES,
    facts=facts,
    charts=(charts_net.latency_vs_sweep,),
    captions={"latency_vs_sweep.png": "Token latency and TTFT across the sweep"},
    tables=tables,
    reading=lambda run, facts: loss_reading(run.extra["arms"], run.extra.get("path")),
)
