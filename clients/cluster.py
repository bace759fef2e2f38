"""Fleets on a Dask cluster: load from many machines, the same records back.

Theory of operation
-------------------
`FleetPool` (clients/fleet.py) splits a fleet into shares, one per worker, and runs each
share as `_worker(...)`: asyncio inside, records and a `WorkerStats` out. Locally the
workers are forked processes. With a cluster (`FleetPool(n, cluster="tcp://HOST:PORT")`, or
the process-wide default `set_default`, which `pushlab run|bench --cluster` sets) the
workers are the cluster's Dask workers: `DaskFleet` submits one task per Dask worker
(`workers=[address]`, `allow_other_workers=False`, `pure=False`: a fleet is never cached
nor deduplicated), so the fleet is spread over the machines as the local pool spreads it
over processes, and `gather`s the shares back in client order. Each task runs in a worker
thread, where no event loop is running: `asyncio.run` (or uvloop's runner) there makes the
task's own loop, and its CPU is that thread's (`RUSAGE_THREAD`), not the worker process's
(which also runs Dask's own loop). Each share's `WorkerStats` says where it ran: `host` (the
machine's hostname) and `address` (the Dask worker's address), so a run's
`load_generators` table says where its load came from.

What a task needs: pushlab importable on every worker (the functions travel by reference:
`clients.fleet._worker`, `run_fleet`, all module level), the target reachable from every
worker (a loopback target with workers elsewhere is refused in one line before anything is
sent, `ClusterError`), and a `--ca` file at the same path on every worker.

Clocks. `t_recv_ns` is the client machine's `time.time_ns()`; `t_emit_ns` is the server's,
carried inside each token; `latency_ms` is their difference, so across machines it holds the
two clocks' offset as well as the transport's latency: it means what it says only where the
clocks are one (one kernel: the network-namespace test, where every "host" shares it) or
synchronised well below the latencies compared (PTP; NTP's milliseconds swamp loopback
figures). TTFT, e2e, gaps and recovery times are differences of one client's own
`perf_counter_ns` and are valid on any machine. Shares start at the dispatcher's
`time.time()` + 0.5 s as each worker reads its own clock, so a worker's clock offset is also
its share's start skew.

An unreachable or empty cluster is `ClusterUnavailable` (one line; the CLI exits 1); a
malformed address is a `ParamError` (exit 2).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from streams.errors import ClusterError, ClusterUnavailable, ParamError

if TYPE_CHECKING:
    import pandas as pd

    from clients.base import Target
    from clients.fleet import FleetSpec, WorkerStats
    from records.schema import Tables

CONNECT_TIMEOUT_S = 10.0  # Client(address): a scheduler that does not answer in this is down
TASK_TIMEOUT_SLACK_S = 60.0  # gather waits the fleet's own timeout plus this, then gives up
_ADDRESS = re.compile(r"tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})")
_default: str | None = None


def parse_address(text: str) -> str:
    """`tcp://HOST:PORT` (HOST a name, an IPv4 or a bracketed IPv6 address), or ParamError."""
    match = _ADDRESS.fullmatch(text.strip())
    if not match or not 0 < int(match["port"]) <= 65535:
        raise ParamError(f"--cluster {text!r}: expected tcp://HOST:PORT (a Dask scheduler)",
                         param="cluster")  # fmt: skip
    return text.strip()


def set_default(address: str | None) -> None:
    """The cluster every `FleetPool` made without `cluster=` uses from now on (None: local)."""
    global _default
    _default = parse_address(address) if address else None


def default() -> str | None:
    return _default


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(address: str) -> str:
    return address.rpartition("://")[2].rpartition(":")[0]


class DaskFleet:
    """A connection to a Dask scheduler that runs fleet shares, one task per worker."""

    def __init__(self, address: str, connect_timeout_s: float | None = None) -> None:
        from distributed import Client

        self.address = parse_address(address)
        try:
            timeout = connect_timeout_s or CONNECT_TIMEOUT_S
            self.client = Client(self.address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterUnavailable(f"Dask scheduler {self.address} unreachable: {exc}") from None
        info = self.client.scheduler_info(n_workers=-1)
        self.worker_addresses = sorted(info["workers"])
        if not self.worker_addresses:
            self.client.close()
            raise ClusterUnavailable(f"Dask scheduler {self.address} has no worker")

    def run_shares(
        self,
        spec: FleetSpec,
        target: Target,
        fleet: Callable[..., Any],
        shares: Sequence[tuple[int, range]],
        start_at_s: float,
        timeout_s: float,
    ) -> list[tuple[list[Any], WorkerStats]]:
        """Share k on worker k; the results in share order."""
        remote = [a for a in self.worker_addresses if not _loopback(_host_of(a))]
        if _loopback(target.host) and remote:
            raise ClusterError(
                f"target {target.host}:{target.port} is on loopback, which the cluster's "
                f"worker at {remote[0]} cannot reach: give --server URL at an address it can"
            )
        futures = [
            self.client.submit(_task, w, spec, fleet, share, start_at_s,
                               workers=[self.worker_addresses[w]], allow_other_workers=False,
                               pure=False)
            for w, share in shares
        ]  # fmt: skip
        try:  # bounded: a lost worker or a hung share is an error, not a hang
            deadline = time.monotonic() + timeout_s + TASK_TIMEOUT_SLACK_S
            results: list[tuple[list[Any], WorkerStats]] = [
                future.result(timeout=max(0.0, deadline - time.monotonic())) for future in futures
            ]
        except (OSError, TimeoutError) as exc:
            raise ClusterUnavailable(f"Dask cluster {self.address}: {exc}") from None
        finally:
            for future in futures:
                future.release()
        return results

    def close(self) -> None:
        self.client.close()


def _task(
    worker: int, spec: FleetSpec, fleet: Callable[..., Any], indices: range, start_at_s: float
) -> tuple[list[Any], WorkerStats]:
    """One share inside a Dask worker's thread, stamped with that worker's address."""
    import dataclasses
    import resource

    from distributed import get_worker

    from clients.fleet import _worker

    records, stats = _worker(worker, spec, fleet, indices, start_at_s, resource.RUSAGE_THREAD)
    return records, dataclasses.replace(stats, address=get_worker().address)


def load_frame(
    stats: Sequence[WorkerStats], keys: dict[str, object], transport: str
) -> pd.DataFrame:
    """One row per share of a fleet: `keys` (run, condition, ...), the transport, where it ran
    (`host`, `address`) and the load it carried."""
    import dataclasses

    import pandas as pd

    rows = [
        {**keys, "transport": transport, **dataclasses.asdict(s), "cpu_fraction": s.cpu_fraction}
        for s in stats
    ]
    return pd.DataFrame(rows)


def with_load(tables: Tables, loads: Sequence[pd.DataFrame]) -> Tables:
    """`tables` with the fleets' `load_generators` extra table (none: `tables` as they are)."""
    if not loads:
        return tables
    import dataclasses

    import pandas as pd

    load = pd.concat(loads, ignore_index=True)
    return dataclasses.replace(tables, extra={**tables.extra, "load_generators": load})
