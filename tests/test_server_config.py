"""The server's configuration is declared once (transports/web/config.py): its flags are
generated from the dataclass, and config -> argv -> parse gives the config back."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.request

import pytest

from experiments.cli import main as pushlab_main
from harness.children import SERVER_PY, ServerProcess
from server import main as server_main
from tests.support import UNIT
from transports.web.config import ServerConfig, build_parser, parse_config

# The flags as they were spelled by hand before the config declared them: names unchanged.
FLAGS = [
    "--host", "--port", "--tls", "--tls-cert", "--tls-key", "--heartbeat-s", "--retry-ms",
    "--retention-s", "--idle-timeout-s",
    "--max-streams", "--ws-compress", "--wt-port", "--quic-cc", "--wt-cert-days",
    "--cancel-on-disconnect", "--no-accel-header",
    "--uvloop", "--upstream", "--upstream-key-env", "--upstream-model", "--upstream-prompt",
    "--upstream-extra", "--gc", "--log", "--node-id", "--workers", "--reuse-port", "--lease-ms",
    "--log-max-len",
    # issue 14: who may connect and what one client may take
    "--auth", "--auth-secret-file", "--auth-query", "--allow-anonymous", "--allowed-hosts",
    "--allowed-origins", "--lab-debug", "--max-connections", "--client-share",
    "--memory-budget-mb", "--write-timeout-s", "--header-timeout-s", "--body-timeout-s",
    "--keepalive-s",
]  # fmt: skip

# A value other than the default for every field.
CHANGED = ServerConfig(
    host="::1",
    port=65535,
    tls=True,
    tls_cert="/x/server.pem",
    tls_key="/x/server.key",
    heartbeat_s=0.05,
    retry_ms=0,
    retention_s=1.5,
    idle_timeout_s=0.25,
    max_streams=7,
    ws_compress=True,
    wt_port=4433,
    quic_cc="cubic",
    wt_cert_days=2.5,
    cancel_on_disconnect=True,
    accel_buffering_header=False,
    uvloop=True,
    upstream="http://127.0.0.1:9/v1",
    upstream_key_env="KEY_VAR",
    upstream_model="a model",
    upstream_prompt="say --port 1",
    upstream_extra='{"rate": 5}',
    gc="scheduled",
    log="redis://127.0.0.1:6390/2",
    node_id="node-7",
    workers=3,
    reuse_port=True,
    lease_ms=500,
    log_max_len=100,
    auth=True,
    auth_secret_file="/x/secret",
    auth_query=True,
    allow_anonymous=True,
    allowed_hosts="lab.example,other",
    allowed_origins="https://lab.example:8443",
    lab_debug=True,
    max_connections=900,
    client_share=0.25,
    memory_budget_mb=64.0,
    write_timeout_s=2.5,
    header_timeout_s=3.5,
    body_timeout_s=4.5,
    keepalive_s=5.5,
)


def test_every_field_has_a_changed_value_here() -> None:
    default = ServerConfig()
    same = [f.name for f in dataclasses.fields(ServerConfig)
            if getattr(CHANGED, f.name) == getattr(default, f.name)]  # fmt: skip
    assert same == []


def test_flag_names_are_unchanged() -> None:
    flags = [a.option_strings[0] for a in build_parser()._actions if a.dest != "help"]
    assert flags == FLAGS


def test_config_to_argv_and_back_for_every_field() -> None:
    assert parse_config(CHANGED.to_argv()) == CHANGED
    assert ServerConfig().to_argv() == []
    assert parse_config([]) == ServerConfig()
    for f in dataclasses.fields(ServerConfig):  # each field alone, the rest default
        one = dataclasses.replace(ServerConfig(), **{f.name: getattr(CHANGED, f.name)})
        assert parse_config(one.to_argv()) == one, f.name


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "x"], "argument --port: invalid int value: 'x'"),
        (["--port", "70000"], "argument --port: must be between 0 and 65535"),
        (["--heartbeat-s", "-1"], "argument --heartbeat-s: must be >= 0"),
        (["--max-streams", "0"], "argument --max-streams: must be >= 1"),
        (["--gc", "never"], "argument --gc: invalid choice: 'never'"),
        (["--colour", "red"], "unrecognized arguments: --colour red"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pushlab serve: error: ") and words in err


def test_python_server_py_and_pushlab_serve_show_the_same_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        pushlab_main(["serve", "--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, str(SERVER_PY), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout == shown
    assert all(flag in shown for flag in FLAGS)


def test_server_process_starts_from_a_config() -> None:
    config = ServerConfig(port=1, gc="scheduled", heartbeat_s=0.5, max_streams=3)
    server = ServerProcess(config=config)
    assert server.argv[1:] == [*config.to_argv(), "--host", "127.0.0.1", "--port", "0"]
    target = server.start()
    try:
        assert target.port not in (0, 1)  # the harness's any-free-port wins
        with urllib.request.urlopen(f"{target.url}/stats", timeout=10 * UNIT) as resp:
            assert json.load(resp)["gc"]["policy"] == "scheduled"  # the config reached it
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--log", "redis:/x"], "--log must be 'memory' or a redis://HOST:PORT URL"),
        (["--log", "redis://h:port"], "--log must be 'memory' or a redis://HOST:PORT URL"),
        (["--log", "postgres://h"], "--log must be 'memory' or a redis://HOST:PORT URL"),
        (["--workers", "2"], "--workers above 1 needs a shared log"),
        (["--workers", "0"], "argument --workers: must be between 1 and 64"),
        (["--lease-ms", "10"], "argument --lease-ms: must be between 100 and 600000"),
    ],
)
def test_log_and_worker_flags_that_cannot_work_are_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        server_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_a_taken_webtransport_port_is_one_line_naming_it() -> None:
    """The TCP port is free, its number's UDP port is not: the line says which and the way
    out, rather than a bare 'Address already in use'."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with socket.socket() as probe:  # the TCP port of that number must be free here
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"TCP port {port} is in use by something else")
        done = subprocess.run([sys.executable, str(SERVER_PY), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert f"UDP port {port}" in done.stderr and "--wt-port" in done.stderr
