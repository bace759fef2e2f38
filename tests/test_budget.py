"""streams/budget.py: the ledger of running streams and held bytes, alone. Pure: no loop, no
clock, accounts that are plain records, every count exact."""

from __future__ import annotations

import dataclasses

import pytest

from streams.budget import MEMORY_BUDGET, MEMORY_QUOTA, Ledger
from streams.errors import QuotaExceeded, StreamLimitError


@dataclasses.dataclass(eq=False)
class Account:
    id: str
    client: str = ""
    held_bytes: int = 0


def ledger(
    max_streams: int = 10, budget_bytes: int = 1000, client_share: float = 1.0
) -> tuple[Ledger[Account], list[str]]:
    """A ledger and the ids it dropped, in order."""
    dropped: list[str] = []
    return Ledger(max_streams, budget_bytes, client_share, lambda a: dropped.append(a.id)), dropped


def finished(book: Ledger[Account], stream_id: str, nbytes: int, client: str = "") -> Account:
    """A stream that ran, held `nbytes` and finished (kept for its retention)."""
    account = Account(stream_id, client)
    book.run(account)
    assert book.hold(account, nbytes) == ""
    book.release(account)
    book.retain(account)
    return account


def test_running_streams_are_bounded_per_client_429_and_in_all_503() -> None:
    book, _ = ledger(max_streams=4, client_share=0.5)  # a client runs at most 2
    assert book.client_max_streams == 2
    a = [Account(f"a{i}", "a") for i in range(2)]
    for account in a:
        book.admit("a")
        book.run(account)
    with pytest.raises(QuotaExceeded) as quota:
        book.admit("a")
    assert quota.value.status == 429 and quota.value.retry_after_s
    for i in range(2):
        book.admit("b")
        book.run(Account(f"b{i}", "b"))
    with pytest.raises(StreamLimitError) as full:
        book.admit("c")
    assert full.value.status == 503 and full.value.retry_after_s
    book.release(a[0])
    book.release(a[0])  # once is enough: a second release changes nothing
    book.retain(a[0])  # finished streams do not count
    book.admit("a")
    stats = book.statistics()
    assert (stats.streams_running, stats.clients_running) == (3, 2)


def test_a_share_rounds_up_to_at_least_one_stream() -> None:
    assert ledger(max_streams=3, client_share=0.5)[0].client_max_streams == 2
    assert ledger(max_streams=1, client_share=0.01)[0].client_max_streams == 1


def test_per_client_entries_go_at_zero() -> None:
    book, _ = ledger()
    accounts = [Account(f"s{i}", f"c{i}") for i in range(5)]
    for account in accounts:
        book.run(account)
        book.hold(account, 10)
    stats = book.statistics()
    assert (stats.clients_running, stats.clients_holding, stats.held_bytes) == (5, 5, 50)
    for account in accounts:
        book.release(account)
        book.forget(account)
    stats = book.statistics()
    assert (stats.clients_running, stats.clients_holding, stats.held_bytes) == (0, 0, 0)
    assert all(a.held_bytes == 0 for a in accounts)


def test_past_the_budget_finished_streams_go_first_retained_first() -> None:
    book, dropped = ledger(budget_bytes=350)
    for name in ("first", "second", "third"):
        finished(book, name, 100)
    running = Account("running")
    book.run(running)
    assert book.hold(running, 50) == "" and dropped == []  # 350: at the budget is within it
    assert book.hold(running, 120) == ""  # 470: "first" goes, 370: "second" goes, 270
    assert dropped == ["first", "second"] and book.held_bytes == 270
    assert running.held_bytes == 170 and book.statistics().evicted == 2


def test_past_the_budget_with_nothing_left_to_forget_the_verdict_is_memory_budget() -> None:
    book, dropped = ledger(budget_bytes=300)
    finished(book, "done", 100)
    running = Account("running")
    book.run(running)
    assert book.hold(running, 150) == ""
    assert book.hold(running, 200) == MEMORY_BUDGET  # 450 - 100 forgotten: still 350
    assert dropped == ["done"] and book.held_bytes == 350  # the budget plus one batch at most
    assert book.hold(Account("other"), 1) == MEMORY_BUDGET  # nothing finished to forget


def test_past_its_share_the_verdict_is_memory_quota_for_that_client_only() -> None:
    book, _ = ledger(budget_bytes=1000, client_share=0.25)  # a client holds 250 at most
    greedy, modest = Account("g", "greedy"), Account("m", "modest")
    assert book.hold(greedy, 250) == ""
    assert book.hold(greedy, 1) == MEMORY_QUOTA
    assert book.hold(modest, 250) == ""
    with pytest.raises(QuotaExceeded) as refused:  # at its share, a client runs nothing new
        book.admit("greedy")
    assert refused.value.status == 429
    book.admit("someone else")


def test_the_quota_is_checked_after_eviction_took_the_clients_own_bytes() -> None:
    book, dropped = ledger(budget_bytes=400, client_share=0.5)  # a client holds 200 at most
    finished(book, "old", 150, client="a")
    finished(book, "other", 200, client="b")
    mine = Account("new", "a")
    assert book.hold(mine, 100) == ""  # 450: "old" goes, and with it a's 150 of 250
    assert dropped == ["old"] and book.held_bytes == 300


def test_admit_forgets_finished_streams_and_refuses_when_running_ones_hold_the_budget() -> None:
    book, dropped = ledger(budget_bytes=300)
    finished(book, "done", 100)
    running = Account("running")
    book.run(running)
    book.hold(running, 200)
    book.admit("x")  # 300, at the budget: room is made below it
    assert dropped == ["done"] and book.held_bytes == 200
    assert book.hold(running, 100) == ""
    with pytest.raises(StreamLimitError) as full:
        book.admit("x")
    assert full.value.status == 503 and "spent by running streams" in full.value.message
    with pytest.raises(StreamLimitError):  # what the shared log asks before reading one in
        book.require_memory()


def test_forgotten_and_unheld_streams_leave_the_accounts() -> None:
    book, dropped = ledger(budget_bytes=250)
    gone = finished(book, "gone", 100)
    book.forget(gone)  # expired: no longer eviction's to take
    replica = Account("replica", "r")
    assert book.hold(replica, 100) == ""
    book.unhold(replica)
    assert (gone.held_bytes, replica.held_bytes, book.held_bytes) == (0, 0, 0)
    running = Account("running")
    book.run(running)
    assert book.hold(running, 300) == MEMORY_BUDGET and dropped == []

