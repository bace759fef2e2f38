"""Connection bounds (transports/web/limits.py): caps answered at once with 503/429, a head
deadline against slowloris, keep-alive and body timeouts, a quiet accept path when the
descriptors run out. Servers run as children (harness/children.py); every wait is bounded
and scaled by UNIT, and nothing asserts a duration: "closed" is an EOF (or a reset) seen
within a generous deadline."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import select
import socket
import time
from collections.abc import Iterator

import pytest

from harness.children import ServerProcess
from tests.support import UNIT, wait_until
from transports.web.config import ServerConfig, parse_config
from transports.web.limits import AcceptErrors, ConnectionLimits

HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a head without its blank line


@contextlib.contextmanager
def server(*args: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(args=list(args))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def connect(proc: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((proc.target.host, proc.target.port), 5 * UNIT,
                                    source_address=(source, 0))  # fmt: skip
    sock.settimeout(10 * UNIT)
    return sock


def read_to_close(sock: socket.socket) -> bytes:
    """Everything until the server closes (EOF, or a reset after what it sent)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def request(proc: ServerProcess, path: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """(status, body) of one GET on a connection of its own."""
    with connect(proc, source) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())  # fmt: skip
        return split(read_to_close(sock))


def split(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def connections(proc: ServerProcess, source: str = "127.0.0.1") -> dict[str, int]:
    status, body = request(proc, "/stats", source)
    assert status == 200, body
    return json.loads(body)["connections"]


def served_stats(proc: ServerProcess) -> dict[str, int]:
    """/stats' connections, or {} while the request is refused."""
    try:
        status, body = request(proc, "/stats")
    except OSError:
        return {}
    return json.loads(body)["connections"] if status == 200 else {}


def stats_with_open(proc: ServerProcess, n: int) -> dict[str, int]:
    """/stats' connections once `n` are open, its own included (a bounded wait)."""

    def check() -> dict[str, int]:
        stats = served_stats(proc)
        return stats if stats.get("open") == n else {}

    return wait_until(check, timeout_units=20, what=f"{n} connection(s) open")


def error_type(body: bytes) -> str:
    return json.loads(body)["error"]["type"]


# -- the accounting, without a server --


def test_admit_counts_per_address_and_forgets_an_address_at_zero() -> None:
    limits = ConnectionLimits(4, 0.5, 10.0)
    assert limits.max_per_client == 2
    assert limits.admit("a") == limits.admit("a") == b""
    assert limits.admit("a") == limits.over_share  # the address holds its share
    assert limits.admit("b") == limits.admit("b") == b""
    assert limits.admit("c") == limits.full  # the server holds its maximum
    limits.release("a")
    limits.release("a")
    assert limits.by_address == {"b": 2}
    stats = limits.statistics()
    assert (stats["open"], stats["peak"], stats["refused_client"], stats["refused_global"]) == (
        2, 4, 1, 1)  # fmt: skip


def test_refusals_are_whole_responses_that_close() -> None:
    limits = ConnectionLimits(3, 1.0, 0.5)
    for response, status, kind in [(limits.full, 503, "overloaded_error"),
                                   (limits.over_share, 429, "rate_limit_error"),
                                   (limits.head_late, 408, "timeout_error")]:  # fmt: skip
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode())
        assert b"\r\nRetry-After: 1\r\nConnection: close" in head
        assert f"Content-Length: {len(body)}".encode() in head
        assert error_type(body) == kind


class FakeLoop:
    def __init__(self) -> None:
        self.passed: list[dict[str, object]] = []

    def default_exception_handler(self, context: dict[str, object]) -> None:
        self.passed.append(context)


def test_accept_errors_are_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = ConnectionLimits(10, 0.5, 10.0)
    now = [100.0]
    handler = AcceptErrors(limits, every_s=10.0, clock=lambda: now[0])
    loop = FakeLoop()
    context = {"message": "socket.accept() out of system resource",
               "exception": OSError(errno.EMFILE, "Too many open files")}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pushlab.server"):
        for _ in range(5):  # asyncio retries once a second
            handler(loop, context)  # type: ignore[arg-type]
            now[0] += 1.0
        now[0] += 10.0
        handler(loop, context)  # type: ignore[arg-type]
    assert limits.accept_errors == 6
    lines = [r for r in caplog.records if r.name == "pushlab.server"]
    assert len(lines) == 2 and all(r.exc_info is None for r in lines)
    assert "failed 5 time(s)" in lines[1].getMessage()  # the four unlogged and this one
    other = {"message": "Task exception was never retrieved", "exception": ValueError("x")}
    handler(loop, other)  # type: ignore[arg-type]
    assert loop.passed == [other] and limits.accept_errors == 6
    handler.close()


def test_an_accept_failure_refuses_the_waiting_connections() -> None:
    limits = ConnectionLimits(10, 0.5, 10.0)
    handler = AcceptErrors(limits)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)  # as the loop's own
        waiting = [socket.create_connection(listener.getsockname(), 5 * UNIT) for _ in range(3)]
        context = {"message": "socket.accept() out of system resource", "socket": listener,
                   "exception": OSError(errno.EMFILE, "Too many open files")}  # fmt: skip
        handler(FakeLoop(), context)  # type: ignore[arg-type]
        assert listener.fileno() >= 0  # still the loop's
        for sock in waiting:
            with sock:
                sock.settimeout(10 * UNIT)
                assert read_to_close(sock) == limits.full
    assert (limits.refused_global, limits.accept_errors) == (3, 1)
    handler.close()
    assert handler.reserve == -1


