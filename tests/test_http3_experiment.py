"""Experiment `http3`, run small through the CLI: HTTP/1.1, HTTP/2 and HTTP/3 through one
real Caddy, at 0 and 100 ms RTT (TCP through the fault proxy, UDP through the relay, one port
number), stored, charted and reported; then its tables read back.

Behaviour, not speed: the bounds are physics (a request over a fresh connection waits for its
handshake's round trip, then for its own), and counts that must agree; no timing threshold
of this machine.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.http3 import summary, version_ttft
from experiments import http3
from experiments.cli import main
from netem.caddy import caddy_binary
from records.store import StoredRun, load
from streams.errors import ParamError
from tests.support import UNIT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240 * UNIT)]
RTT_MS = 100.0  # the quick spec's other round-trip time


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    if caddy_binary() is None:
        pytest.skip("caddy is not installed (make system): HTTP/3 comes from Caddy here")
    out = tmp_path_factory.mktemp("http3") / "run"
    code = main(["run", "http3", "--quick", "--transport", "sse,ndjson", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    return load(out)


def test_spec_refuses_what_is_not_an_http_request_and_unknown_controllers() -> None:
    with pytest.raises(ParamError, match="websocket"):
        http3.Spec(transports=("websocket",))
    with pytest.raises(ParamError, match="quic_cc"):
        http3.Spec(quic_cc=("bbr",))
    spec = http3.quick(http3.Spec())
    assert spec.rtts_ms == (0.0, RTT_MS) and spec.clients == 1 and len(spec.quic_cc) == 1
    assert "webtransport" not in spec.transports and "websocket" not in spec.transports


def test_every_stream_completes_on_the_stack_it_asked_for(run: StoredRun) -> None:
    streams = run.streams
    assert len(streams) == 2 * 3 * 2  # transports x versions x RTTs, one client each
    assert (streams["error"] == "").all() and (streams["lost"] == 0).all()
    h3 = streams[streams["condition"].str.startswith("HTTP/3")]
    tcp = streams[~streams["condition"].str.startswith("HTTP/3")]
    assert set(h3["stack"]) == {"quic"} and set(h3["bytes_source"]) == {"udp"}
    assert set(h3["http_version"]) == {"3"} and set(h3["tls_version"]) == {"TLSv1.3"}
    assert set(tcp["stack"]) == {"tls"} and set(tcp["http_version"]) == {"1.1", "2"}


def test_table_columns_and_physics(run: StoredRun) -> None:
    table = summary(run.streams, run.tokens, run.extra["http3_points"])
    for column in ("rtt_ms", "stack_label", "version", "cc", "transport", "stack", "source",
                   "ttft_p50_ms", "latency_p50_ms", "latency_p99_ms", "latency_n",
                   "bytes_per_token", "connections", "handshake_p50_ms"):  # fmt: skip
        assert column in table, column
    assert len(table) == 12 and (table["latency_n"] == 10).all()  # every token's latency
    assert (table["connections"] == 1).all()  # a fresh visitor, one connection each
    assert set(table[table["version"] == "3"]["stack"]) == {"quic"}
    assert (table["bytes_per_token"] > 0).all()
    slow = table[table["rtt_ms"] == RTT_MS]
    # a handshake is at least one round trip (TLS after the proxy's connect; QUIC's whole)
    assert (slow["handshake_p50_ms"] >= RTT_MS).all()
    # the first token waits for the handshake's round trip, then for the request's
    assert (slow["ttft_p50_ms"] >= 2 * RTT_MS).all()
    by_version = version_ttft(table).set_index(["rtt_ms", "stack_label"])["ttft_ms"]
    for label in ("HTTP/1.1", "HTTP/2", "HTTP/3 (reno)"):
        assert by_version[(RTT_MS, label)] - by_version[(0.0, label)] >= RTT_MS


def test_connections_and_stacks_say_what_carried_the_bytes(run: StoredRun) -> None:
    conns = run.extra["http3_connections"]
    quic = conns[conns["stack"] == "quic"]
    assert set(quic["cc"]) == {"reno"} and (quic["handshake_packets_up"] >= 1).all()
    assert (quic["rcvbuf"] > 0).all() and (quic["packets_down"] > 0).all()
    stacks = run.extra["http3_stacks"].set_index("side")
    kernel = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    assert stacks.loc["TCP, clients and Caddy (one kernel)", "cc"].startswith(kernel)
    assert stacks.loc["QUIC client (aioquic)", "cc"] == "reno"


def test_the_relay_counted_what_quic_sent(run: StoredRun) -> None:
    check = run.extra["udp_relay_check"]
    assert len(check) == 1 and (check["relay_dropped"] == 0).all()
    assert (check["relay_flows"] >= 2).all()  # one flow per QUIC connection, warm-up included
    # up: every datagram the clients sent reached the relay (loopback, no loss)
    assert (check["relay_bytes_up_received"] == check["client_bytes_up"]).all()
    # down: the relay forwarded at least what the clients read (the rest came after a close)
    assert (check["relay_bytes_down"] >= check["client_bytes_down"]).all()


def test_report_tables_chart_and_reading(run: StoredRun) -> None:
    for name in ("http3_ttft.png", "report.md", "http3_points.parquet", "udp_relay_check.csv"):
        assert (run.path / name).is_file(), name
    report = (run.path / "report.md").read_text()
    assert "First token by HTTP version" in report and "Congestion control" in report
    text = http3.EXPERIMENT.read(run, pd.DataFrame())
    assert "At 100 ms RTT the median first token" in text and "HTTP/3 (reno)" in text
    assert "Not enough measured figures" not in text
    facts = http3.facts(run)
    assert set(facts) == {"sse", "ndjson"}
    assert all("h3_ttft_saved_ms" in f and "h3_handshake_ms" in f for f in facts.values())
