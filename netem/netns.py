"""Real kernel network conditions: a server in its own network namespace behind a veth pair.

Theory of operation
-------------------
`NetnsLink` makes namespace `pushlab-<pid>-<n>` holding the SERVER side of a path:

    root namespace (client)                      pushlab-<pid>-<n> (server)
    pushlab-x<X>  198.18.X.1/30  <--- veth --->  veth0  198.18.X.2/30,  lo up
    [tbf: up]                                    [tbf: down]  [nft table inet pushlab]
    [nft table netdev pushlab_x<X>]

Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking). X is claimed atomically by
creating the root-side interface `pushlab-x<X>` (interface names are unique, so two
processes can never get the same X); its alias names the namespace, so a leftover can be
attributed. `popen` runs a command inside the namespace with `ip netns exec`.

Loss (`LinkSpec.loss_pct`) applies to BOTH directions, as "packet loss on a path" usually
means, and always on the RECEIVING side, as a lossy path drops: the sender never learns of
it. Client -> server: the namespace's nftables table `inet pushlab`, `input` hook,
`iifname "veth0" meta l4proto { tcp, udp } numgen random mod 10000 < N counter name
"dropped_in" drop`. Server -> client: the same rule (counter "dropped_out") in the root
namespace's table `netdev pushlab_x<X>`, on the `ingress` hook of `pushlab-x<X>` only (no
other interface of the machine is touched; `close()` and `cleanup_stale()` delete it, as
the kernel keeps a netdev table after its device is gone). TCP and UDP are dropped alike,
so QUIC (HTTP/3, WebTransport: UDP) suffers the same loss as TCP; loopback inside the
namespace, ICMP and ARP are not, with a resolution of 0.01 %. There is no seed: `numgen
random` draws from the kernel's own PRNG. Each counter counts both protocols together.

Why not the namespace's `output` hook for server -> client (as this module first did, TCP
only): a packet dropped on a local output hook fails the sender's own send with EPERM.
MEASURED here with a UDP echo at 30 %: the first dropped reply made its `sendto` raise
PermissionError. TCP absorbs that (the segment stays queued and goes again), asyncio hands
it to `error_received`, but quic-go (Caddy's HTTP/3) destroys the whole connection on any
send error but "message too long" (send_queue.go returns it; read in quic-go's source, not
measured here): a local drop is not loss, and must not look like a broken socket.
Both veth ends get `gso_max_segs 1`, so the stack hands the veth MSS-sized packets; without
it a "packet" is a GSO super-packet of up to 64 KiB and one drop loses ~45 segments at once.
Both ends also get one queue with RPS over all CPUs: a veth delivers on the backlog of the
CPU that sent, so a sender migrating between CPUs reorders a flow, and TCP then retransmits
spuriously (measured here: 20-34 retransmits per 300 kB echo on a loss-free link); RPS keeps
each flow on one backlog, in order.

Bandwidth (`LinkSpec.rate_bps`, bits per second) is a `tbf` qdisc on both veth ends (each
limits its own egress, i.e. one direction). Burst: 10 ms worth of bytes at the rate, but at
least two full 1514-byte frames; queue: 100 ms (`latency`). netem does not exist on every
kernel (`capabilities().netem`); nothing here needs it.

Every failure raises `NetnsError` with the command and its stderr on one line, after undoing
whatever was already made; a condition this machine cannot create is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, NamedTuple

from harness import procstat
from harness.children import stop_process
from streams.errors import EnvironmentUnavailable, PushlabError


def _tool(name: str) -> str:
    """Absolute path of a system tool (root's /usr/sbin may be missing from PATH)."""
    for directory in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.access(f"{directory}/{name}", os.X_OK):
            return f"{directory}/{name}"
    return shutil.which(name) or name


_IP = _tool("ip")
_TC = _tool("tc")
_NFT = _tool("nft")
_TEE = _tool("tee")
_CMD_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 3.0
_NS_RE = re.compile(r"^pushlab-(\d+)-\w+$")
_STALE_TABLE_RE = re.compile(r"^pushlab_x\d+$")  # a root-side loss table (`_ingress_table`)
_NS_IF = "veth0"
_LOSS_MOD = 10_000  # numgen modulus: loss resolution 0.01 %
_TBF_BURST_S = 0.010
_TBF_MIN_BURST_BYTES = 2 * 1514
_TBF_LATENCY_MS = 100
_ONE_QUEUE = ["numtxqueues", "1", "numrxqueues", "1"]
_RPS_CPUS = "/sys/class/net/{}/queues/rx-0/rps_cpus"
_NFT_COUNTERS = [_NFT, "-j", "list", "counters", "table", "inet", "pushlab"]
_ns_numbers = itertools.count()


class NetnsError(PushlabError, RuntimeError):
    """A namespace, link or condition could not be created, changed or read here."""


class NetnsUnavailable(NetnsError, EnvironmentUnavailable):
    """This machine cannot make the condition at all (no namespaces, veth, tbf or nftables)."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _run(argv: Sequence[str], *, stdin: str | None = None, netns: str | None = None) -> str:
    """Run one command (in `netns`); its stdout, or `NetnsError` naming it and its stderr."""
    if netns is not None:
        argv = [_IP, "netns", "exec", netns, *argv]
    command = " ".join(argv)
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{command}: {_one_line(str(exc))}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{command}: {_one_line(done.stderr) or f'exit {done.returncode}'}")
    return done.stdout


def _cpu_mask(n_cpus: int) -> str:
    """All of CPUs 0..n_cpus-1 as a sysfs cpumask: 32-bit hex groups joined by commas."""
    mask, groups = (1 << n_cpus) - 1, []
    while mask:
        groups.append(f"{mask & 0xFFFFFFFF:08x}")
        mask >>= 32
    return ",".join(reversed(groups))


def _drop_rule(loss_pct: float) -> str:
    """The match of both loss rules: TCP and UDP, `loss_pct` of them at random."""
    threshold = round(loss_pct * _LOSS_MOD / 100)
    return f"meta l4proto {{ tcp, udp }} numgen random mod {_LOSS_MOD} < {threshold}"


def _nft_script(loss_pct: float) -> str:
    """The namespace's `inet pushlab` table (client -> server drops, received on veth0),
    loadable again to change the loss atomically."""
    return f"""table inet pushlab {{
    counter dropped_in {{ }}
    chain input {{ type filter hook input priority filter; policy accept; }}
}}
flush chain inet pushlab input
add rule inet pushlab input iifname "{_NS_IF}" {_drop_rule(loss_pct)} counter name "dropped_in" drop
"""


def _ingress_table(device: str) -> str:
    """The root-side table's name for `device` (nft names: no hyphen)."""
    return device.replace("-", "_")


def _ingress_script(device: str, loss_pct: float) -> str:
    """Table `netdev <device>` dropping server -> client packets as `device` receives them;
    loadable again to change the loss atomically (declared, flushed, refilled)."""
    table = _ingress_table(device)
    return f"""table netdev {table} {{
    counter dropped_out {{ }}
    chain ingress {{ type filter hook ingress device "{device}" priority filter; policy accept; }}
}}
flush chain netdev {table} ingress
add rule netdev {table} ingress {_drop_rule(loss_pct)} counter name "dropped_out" drop
"""


def _delete_ingress_table(device: str) -> None:
    """Delete the root-side table of `device`, if there is one."""
    table = _ingress_table(device)
    _run([_NFT, "-f", "-"], stdin=f"table netdev {table} {{ }}\ndelete table netdev {table}\n")


def _tbf_args(rate_bps: float) -> list[str]:
    burst_bytes = max(_TBF_MIN_BURST_BYTES, round(rate_bps / 8 * _TBF_BURST_S))
    return ["root", "tbf", "rate", f"{round(rate_bps)}bit", "burst", str(burst_bytes),
            "latency", f"{_TBF_LATENCY_MS}ms"]  # fmt: skip


@dataclass(frozen=True)
class Capabilities:
    """What this machine can build, found by trying; `reasons[name]` says why one is False."""

    netns: bool
    veth: bool
    tbf: bool
    nft_random_drop: bool
    netem: bool
    reasons: dict[str, str] = field(default_factory=dict)


_CAPABILITY_NAMES = ("netns", "veth", "tbf", "nft_random_drop", "netem")


class _Step(NamedTuple):
    argv: list[str]
    stdin: str | None = None
    netns: str | None = None


def _probes(ns: str) -> dict[str, list[_Step]]:
    """Each capability and the commands proving it in namespace `ns`, in order."""
    return {
        "veth": [
            _Step([_IP, "-n", ns, "link", "add", "p0", *_ONE_QUEUE, "type", "veth", "peer",
                   "name", "p1"]),
            _Step([_TEE, _RPS_CPUS.format("p0")], _cpu_mask(os.cpu_count() or 1), ns),
        ],
        "tbf": [_Step([_TC, "-n", ns, "qdisc", "add", "dev", "p0", *_tbf_args(1e6)])],
        "netem": [_Step([_TC, "-n", ns, "qdisc", "add", "dev", "p1", "root", "netem", "loss",
                         "1%"])],
        "nft_random_drop": [
            _Step([_NFT, "-f", "-"], _nft_script(1.0), ns),
            _Step([_NFT, "-f", "-"], _ingress_script("p1", 1.0), ns),
            _Step(_NFT_COUNTERS, None, ns),
        ],
    }  # fmt: skip


@functools.cache
def capabilities() -> Capabilities:
    """Try each facility in a scratch namespace (deleted again); cached per process."""
    found = dict.fromkeys(_CAPABILITY_NAMES, False)
    reasons: dict[str, str] = {}
    name = f"pushlab-{os.getpid()}-probe"
    try:
        _run([_IP, "netns", "add", name])
        found["netns"] = True
    except NetnsError as exc:
        reasons["netns"] = str(exc)
    try:
        for capability, steps in _probes(name).items() if found["netns"] else []:
            if capability != "veth" and not found["veth"]:
                reasons[capability] = "needs a veth pair, which failed"
                continue
            try:
                for step in steps:
                    _run(step.argv, stdin=step.stdin, netns=step.netns)
                found[capability] = True
            except NetnsError as exc:
                reasons[capability] = str(exc)
    finally:
        if found["netns"]:
            _run([_IP, "netns", "del", name])
    for capability in _CAPABILITY_NAMES:
        if not found[capability] and capability not in reasons:
            reasons[capability] = "needs a network namespace, which failed"
    return Capabilities(**found, reasons=reasons)


@dataclass(frozen=True)
class LinkSpec:
    """Conditions on the path: `loss_pct` drops TCP and UDP packets in both directions (0-100,
    to 0.01 %, kernel RNG, no seed); `rate_bps` limits each direction with tbf (None =
    unlimited).
    """

    loss_pct: float = 0.0
    rate_bps: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.loss_pct <= 100:
            raise ValueError(f"loss_pct must be within 0-100, not {self.loss_pct}")
        if self.rate_bps is not None and not self.rate_bps >= 8000:
            raise ValueError(f"rate_bps must be at least 8000 bit/s, not {self.rate_bps}")


def _require(caps: Capabilities, spec: LinkSpec) -> None:
    needs = [("netns", "a network namespace"), ("veth", "a veth pair")]
    if spec.rate_bps is not None:
        needs.append(("tbf", f"a tbf bandwidth limit of {spec.rate_bps:g} bit/s"))
    if spec.loss_pct > 0:
        needs.append(("nft_random_drop", f"{spec.loss_pct:g} % random packet drop (nftables)"))
    for capability, condition in needs:
        if not getattr(caps, capability):
            reason = caps.reasons.get(capability, "unknown")
            raise NetnsUnavailable(f"cannot create {condition} on this machine: {reason}")


def _root_198_18_octets() -> set[int]:
    """Third octets X of 198.18.X.* addresses already present in the root namespace."""
    used: set[int] = set()
    for link in json.loads(_run([_IP, "-j", "-4", "addr", "show"]) or "[]"):
        for addr in link.get("addr_info", []):
            parts = str(addr.get("local", "")).split(".")
            if parts[:2] == ["198", "18"]:
                used.add(int(parts[2]))
    return used


class NetnsLink:
    """A server namespace behind a veth pair with `spec`'s conditions; `close()` removes all."""

    def __init__(self, spec: LinkSpec | None = None) -> None:
        self.spec = spec if spec is not None else LinkSpec()
        _require(capabilities(), self.spec)
        self._has_nft = capabilities().nft_random_drop
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        with contextlib.ExitStack() as undo:
            self.name = self._add_namespace()
            undo.callback(_delete_namespace, self.name)
            self._octet = self._claim_host_if()
            self.host_if = f"pushlab-x{self._octet}"
            undo.callback(_run, [_IP, "link", "del", "dev", self.host_if])
            if self._has_nft:
                undo.callback(_delete_ingress_table, self.host_if)
            self._configure()
            self._undo = undo.pop_all()

    @property
    def client_host(self) -> str:
        """The root-namespace (client) end of the veth pair."""
        return f"198.18.{self._octet}.1"

    @property
    def server_host(self) -> str:
        """The namespace (server) end of the veth pair."""
        return f"198.18.{self._octet}.2"

    def _add_namespace(self) -> str:
        for _ in range(100):
            name = f"pushlab-{os.getpid()}-{next(_ns_numbers)}"
            try:
                _run([_IP, "netns", "add", name])
                return name
            except NetnsError as exc:
                if "File exists" not in str(exc):
                    raise
        raise NetnsError(f"no free namespace name pushlab-{os.getpid()}-<n>")

    def _claim_host_if(self) -> int:
        used = _root_198_18_octets()
        for octet in (x for x in range(256) if x not in used):
            try:
                _run([_IP, "link", "add", f"pushlab-x{octet}", *_ONE_QUEUE, "type", "veth",
                      "peer", "name", _NS_IF, *_ONE_QUEUE, "netns", self.name])  # fmt: skip
                return octet
            except NetnsError as exc:
                if "File exists" not in str(exc):
                    raise
        raise NetnsError("no free 198.18.X.0/30 subnet: 198.18.0-255.x are all in use")

    def _configure(self) -> None:
        ns_ip = [_IP, "-n", self.name]
        _run([_IP, "link", "set", "dev", self.host_if, "alias", self.name, "gso_max_segs", "1"])
        _run([_IP, "addr", "add", f"{self.client_host}/30", "dev", self.host_if])
        _run([*ns_ip, "link", "set", "dev", _NS_IF, "gso_max_segs", "1"])
        _run([*ns_ip, "addr", "add", f"{self.server_host}/30", "dev", _NS_IF])
        _run([*ns_ip, "link", "set", "dev", "lo", "up"])
        _run([*ns_ip, "link", "set", "dev", _NS_IF, "up"])
        _run([_IP, "link", "set", "dev", self.host_if, "up"])
        mask = _cpu_mask(os.cpu_count() or 1)
        _run([_TEE, _RPS_CPUS.format(_NS_IF)], stdin=mask, netns=self.name)
        _run([_TEE, _RPS_CPUS.format(self.host_if)], stdin=mask)
        if self.spec.rate_bps is not None:
            tbf = _tbf_args(self.spec.rate_bps)
            _run([_TC, "-n", self.name, "qdisc", "add", "dev", _NS_IF, *tbf])
            _run([_TC, "qdisc", "add", "dev", self.host_if, *tbf])
        if self._has_nft:
            self._load_nft(self.spec.loss_pct)

    def _load_nft(self, loss_pct: float) -> None:
        _run([_NFT, "-f", "-"], stdin=_nft_script(loss_pct), netns=self.name)
        _run([_NFT, "-f", "-"], stdin=_ingress_script(self.host_if, loss_pct))

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace; `close()` stops it by its pid."""
        if self._closed:
            raise NetnsError(f"{self.name} is closed")
        proc = subprocess.Popen([_IP, "netns", "exec", self.name, *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def set_loss(self, loss_pct: float) -> None:
        """Change the drop rate of both directions live (one atomic nft transaction)."""
        spec = replace(self.spec, loss_pct=loss_pct)
        if not self._has_nft and loss_pct > 0:
            _require(capabilities(), spec)
        if self._has_nft:
            self._load_nft(loss_pct)
        self.spec = spec

    def counters(self) -> dict[str, int]:
        """Packets and bytes dropped by the loss rules since the link was made."""
        result = {f"dropped_{d}_{u}": 0 for d in ("in", "out") for u in ("packets", "bytes")}
        if self._has_nft:
            table = ["netdev", _ingress_table(self.host_if)]
            root_counters = [_NFT, "-j", "list", "counters", "table", *table]
            items = [*json.loads(_run(_NFT_COUNTERS, netns=self.name))["nftables"],
                     *json.loads(_run(root_counters))["nftables"]]  # fmt: skip
            for item in items:
                counter = item.get("counter")
                if counter and counter["name"] in ("dropped_in", "dropped_out"):
                    result[f"{counter['name']}_packets"] = int(counter["packets"])
                    result[f"{counter['name']}_bytes"] = int(counter["bytes"])
        result["dropped_packets"] = result["dropped_in_packets"] + result["dropped_out_packets"]
        return result

    def close(self) -> None:
        """Stop the processes started with `popen` (by pid), then delete veth and namespace."""
        if self._closed:
            return
        self._closed = True
        with self._undo:
            for proc in self._procs:
                stop_process(proc, _STOP_TIMEOUT_S)

    def __enter__(self) -> NetnsLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetnsLink({self.name!r}, {self.server_host}, {self.spec})"


def _delete_namespace(name: str) -> None:
    """Kill by pid whatever still runs in `name` (it would keep the veth alive), then delete."""
    for pid in _run([_IP, "netns", "pids", name]).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    _run([_IP, "netns", "del", name])


def _is_stale(name: str) -> bool:
    match = _NS_RE.match(name)
    return match is not None and not procstat.alive(int(match[1]))


def cleanup_stale() -> list[str]:
    """Delete `pushlab-<pid>-*` namespaces and root veths whose pid is gone; names removed.

    Processes still running inside such a namespace are killed (by pid) first.
    """
    removed: list[str] = []
    for link in json.loads(_run([_IP, "-j", "link", "show", "type", "veth"]) or "[]"):
        if _is_stale(link.get("ifalias", "")):
            _run([_IP, "link", "del", "dev", link["ifname"]])
            removed.append(link["ifname"])
    for entry in json.loads(_run([_IP, "-j", "netns", "list"]) or "[]"):
        if _is_stale(entry["name"]):
            _delete_namespace(entry["name"])
            removed.append(entry["name"])
    # root-side loss tables whose veth is gone (the kernel keeps them after the device); the
    # tables first: a link makes its veth before its table, so a live one's veth is listed
    if capabilities().nft_random_drop:
        tables = json.loads(_run([_NFT, "-j", "list", "tables", "netdev"]) or "{}")
        links = json.loads(_run([_IP, "-j", "link", "show"]) or "[]")
        devices = {link["ifname"] for link in links}
        for item in tables.get("nftables", []):
            name = item.get("table", {}).get("name", "")
            if _STALE_TABLE_RE.match(name) and name.replace("_", "-") not in devices:
                _delete_ingress_table(name.replace("_", "-"))
                removed.append(f"netdev {name}")
    return removed
