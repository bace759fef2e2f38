"""The running room (harness/): child processes started and stopped by pid, the one /proc
reader, the one sampler; and the light reader's wire bytes, which come from the codecs."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys

import h11
import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WSRequest
from websockets.server import ServerProtocol

from clients.base import Target
from clients.light import request_bytes, start_message
from harness import procstat
from harness.children import ChildProcess, running_server, stop_process
from harness.sampler import Sampler
from streams.errors import ChildStartError, EnvironmentUnavailable
from streams.params import GenParams, parse_params
from tests.support import UNIT, wait_until
from transports.websocket import Start, parse_client_message

READY = "ready on "


def _start_bounded(child: ChildProcess) -> BaseException | Target:
    """`child.start()` in a thread, given a deadline far beyond its own start timeout: a start
    that ignored its timeout fails the test instead of hanging it."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(child.start)
        try:
            return future.result(timeout=child.start_timeout_s + 10 * UNIT)
        except ChildStartError as exc:
            return exc
        except concurrent.futures.TimeoutError:
            os.kill(child.pid, signal.SIGKILL)  # the child we started, by its pid
            pytest.fail(f"start() still waiting long after its {child.start_timeout_s} s timeout")


def test_a_silent_child_fails_start_within_its_timeout_and_is_gone() -> None:
    code = "import sys, time; sys.stderr.write('warming up\\n'); time.sleep(60)"
    child = ChildProcess(["-c", code], READY, start_timeout_s=0.5 * UNIT)
    outcome = _start_bounded(child)
    assert isinstance(outcome, ChildStartError)
    assert not isinstance(outcome, EnvironmentUnavailable)  # the machine is fine, the child not
    message = str(outcome)
    assert "time.sleep(60)" in message  # names the child
    assert "no ready line" in message and "warming up" in message  # says why, shows stderr
    assert child.proc is not None and child.proc.returncode is not None  # reaped
    assert procstat.stat(child.pid) is None  # no such pid any more


def test_a_child_that_exits_before_its_ready_line_says_so() -> None:
    child = ChildProcess(["-c", "print('starting'); raise SystemExit(3)"], READY)
    outcome = _start_bounded(child)
    assert isinstance(outcome, ChildStartError)
    assert "exited with 3" in str(outcome) and "starting" in str(outcome)  # what it printed
    assert procstat.stat(child.pid) is None


def test_a_ready_child_gives_its_address_and_stops_by_pid() -> None:
    code = f"import time; print({READY + 'http://127.0.0.1:4321'!r}); print('more'); time.sleep(60)"
    child = ChildProcess(["-c", code], READY, start_timeout_s=10 * UNIT)
    assert child.start() == Target("127.0.0.1", 4321)
    pid = child.pid
    assert procstat.alive(pid) and pid in procstat.children(os.getpid())
    assert child.stop().strip() == "more"  # what it printed after its ready line
    assert procstat.stat(pid) is None


def test_stop_process_kills_a_child_that_ignores_sigterm() -> None:
    code = "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print('x'); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"x\n"  # the handler is set
    stop_process(proc, grace_s=0.2 * UNIT)
    assert proc.returncode == -signal.SIGKILL
    assert procstat.stat(proc.pid) is None
    proc.stdout.close()


def test_procstat_reads_this_process_and_its_children() -> None:
    me = procstat.sample(os.getpid())
    assert me.cpu_s > 0 and me.rss_bytes > 0
    with pytest.raises(OSError):
        procstat.sample(2**22 + 1)  # above the kernel's pid limit: never a process
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = procstat.stat(proc.pid)
        assert info is not None and info.ppid == os.getpid()
        assert proc.pid in procstat.children(os.getpid())
        foreign = procstat.foreign_cpu()
        assert os.getpid() not in foreign and proc.pid not in foreign  # ours, not others' load
    finally:
        stop_process(proc)
    assert not procstat.alive(proc.pid) and proc.pid not in procstat.children(os.getpid())
    assert procstat.system_busy_s() > 0


def test_sampler_samples_a_pid_without_a_server() -> None:
    with Sampler(None, os.getpid(), interval_s=0.01) as sampler:
        wait_until(lambda: len(sampler.samples) >= 4, what="four samples")
    samples = sampler.samples
    assert len(samples) >= 5 and all(s.stats == {} and s.rss_bytes > 0 for s in samples)
    window = sampler.window(samples[0].t_ns, samples[-1].t_ns)
    assert window == (samples[0], samples[-1])
    assert sampler.window(samples[-1].t_ns + 1, samples[-1].t_ns + 2) is None


def test_sampler_reads_a_servers_stats() -> None:
    with running_server() as server, Sampler(server.target, server.pid, 0.05) as sampler:
        row = sampler.sample()
    assert row["open"] == {} and row["tokens_emitted"] == 0 and row["rss_bytes"] > 0
    assert [r["t_ns"] for r in sampler.rows] == [s.t_ns for s in sampler.samples]


def test_expected_duration_is_ttft_plus_tokens_over_rate() -> None:
    assert GenParams(tokens=10, rate=20.0, ttft_ms=500.0).duration_s() == 1.0


def test_light_reader_requests_are_what_the_codecs_read_back() -> None:
    params = GenParams(tokens=7, rate=40.0, ttft_ms=0.0, seed=3)
    target = Target("127.0.0.1", 8123)
    server = h11.Connection(h11.SERVER)
    server.receive_data(request_bytes(target, "sse", params, close=True))
    request = server.next_event()
    assert isinstance(request, h11.Request) and request.target.startswith(b"/sse?")
    query = dict(pair.split("=") for pair in request.target.decode().split("?")[1].split("&"))
    assert parse_params(query) == params
    assert (b"connection", b"close") in list(request.headers)

    ws = ServerProtocol()
    ws.receive_data(request_bytes(target, "websocket", params, close=False))
    [upgrade] = ws.events_received()
    assert isinstance(upgrade, WSRequest)
    ws.send_response(ws.accept(upgrade))
    ws.receive_data(start_message(params))
    [frame] = ws.events_received()
    assert isinstance(frame, Frame) and frame.opcode is Opcode.TEXT
    assert parse_client_message(bytes(frame.data).decode()) == Start(params)
