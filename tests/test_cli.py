"""The `pushlab` CLI as a plain function: main(argv) -> exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from experiments.cli import main
from harness.children import running_server
from records.schema import STREAM_COLUMNS, TOKEN_COLUMNS
from transports.registry import KEYS


def test_list_names_every_transport_and_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for key in KEYS:
        assert f"  {key} " in out
    assert "latency" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "--transport", "carrier-pigeon"], "unknown transport"),
        (["bench", "--rate", "fast"], "invalid float value"),
        (["bench", "--rate", "-3"], "'rate' must be between"),
        (["bench", "--text", "latin"], "invalid choice"),
        (["bench", "--clients", "0"], "--clients must be at least 1"),
        (["bench", "--server", "ftp://x"], "server URL"),
        (["run", "nonsense"], "invalid choice"),
        # a flag the experiment cannot take is refused, never ignored in silence
        (["run", "cancel", "--server", "http://127.0.0.1:9"], "cancel cannot take --server"),
        (["run", "loss", "--net", "delay=5ms"], "loss cannot take --net"),
        (["run", "rtt", "--net", "delay=5ms"], "rtt cannot take --net"),
        (["run", "idle", "--server", "http://127.0.0.1:9"], "idle cannot take --server"),
        (["run", "latency", "--set", "net=delay=5ms", "--set", "nonsense=1"], "--set takes"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err


def test_help_explains_units_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("tokens per second", "in ms", "default 20", "--server URL", "--out"):
        assert text in out


def test_bench_against_a_running_server_writes_the_tables(tmp_path: pytest.TempPathFactory) -> None:
    out = tmp_path / "run"  # type: ignore[operator]
    with running_server() as server:
        code = main(
            [
                "bench",
                "--transport",
                "sse,longpoll",
                "--clients",
                "2",
                "--tokens",
                "5",
                "--rate",
                "200",
                "--ttft-ms",
                "0",
                "--server",
                server.target.url,
                "--out",
                str(out),
                "--no-progress",
                "--no-charts",
            ]
        )
    assert code == 0
    for name in ("tokens.csv", "tokens.parquet", "streams.csv", "streams.parquet", "meta.json"):
        assert (out / name).is_file(), name
    streams = pd.read_parquet(out / "streams.parquet")
    tokens = pd.read_parquet(out / "tokens.parquet")
    assert list(streams.columns) == list(STREAM_COLUMNS) and list(tokens.columns) == list(
        TOKEN_COLUMNS
    )
    assert sorted(streams["transport"].unique()) == ["longpoll", "sse"]
    assert len(streams) == 4 and len(tokens) == 20 and (streams["lost"] == 0).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["spec"]["params"]["tokens"] == 5 and meta["spec"]["server"] == server.target.url


def test_bench_net_puts_the_fault_proxy_in_the_path(tmp_path: pytest.TempPathFactory) -> None:
    """`--net` was once accepted and then ignored: now the proxy's delay is in every token's
    path (a 30 ms delay each way makes a round trip of at least 60 ms before the first one)."""
    out = tmp_path / "net"  # type: ignore[operator]
    with running_server() as server:
        code = main(["bench", "--transport", "sse", "--tokens", "3", "--rate", "100",
                     "--ttft-ms", "0", "--server", server.target.url, "--net", "delay=30ms",
                     "--no-warmup", "--out", str(out), "--no-progress", "--no-charts"])  # fmt: skip
    assert code == 0
    streams = pd.read_parquet(out / "streams.parquet")
    assert (streams["ttft_ms"] >= 60.0).all() and (streams["lost"] == 0).all()
    assert json.loads((out / "meta.json").read_text())["spec"]["net"] == "delay=30ms"


def test_python_server_py_runs_on_its_own_and_stops_on_sigterm() -> None:
    with running_server() as server:
        pid = server.pid
        assert server.proc is not None and server.proc.poll() is None
    assert server.proc.returncode == 0, server.log()
    assert (
        subprocess.run(
            [sys.executable, "-c", f"import os; os.kill({pid}, 0)"], capture_output=True
        ).returncode
        != 0
    )


def test_run_set_changes_typed_spec_fields() -> None:
    from experiments import scale
    from experiments.cli import apply_settings

    spec = apply_settings(scale.Spec(), ["max_n=10000", "ns=10,100", "rate=2.5", "uvloop=false"])
    assert (spec.max_n, spec.ns, spec.rate, spec.uvloop) == (10000, (10, 100), 2.5, False)


@pytest.mark.parametrize(
    ("setting", "needle"), [("nope=1", "FIELD one of"), ("rate=fast", "cannot read")]
)
def test_run_set_rejects_unknown_fields_and_bad_values(
    setting: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "scale", "--set", setting])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err


@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_reject_folders_that_are_not_runs(
    command: str, tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"  # type: ignore[operator]
    broken.mkdir()
    (broken / "meta.json").write_text("{}")
    argv = [command, str(broken)] + ([str(tmp_path / "nothing")] if command == "compare" else [])  # type: ignore[operator]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "schema_version" in err