def test_workers_are_given_the_limits() -> None:
    """serve_workers starts each worker with `config.to_argv()`: the bounds survive it."""
    config = ServerConfig(max_connections=900, client_share=0.25, header_timeout_s=2.5,
                          body_timeout_s=3.5, keepalive_s=4.5, workers=3,
                          log="redis://127.0.0.1:6390")  # fmt: skip
    worker = dataclasses.replace(config, workers=1, port=8123, reuse_port=True, node_id="n-w0")
    assert parse_config(worker.to_argv()) == worker


# -- a real server --


def test_slowloris_connections_are_closed_and_others_served() -> None:
    n = 20
    with server("--header-timeout-s", str(0.5 * UNIT)) as proc:
        slow = [connect(proc) for _ in range(n)]
        for sock in slow:
            sock.sendall(HEAD)
        still_open, deadline = set(slow), time.monotonic() + 30 * UNIT
        served = False
        while still_open and time.monotonic() < deadline:
            for sock in list(still_open):
                try:
                    sock.send(b"X")  # one more byte of a header line that never ends
                except OSError:
                    still_open.discard(sock)
            readable, _, _ = select.select(list(still_open), [], [], 0.1)
            for sock in readable:
                with contextlib.suppress(ConnectionResetError):
                    if sock.recv(65536):
                        continue  # the 408, then the close
                still_open.discard(sock)
            if not served:  # a normal client meanwhile
                assert request(proc, "/healthz") == (200, b'{"ok": true}')
                served = True
        for sock in slow:
            sock.close()
        assert not still_open, f"{len(still_open)} of {n} slow connections still open"
        # and one that stops sending gets the whole 408 before the close
        with connect(proc) as quiet:
            quiet.sendall(HEAD)
            status, body = split(read_to_close(quiet))
        assert (status, error_type(body)) == (408, "timeout_error")
        stats = stats_with_open(proc, 1)  # its own: the slow ones are released
        assert stats["header_timeouts"] == n + 1
        assert stats["peak"] >= n + 1


def test_connection_caps_refuse_with_whole_responses() -> None:
    """4 connections, 2 per address: the 3rd from one address gets 429, the 5th 503. The
    server accepts in the order the kernel queued: each refusal follows the holds before it."""
    with server("--max-connections", "4", "--client-share", "0.5",
                "--header-timeout-s", str(60 * UNIT)) as proc:  # fmt: skip
        held = [connect(proc), connect(proc), connect(proc, "127.0.0.2")]
        with connect(proc) as third:
            status, body = split(read_to_close(third))
        assert (status, error_type(body)) == (429, "rate_limit_error")
        stats = connections(proc, "127.0.0.3")  # its own connection is the fourth
        assert (stats["open"], stats["addresses"], stats["refused_client"]) == (4, 3, 1)
        held.append(connect(proc, "127.0.0.2"))
        with connect(proc, "127.0.0.3") as fifth:
            response = read_to_close(fifth)
        status, body = split(response)
        assert (status, error_type(body)) == (503, "overloaded_error")
        assert b"\r\nRetry-After: 1\r\nConnection: close\r\n" in response
        for sock in held:
            sock.close()
        # served again once they are gone (until then a request may still be refused)
        stats = stats_with_open(proc, 1)  # its own: the held ones are released
        assert (stats["refused_client"], stats["addresses"]) == (1, 1)
        assert stats["refused_global"] >= 1  # the 5th, and maybe a probe of this wait


def test_keepalive_closes_an_idle_connection() -> None:
    with server("--keepalive-s", str(0.5 * UNIT)) as proc, connect(proc) as sock:
        sock.sendall(HEAD + b"\r\n")  # HTTP/1.1: kept alive
        response = b""
        while not response.endswith(b'{"ok": true}'):
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
        assert b"Connection: close" not in response
        assert read_to_close(sock) == b""  # then closed, with nothing more said
        assert connections(proc)["header_timeouts"] == 0  # idle, not a late head


@pytest.mark.parametrize("path", ["/oneshot", "/v1/chat/completions"])
def test_a_slow_body_gets_408(path: str) -> None:
    with server("--body-timeout-s", str(0.5 * UNIT)) as proc, connect(proc) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     "application/json\r\nContent-Length: 100\r\n\r\n{\"tok".encode())  # fmt: skip
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
        status, body = split(response)
        assert (status, error_type(body)) == (408, "timeout_error")


def test_accept_failures_stay_quiet_and_the_server_recovers() -> None:
    """Descriptors capped at 64 and --max-connections far above: accept(2) fails (EMFILE)
    with 100 connections made; those past the limit read a 503, stderr stays one line, and
    the server serves again once the others close."""
    proc = ServerProcess(args=["--max-connections", "1000", "--header-timeout-s", str(60 * UNIT)],
                         prefix=["prlimit", "--nofile=64:64", "--"])  # fmt: skip
    proc.start()
    try:
        held = [connect(proc) for _ in range(100)]  # the kernel completes them: the backlog
        # The backlog is first in, first out: once the last has its 503, every other one
        # was accepted (and waits for its head, saying nothing) or refused before it.
        readable, _, _ = select.select([held[-1]], [], [], 10 * UNIT)
        assert readable, "the last connection was neither answered nor refused"
        answered, _, _ = select.select(held, [], [], 0)
        full = ConnectionLimits(1000, 0.5, 60.0).full
        assert [read_to_close(sock) for sock in answered] == [full] * len(answered)
        accepted = len(held) - len(answered)
        assert 0 < accepted < 64
        log_bytes = len(proc.log().encode())
        for sock in held:
            sock.close()
        stats = wait_until(lambda: served_stats(proc), timeout_units=20,
                           what="a request is served after the close")  # fmt: skip
        assert stats["peak"] == accepted
        assert stats["refused_global"] >= len(answered)  # and maybe probes of the wait
        assert stats["accept_errors"] >= 1
        assert log_bytes < 300, proc.log()[-2000:]
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()
