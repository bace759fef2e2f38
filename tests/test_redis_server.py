"""A real redis-server (netem/redis.py) as a child: started, asked, stopped by its pid.

redis-server missing is a failure with a clear message, never a skip (as nginx's tests do).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import netem.redis as redis_mod
from harness import procstat
from netem.redis import NOT_INSTALLED, RedisError, RedisServer, parse_info
from streams.errors import ChildStartError, EnvironmentUnavailable
from tests.support import UNIT, wait_until

pytestmark = pytest.mark.timeout(UNIT * 30)


def test_redis_server_is_installed() -> None:
    assert redis_mod.redis_binary() is not None, NOT_INSTALLED


def test_info_lines_become_numbers() -> None:
    text = "# CPU\r\nused_cpu_sys:0.125\r\nconnected_clients:2\r\nrole:master\r\n\r\n"
    assert parse_info(text) == {"used_cpu_sys": 0.125, "connected_clients": 2, "role": "master"}


def test_starts_answers_and_stops_by_its_pid(tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path)
    url = server.start()
    pid = server.pid
    try:
        assert url == f"redis://127.0.0.1:{server.listen_port}"
        assert server.listen_port > 0
        assert procstat.alive(pid)
        assert server.call("PING") == "PONG"
        assert server.call("XADD", "s", "*", "seq", "1") is not None
        assert server.call("XLEN", "s") == 1
        info = server.info()
        keys = ("used_cpu_sys", "used_cpu_user", "connected_clients",
                "instantaneous_ops_per_sec", "used_memory", "total_commands_processed")  # fmt: skip
        for key in keys:
            assert isinstance(info[key], int | float), key
        assert info["maxmemory"] == 256 * 1024 * 1024
        assert info["tcp_port"] == server.listen_port
        assert server.cpu_s() >= 0
        with pytest.raises(RedisError, match="unknown command"):
            server.call("NO-SUCH-COMMAND")
        command = server.command(server.listen_port, tmp_path)
        assert command[command.index("--save") + 1] == ""
        assert "--protected-mode" not in command  # loopback only: protected mode stays on
    finally:
        server.stop()
    assert not procstat.alive(pid)
    assert server.pid == -1
    assert list(tmp_path.iterdir()) == []  # its state dir is gone
    assert "Ready to accept connections" in server.log()  # kept after stop()


def test_a_non_loopback_bind_turns_protected_mode_off(tmp_path: Path) -> None:
    command = RedisServer(bind=("198.18.0.1",)).command(6399, tmp_path)
    assert command[command.index("--bind") + 1 : command.index("--bind") + 3] == [
        "127.0.0.1",
        "198.18.0.1",
    ]
    assert command[command.index("--protected-mode") + 1] == "no"


def test_two_servers_on_two_free_ports_at_once(tmp_path: Path) -> None:
    with RedisServer(workdir=tmp_path) as one, RedisServer(workdir=tmp_path) as two:
        assert one.listen_port != two.listen_port
        one.call("SET", "who", "one")
        two.call("SET", "who", "two")
        assert (one.call("GET", "who"), two.call("GET", "who")) == (b"one", b"two")
        pids = [one.pid, two.pid]
    wait_until(lambda: not any(map(procstat.alive, pids)), what="both servers are gone")


def test_missing_redis_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_mod, "redis_binary", lambda: None)
    with pytest.raises(EnvironmentUnavailable, match="redis-server is not installed: run"):
        RedisServer().start()


def test_a_taken_port_is_an_error_with_redis_own_words(tmp_path: Path) -> None:
    with RedisServer(workdir=tmp_path) as first:
        second = RedisServer(port=first.listen_port, workdir=tmp_path)
        with pytest.raises(ChildStartError, match="Address already in use"):
            second.start()
        assert second.pid == -1
        assert first.call("PING") == "PONG"
    assert list(tmp_path.iterdir()) == []
