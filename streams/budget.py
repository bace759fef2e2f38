"""The hub's memory budget and per-client shares: what streams may run and hold, sans I/O.

Theory of operation
-------------------
A `Ledger` keeps, for one hub, the streams running (what timers and relay tasks cost) and the
bytes of tokens held (what readers and resumes need), in total and per client (an identity,
else an address: the hub names it). It has no clock, no loop and no I/O: the hub tells it what
happened (`run`, `hold`, `release`, `retain`, `forget`) and asks what is allowed (`admit`, the
verdict of `hold`); a finished stream it forgets to make room goes to the hub's `drop`. Each
limit bounds one resource a client could otherwise exhaust, and is checked in O(1):

- running streams: at most `max_streams` at once, else StreamLimitError (503, Retry-After) at
  `admit`. Finished streams do not count; the hub keeps them for its retention, bounded by
- held bytes: `hold` adds a stream's new tokens (the hub's cost of a token: payload, text and
  a measured overhead; once per wake, the batch's sum). When a hold takes the total past
  `budget_bytes`, finished streams are forgotten, the first retained first (`evicted`); if
  that is not enough, the verdict is "memory budget": the hub cancels the holding stream. So
  the hub never holds more than the budget plus one batch (the tokens one wake appends to one
  stream), because a stream that overshoots is finished at once and is the first thing the
  next hold forgets. `admit` forgets finished streams too, and refuses (503) while running
  streams alone hold the budget.
- per client: at most ceil(`max_streams` * `client_share`) running streams and
  `budget_bytes` * `client_share` held bytes, else QuotaExceeded (429, Retry-After) at
  `admit`; a hold past the client's byte share has the verdict "memory quota", so that one
  client cannot take the budget the others' running streams need. The per-client counters are
  dicts whose entries go when they reach zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from streams.errors import QuotaExceeded, StreamLimitError

# the verdicts of Ledger.hold that end the holding stream (its `reason`), "" for none
MEMORY_BUDGET, MEMORY_QUOTA = "memory budget", "memory quota"


class Held(Protocol):
    """What a ledger accounts (the hub's Stream). `held_bytes` is the ledger's to change."""

    id: str
    client: str  # whose shares it counts against
    held_bytes: int


H = TypeVar("H", bound=Held)


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerStats:
    streams_running: int
    held_bytes: int
    budget_bytes: int
    clients_running: int  # clients with a running stream
    clients_holding: int  # clients whose streams hold bytes
    evicted: int  # finished streams forgotten before their retention, for the budget


class Ledger(Generic[H]):
    """Running streams and held bytes of one hub, in total and per client; see the module
    docstring. `drop(stream)` is called for each finished stream forgotten for room."""

    def __init__(
        self, max_streams: int, budget_bytes: int, client_share: float, drop: Callable[[H], None]
    ) -> None:
        self.max_streams = max_streams
        self.budget_bytes = budget_bytes
        self.client_max_streams = max(1, math.ceil(max_streams * client_share))
        self.client_max_bytes = int(budget_bytes * client_share)
        self.held_bytes = 0  # the sum of every held stream's held_bytes
        self._drop = drop
        self._running: set[str] = set()  # ids of the running streams: what max_streams bounds
        self._retained: dict[str, H] = {}  # finished streams held, in the order they finished
        self._client_running: dict[str, int] = {}  # client -> its running streams (> 0)
        self._client_bytes: dict[str, int] = {}  # client -> its streams' held_bytes (> 0)
        self._evicted = 0

    def admit(self, client: str) -> None:
        """Raise unless one more running stream for `client` fits (forgetting finished
        streams if the budget is spent): QuotaExceeded beyond the client's share,
        StreamLimitError beyond the hub's."""
        if self._client_running.get(client, 0) >= self.client_max_streams:
            raise QuotaExceeded(
                f"this client runs {self.client_max_streams} streams already, its share of "
                f"the server's {self.max_streams}; retry when one has ended"
            )
        if len(self._running) >= self.max_streams:
            raise StreamLimitError(f"the server runs {self.max_streams} streams already")
        self.require_memory()
        if self._client_bytes.get(client, 0) >= self.client_max_bytes:
            raise QuotaExceeded(
                f"this client's streams hold {self.client_max_bytes:,} bytes of tokens, its "
                f"share of the server's memory; retry when they have expired"
            )

    def require_memory(self) -> None:
        """Forget finished streams while the budget is spent; StreamLimitError if it still is
        (running streams hold it all)."""
        if self.held_bytes >= self.budget_bytes:
            self._evict(self.budget_bytes - 1)
            if self.held_bytes >= self.budget_bytes:
                raise StreamLimitError(
                    f"the server's memory for held tokens ({self.budget_bytes:,} bytes) "
                    f"is spent by running streams"
                )

    def run(self, stream: H) -> None:
        """`stream` runs: it counts against the running limits until `release`."""
        self._running.add(stream.id)
        self._client_running[stream.client] = self._client_running.get(stream.client, 0) + 1

    def release(self, stream: H) -> None:
        """`stream` no longer runs (it ended, or another node runs it); once is enough."""
        if stream.id in self._running:
            self._running.remove(stream.id)
            left = self._client_running[stream.client] - 1
            if left:
                self._client_running[stream.client] = left
            else:
                del self._client_running[stream.client]

    def retain(self, stream: H) -> None:
        """`stream` finished and is kept: eviction takes the first retained first."""
        self._retained[stream.id] = stream

    def hold(self, stream: H, nbytes: int) -> str:
        """`stream` holds `nbytes` more. Past the budget, forget finished streams; the
        verdict: MEMORY_BUDGET if still past it, MEMORY_QUOTA if its client is past its
        share, "" if it fits. The hub calls this once per wake: keep it lean."""
        stream.held_bytes += nbytes
        self.held_bytes += nbytes
        client = stream.client
        client_bytes = self._client_bytes.get(client, 0) + nbytes
        self._client_bytes[client] = client_bytes
        if self.held_bytes > self.budget_bytes:
            self._evict(self.budget_bytes)
            if self.held_bytes > self.budget_bytes:
                return MEMORY_BUDGET
            client_bytes = self._client_bytes.get(client, 0)  # the evicted may have been its
        return MEMORY_QUOTA if client_bytes > self.client_max_bytes else ""

    def forget(self, stream: H) -> None:
        """Take the finished `stream` out of the retained ones and its bytes out, for good."""
        self._retained.pop(stream.id, None)
        self.unhold(stream)

    def unhold(self, stream: H) -> None:
        """Take `stream`'s bytes out of the accounts, for good."""
        nbytes, stream.held_bytes = stream.held_bytes, 0
        self.held_bytes -= nbytes
        left = self._client_bytes.get(stream.client, 0) - nbytes
        if left > 0:
            self._client_bytes[stream.client] = left
        else:
            self._client_bytes.pop(stream.client, None)

    def _evict(self, limit_bytes: int) -> None:
        """Forget finished streams, the first retained first, until at most `limit_bytes`
        are held or none is left; each goes to `drop`."""
        while self.held_bytes > limit_bytes and self._retained:
            stream = next(iter(self._retained.values()))
            self.forget(stream)
            self._evicted += 1
            self._drop(stream)

    def statistics(self) -> LedgerStats:
        return LedgerStats(
            streams_running=len(self._running),
            held_bytes=self.held_bytes,
            budget_bytes=self.budget_bytes,
            clients_running=len(self._client_running),
            clients_holding=len(self._client_bytes),
            evicted=self._evicted,
        )
