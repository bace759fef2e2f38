"""The `pushlab` CLI as a plain function: main(argv) -> exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from clients.fleet import WorkerStats
from experiments import engine as bench
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
        (["bench", "--workers", "0"], "--workers must be between 1 and 64"),
        (["bench", "--workers", "many"], "a number or auto"),
        (["bench", "--server", "ftp://x"], "server URL"),
        (["run", "nonsense"], "invalid choice"),
        # a flag the experiment cannot take is refused, never ignored in silence
        (["run", "cancel", "--server", "http://127.0.0.1:9"], "cancel cannot take --server"),
        (["run", "loss", "--net", "delay=5ms"], "loss cannot take --net"),
        (["run", "rtt", "--net", "delay=5ms"], "rtt cannot take --net"),
        (["run", "idle", "--server", "http://127.0.0.1:9"], "idle cannot take --server"),
        (["run", "latency", "--set", "net=delay=5ms", "--set", "nonsense=1"], "--set takes"),
        # an https server needs the CA to trust; HTTP/2 needs TLS (a front)
        (["bench", "--server", "https://127.0.0.1:9"], "give --ca FILE"),
        (["bench", "--server", "https://127.0.0.1:9", "--ca", "/nonexistent/ca.pem"],
         "--ca /nonexistent/ca.pem: no readable CA file"),
        (["bench", "--server", "http://127.0.0.1:9", "--http", "2"], "--http 2 needs an https"),
        (["bench", "--ca", "/etc/hostname"], "--ca needs an https --server"),
        # the TLS and HTTP/2 experiments' own settings, checked when the spec is made
        (["run", "tls", "--set", "fronts=apache"], "fronts: apache; choose from"),
        (["run", "http2", "--set", "fronts=aiohttp"], "HTTP/2 comes from nginx, caddy"),
        (["run", "hol-blocking", "--set", "streams=0"], "streams must be at least 1"),
        (["run", "browser-connections", "--set", "paths=foo"], "unknown path 'foo'"),
        # a QUIC transport on a path that carries TCP only, before anything starts
        (["run", "reconnect", "--transport", "webtransport"], "carries TCP only"),
        (["run", "failover", "--transport", "sse,webtransport"], "runs over QUIC (UDP)"),
        (["bench", "--transport", "webtransport", "--net", "delay=5ms"], "carries TCP only"),
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
    # the harness is on record: workers (auto: 1 for 2 clients), uvloop, both collectors, and
    # each worker's load per transport, saturated or not
    spec = meta["spec"]
    assert spec["workers"] == 1 and spec["uvloop"] == bench.uvloop_available()
    assert spec["server_gc"] == "auto" and spec["client_gc"] == bench.CLIENT_GC
    loads = spec["load_generators"]
    assert [row["transport"] for row in loads] == ["sse", "longpoll"]
    assert all(row["clients"] == 2 and row["cpu_s"] > 0 for row in loads)
    assert spec["load_generator_saturated"] == any(row["saturated"] for row in loads)


def test_bench_workers_auto_is_one_process_for_few_clients_two_for_many() -> None:
    assert bench.auto_workers(10, cpus=2) == 1
    assert bench.auto_workers(bench.MANY_CLIENTS, cpus=2) == 1
    assert bench.auto_workers(500, cpus=2) == 2
    assert bench.auto_workers(500, cpus=8) == 2  # a third client process takes server CPU
    assert bench.auto_workers(500, cpus=1) == 1
    assert bench.auto_server_gc(10) == "auto" and bench.auto_server_gc(500) == "scheduled"


def test_bench_record_flags_a_saturated_worker() -> None:
    spec = bench.BenchSpec(transports=("sse",), clients=4, workers=2)
    busy = WorkerStats(0, 2, cpu_s=0.95, wall_s=1.0, uvloop=True)
    idle = WorkerStats(1, 2, cpu_s=0.10, wall_s=1.0, uvloop=True)
    assert not bench.bench_record(spec, [("sse", idle)]).load_generator_saturated
    record = bench.bench_record(spec, [("sse", busy), ("sse", idle)])
    assert record.load_generator_saturated and record.clients == 4 and record.workers == 2
    assert [row["saturated"] for row in record.load_generators] == [True, False]
    assert "WARNING: a load-generator process was saturated" in record.harness_summary()
    assert "WARNING" not in bench.bench_record(spec, [("sse", idle)]).harness_summary()


def test_bench_saturated_worker_prints_a_loud_warning(capsys: pytest.CaptureFixture[str]) -> None:
    bench.warn_if_saturated("sse", [WorkerStats(0, 1000, cpu_s=0.97, wall_s=1.0, uvloop=False)])
    assert "WARNING: load generator saturated" in capsys.readouterr().err


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
