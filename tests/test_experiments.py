"""Each experiment, run small, shows the behaviour it exists to measure.

These check behaviour (who loses tokens, who stops, who bursts), never speed: the bounds are
wide and come from the protocols, not from this machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from analysis.derived import arrival_spread_table, capacity
from experiments import cancel, idle_timeout, loss, proxy, reconnect, rtt
from experiments.cli import main
from netem.nginx import directives
from records import store
from streams.errors import ParamError
from tests.support import UNIT
from transports import registry

pytestmark = pytest.mark.timeout(180 * UNIT)


def by_transport(streams: pd.DataFrame, condition: str | None = None) -> pd.DataFrame:
    rows = streams if condition is None else streams[streams["condition"] == condition]
    return rows.set_index("transport")


def one_of_each_kind() -> tuple[str, ...]:
    """The first transport (registry order) of each kind of connection and request count:
    today sse, websocket and longpoll."""
    kinds: dict[tuple[str, str], str] = {}
    for t in registry.TRANSPORTS.values():
        kinds.setdefault((t.connection, t.requests_per_answer), t.key)
    return tuple(kinds.values())


def test_rtt_push_pays_one_way_polling_pays_more() -> None:
    spec = dataclasses.replace(
        rtt.quick(rtt.Spec()), transports=("sse", "longpoll"), rtts_ms=(0.0, 80.0)
    )
    tables = rtt.run(spec)
    median = tables.tokens.groupby(["transport", "sweep_value"])["latency_ms"].median()
    added_sse = median["sse", 80.0] - median["sse", 0.0]
    added_poll = median["longpoll", 80.0] - median["longpoll", 0.0]
    assert 35 <= added_sse <= 60  # one way: half the round trip
    assert added_poll > added_sse  # a token waits for the next poll's round trip too
    ttft = tables.streams.groupby(["transport", "sweep_value"])["ttft_ms"].median()
    assert 70 <= ttft["sse", 80.0] - ttft["sse", 0.0] <= 110  # request + response: one RTT


@pytest.mark.slow
def test_reconnect_resuming_transports_lose_and_duplicate_nothing() -> None:
    spec = dataclasses.replace(
        reconnect.Spec(), tokens=24, rate=60.0, cut_every_tokens=(8,), clients=1, ttft_ms=20.0
    )
    assert spec.retry_ms == (1000.0, 100.0)  # pushlab's default retry:, then the fix
    all_streams = reconnect.run(spec).streams
    conditions = set(all_streams["condition"])
    default, fixed = (
        c for r in ("1000", "100") for c in conditions if c.endswith(f"retry: {r} ms")
    )
    assert len(conditions) == 2
    for condition in (default, fixed):
        streams = by_transport(all_streams, condition)
        # every transport whose client resumes by itself (one-shot has nothing to resume from)
        # (over the TCP the cutting proxy carries: spec.transports, by default)
        for key in set(spec.transports) & set(
            registry.keys_where(lambda t: t.resumable and t.incremental)
        ):
            row = streams.loc[key]
            assert row["error"] == "", (condition, key, row["error"])
            assert (row["lost"], row["duplicated"], row["tokens_received"]) == (0, 0, 24), key
            assert row["reconnects"] >= 1 and row["connections"] >= 2, key
        for key in set(spec.transports) & set(registry.keys_where(lambda t: not t.incremental)):
            assert streams.loc[key, "error"] != "", key  # the answer outlives every connection
    # SSE waits the retry: its server sent; each value ran against its own server
    slow = by_transport(all_streams, default).loc["sse", "recovery_max_ms"]
    quick = by_transport(all_streams, fixed).loc["sse", "recovery_max_ms"]
    assert slow >= 1000 and quick >= 100
    assert quick < slow


@pytest.mark.slow
def test_cancel_explicit_stops_at_once_close_waits_for_the_policy() -> None:
    spec = dataclasses.replace(
        cancel.Spec(),
        transports=one_of_each_kind(),
        tokens=150,
        rate=50.0,
        idle_timeout_s=0.6,
        clients=1,
    )
    table = cancel.run(spec).extra["cancel"].set_index(["policy", "how", "transport"])
    for transport in spec.transports:
        explicit = table.loc[("keep", "cancel", transport)]
        assert explicit["server_reason"] == "cancelled" and explicit["wasted_tokens"] <= 2
        left = table.loc[("keep", "close", transport)]
        assert left["server_reason"] == "idle" and left["wasted_tokens"] >= 10
        assert 500 <= left["stop_ms"] < 3000
    for transport in spec.transports:
        row = table.loc[("cancel-on-disconnect", "close", transport)]
        if registry.get(transport).requests_per_answer == "one":
            # streaming readers: a disconnect is visible
            assert row["server_reason"] == "disconnect" and row["wasted_tokens"] <= 2
        else:
            # a poller that stops polling leaves no disconnect to see: only the idle timeout
            assert row["server_reason"] == "idle"


@pytest.mark.slow
def test_loss_makes_tcp_retransmit_and_still_delivers_everything() -> None:
    spec = dataclasses.replace(
        loss.quick(loss.Spec()),
        transports=("sse", "websocket"),
        # 10% like the experiment's highest: at 25% a run of lost SYNs (retried after 1, 3,
        # 7 s) can outlast the stream timeout, which is real but not deterministic
        losses_pct=(0.0, 10.0),
        tokens=40,
        rate=100.0,
    )
    tables = loss.run(spec)
    streams, tokens = tables.streams, tables.tokens
    clean = streams[streams["sweep_value"] == 0.0]
    assert (clean["retransmits"] == 0).all()  # the client's own: none on a clean link
    # TCP hides the loss but not its time: a dropped server segment waits at least the
    # probe timeout (>= 10 ms) before it is sent again, while a clean veth delivers in ~1 ms
    slowest = tokens.groupby("sweep_value")["latency_ms"].max()
    assert slowest[10.0] > slowest[0.0] + 5
    assert (streams["lost"] == 0).all() and (streams["error"] == "").all()


@pytest.mark.slow
def test_loss_reaches_quic_too_and_reports_every_arm() -> None:
    """QUIC crosses the same loss: WebTransport (stream and datagram delivery) to the server's
    own endpoint, and N SSE streams through Caddy over one HTTP/3 connection, one HTTP/2
    connection or N HTTP/1.1 connections; datagram losses are counted, never dropped."""
    quick = loss.quick(loss.Spec())
    assert (quick.losses_pct, quick.clients, quick.streams, quick.datagram) == ((0.0, 10.0), 1,
                                                                                 4, True)
    assert "webtransport" in quick.transports  # every registered transport, QUIC's included
    spec = dataclasses.replace(quick, transports=("sse", "webtransport"), streams=3)
    tables = loss.run(spec)
    arms = tables.extra["arms"].set_index(["loss_pct", "arm"])
    shared = [label for label, _, _ in loss.shared_arms(3)]
    expected = ["sse", "webtransport", "webtransport datagram", *shared]
    assert sorted(arms.index) == sorted((lp, a) for lp in (0.0, 10.0) for a in expected)
    # the main tables keep the per-transport arms only (the datagram one has its own rows)
    assert set(tables.streams["condition"]) == {"loss=0%", "loss=10%"}
    assert set(tables.extra["arm_streams"]["condition"]) == {
        f"loss={lp:g}% {a}" for lp in (0, 10) for a in ["webtransport datagram", *shared]}
    for (lp, arm), row in arms.iterrows():
        assert row["tokens_received"] + row["tokens_lost"] == row["tokens_expected"], arm
        assert row["n"] == row["tokens_received"]  # one latency per token that came
        if row["delivery"] != "datagram":  # reliable: loss costs time, never tokens
            assert (row["tokens_lost"], row["completed"]) == (0, row["streams"]), (lp, arm)
    assert arms.loc[(10.0, shared[0]), "connections"] == 1  # HTTP/3: ONE QUIC connection
    assert arms.loc[(10.0, shared[1]), "connections"] == 1  # HTTP/2: ONE TCP connection
    assert arms.loc[(10.0, shared[2]), "connections"] == 3  # HTTP/1.1: one per stream
    # what carried each arm: aioquic's reno for QUIC, the kernel's controller for TCP
    for arm in ("webtransport", "webtransport datagram", shared[0]):
        assert arms.loc[(10.0, arm), "cc"] == "reno" and arms.loc[(10.0, arm), "rcvbuf"] > 0
    assert arms.loc[(10.0, "sse"), "cc"] == "kernel"
    lossy = arms.loc[10.0]
    assert (lossy["dropped_in_packets"] + lossy["dropped_out_packets"]).sum() > 0
    clean = arms.loc[0.0]
    assert (clean["dropped_in_packets"] + clean["dropped_out_packets"]).sum() == 0
    path = tables.extra["path"].set_index("side")
    assert len(path) == 3 and (path["tcp_congestion_control"] != "unknown").all()
    assert path["quic_cc"].str.startswith("reno").all()
    assert path["rmem_max"].str.isdigit().all()
    facts = loss.loss_facts(tables.extra["arms"])
    assert facts["webtransport"]["n:loss_dgram_tokens_lost"] == spec.tokens
    assert facts["webtransport"]["loss_dgram_tokens_lost"] == lossy.loc["webtransport datagram",
                                                                         "tokens_lost"]
    assert facts["sse"]["n:loss_h3_p99_ms"] == 3 and facts["sse"]["n:loss_p99_ms"] == spec.tokens
    text = loss.loss_reading(tables.extra["arms"], tables.extra["path"])
    assert text.startswith("At 10% loss each way, token latency p99: sse ")
    assert "webtransport datagram lost " in text and "HTTP/3 x3 one connection" in text
    assert "QUIC reno" in text and "TCP " in text


@pytest.mark.slow
def test_loss_aligns_the_namespace_tcp_controller_with_quic() -> None:
    """cc=reno: the namespace's TCP default is reno (read back from its sysctl, the root
    namespace's left alone) and the server's QUIC runs reno too; every arm ran under it."""
    root_before = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    spec = dataclasses.replace(loss.quick(loss.Spec(cc=("reno",))), losses_pct=(10.0,),
                               transports=("sse", "webtransport"), tokens=10, rate=100.0,
                               streams=2)  # fmt: skip
    assert spec.cc == ("reno",)
    tables = loss.run(spec)
    path = tables.extra["path"].set_index("side")
    inside = path[~path.index.str.startswith("client")]  # the server side: server, Caddy
    assert len(inside) == 2 and (inside["cc_setting"] == "reno").all()
    assert (inside["tcp_congestion_control"] == "reno").all()
    assert path.loc["server (namespace, aioquic endpoint)", "quic_cc"] == "reno"
    assert path.loc["client (root namespace, aioquic)", "tcp_congestion_control"] == root_before
    arms = tables.extra["arms"].set_index("arm")
    assert (arms["cc_setting"] == "reno").all() and len(arms) == 2 + 1 + 3
    assert (arms.loc[arms["delivery"] != "datagram", "tokens_lost"] == 0).all()
    assert (arms["dropped_in_packets"] + arms["dropped_out_packets"]).sum() > 0
    assert set(tables.streams["condition"]) == {"loss=10%"}  # one setting: no cc tag


def test_loss_cc_setting_is_checked_and_quick_keeps_one() -> None:
    assert loss.Spec().cc == ("kernel", "reno") and loss.quick(loss.Spec()).cc == ("kernel",)
    for bad in ((), ("bbr",), ("reno", "reno")):
        with pytest.raises(ParamError, match="cc"):
            loss.Spec(cc=bad)


def test_loss_reading_says_whether_aligning_flipped_tcp_against_quic() -> None:
    """Hand-made arms: under "kernel" TCP sse beats QUIC webtransport, under "reno" it does
    not; the shared arms keep their order. The reading names the flip, and only it."""
    from analysis.loss import cc_ordering

    def arm(setting: str, name: str, cc: str, delivery: str, p99: float) -> dict[str, object]:
        transport = "sse" if delivery == "shared" else name.split()[0]
        return {"cc_setting": setting, "loss_pct": 10.0, "arm": name, "transport": transport,
                "delivery": delivery, "http": "", "streams": 1, "completed": 1,
                "tokens_expected": 10, "tokens_received": 10, "tokens_lost": 0, "p99_ms": p99,
                "n": 10, "stream_p99_ms_median": p99, "gap_max_ms": p99, "cc": cc}  # fmt: skip

    kinds = (("sse", "kernel", "stream"), ("webtransport", "reno", "stream"),
             ("webtransport datagram", "reno", "datagram"),
             ("HTTP/3 x2 one connection", "reno", "shared"),
             ("HTTP/2 x2 one connection", "kernel", "shared"),
             ("HTTP/1.1 x2 connections", "kernel", "shared"))  # fmt: skip
    p99s = {"kernel": (50.0, 90.0, 60.0, 5.0, 30.0, 80.0),
            "reno": (120.0, 40.0, 50.0, 6.0, 20.0, 70.0)}  # fmt: skip
    rows = [arm(setting, name, cc, delivery, p99) for setting, values in p99s.items()
            for (name, cc, delivery), p99 in zip(kinds, values, strict=True)]  # fmt: skip
    arms = pd.DataFrame(rows)
    got = cc_ordering(arms)
    assert got.settings == ["kernel", "reno"]
    assert got.flipped == {"reno": [("sse", "webtransport")]}
    assert [a for a, _, _ in got.order["kernel"]["own"]] == ["sse", "webtransport"]
    text = loss.loss_reading(arms)
    assert "Controller setting kernel:" in text and "Controller setting reno:" in text
    assert "reno against kernel: changed for sse vs webtransport" in text
    assert loss.loss_facts(arms)["sse"]["loss_p99_ms"] == 50.0  # facts: the first setting


def test_loss_arm_summary_counts_datagram_losses() -> None:
    """Hand-made rows: a stream missing two tokens reports them as lost, its p99 over the
    tokens that came, and the per-stream figures."""
    from analysis.loss import arm_summary

    tokens = pd.DataFrame({"stream_id": ["a"] * 3 + ["b"] * 5, "seq": [0, 1, 4, 0, 1, 2, 3, 4],
                           "t_recv_ns": range(8), "latency_ms": [1.0] * 7 + [9.0]})
    streams = pd.DataFrame({"error": ["", ""], "lost": [2, 0], "tokens_expected": [5, 5],
                            "tokens_received": [3, 5], "gap_max_ms": [40.0, 20.0],
                            "connections": [1, 1], "retransmits": [0, 3]})
    got = arm_summary(tokens, streams)
    assert (got["tokens_lost"], got["tokens_received"], got["n"]) == (2, 8, 8)
    assert (got["completed"], got["gap_max_ms"], got["retransmits"]) == (1, 40.0, 3)
    assert got["p99_ms"] > 1.0 and got["stream_p99_ms_median"] > 1.0


@pytest.mark.slow
def test_proxy_nginx_in_the_path_and_http10_turns_streams_into_one_burst(
    tmp_path: Path,
) -> None:
    spec = dataclasses.replace(proxy.quick(proxy.Spec()), transports=("sse", "websocket"))
    # nginx's defaults, then each fix alone: the directive, the app's header
    assert spec.modes == ("direct", "buffered-http1.0", "buffered", "http1.0-accel-header")
    tables = proxy.run(spec)
    assert (tables.extra["nginx"]["nginx_requests_logged"] > 0).all()
    spread = arrival_spread_table(tables.tokens).set_index(["condition", "transport"])
    spread = spread["arrival_spread"]
    assert spread["nginx buffered", "sse"] > 0.8  # chunked HTTP/1.1 passes through
    assert spread["nginx buffered-http1.0", "sse"] < 0.2  # held until the response ends
    assert spread["nginx buffered-http1.0", "websocket"] > 0.8  # an upgraded socket is not buffered
    assert spread["nginx http1.0-accel-header", "sse"] > 0.8  # the app's header alone fixes it
    # each mode's nginx.conf is kept with the run and read back
    run = store.load(store.save(tables, {"experiment": "proxy"}, tmp_path / "proxy"))
    assert set(run.files) == {f"nginx-{m}.conf" for m in spec.modes if m != "direct"}
    assert "proxy_http_version 1.0;" in run.files["nginx-buffered-http1.0.conf"]
    assert "proxy_http_version 1.1;" in run.files["nginx-buffered.conf"]
    # the summary names each mode's directives, from the modes themselves
    (_, summary), *_ = proxy.tables(run)
    named = dict(zip(summary["condition"], summary["directives"], strict=True))
    assert named["nginx buffered-http1.0"] == directives("buffered-http1.0")
    assert "app sends X-Accel-Buffering: no" in named["nginx http1.0-accel-header"]
    assert named["direct"] == "no nginx"


@pytest.mark.slow
def test_idle_timeout_heartbeats_keep_streams_alive_oneshot_cannot_survive() -> None:
    spec = dataclasses.replace(
        idle_timeout.quick(idle_timeout.Spec()), transports=("sse", "oneshot")
    )
    streams = idle_timeout.run(spec).streams
    quiet = by_transport(streams[streams["sweep_value"] == 0])
    alive = by_transport(streams[streams["sweep_value"] == 1])
    assert quiet.loc["sse", "reconnects"] >= 1 and quiet.loc["sse", "error"] == ""
    assert alive.loc["sse", "reconnects"] == 0 and alive.loc["sse", "error"] == ""
    assert "504" in quiet.loc["oneshot", "error"] and "504" in alive.loc["oneshot", "error"]


@pytest.mark.slow
def test_pushlab_run_writes_tables_charts_and_report(tmp_path: pytest.TempPathFactory) -> None:
    out = tmp_path / "run"  # type: ignore[operator]
    code = main(
        ["run", "cancel", "--quick", "--transport", "websocket", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    for name in (
        "tokens.parquet",
        "streams.parquet",
        "cancel.parquet",
        "meta.json",
        "report.md",
        "cancel.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "latency_cdf.png").exists()  # the latency experiment's charts, not cancel's
    assert "Cancel summary" in (out / "report.md").read_text()


@pytest.mark.slow
def test_scale_delivers_everything_and_accounts_for_the_server() -> None:
    from experiments import scale

    spec = dataclasses.replace(
        scale.quick(scale.Spec()),
        transports=("websocket",),
        ns=(5, 40),
        tokens=5,
        rate=50.0,
        ramp_s=0.2,
    )
    table = scale.run(spec).extra["scale"].set_index("n")
    assert (table["delivered_ratio"] == 1.0).all() and (table["errors"] == 0).all()
    assert (table["server_cpu_per_token_us"] > 0).all()
    assert (table["fleet_cpu_max_fraction"] > 0).all()
    cap = capacity(table.reset_index(), target_p99_ms=1e6)
    assert cap.set_index("transport").loc["websocket", "capacity_n"] == 40


@pytest.mark.slow
def test_idle_connections_are_held_and_cost_server_memory() -> None:
    from experiments import idle

    spec = dataclasses.replace(idle.quick(idle.Spec()), transports=("sse",), ns=(50,), hold_s=2.0)
    row = idle.run(spec).extra["idle"].iloc[0]
    assert row["all_waiting"] and row["connections_waiting"] == 50
    assert row["rss_per_conn_bytes"] > 0


@pytest.mark.slow
def test_relay_carries_the_models_stream_and_prices_a_continuation() -> None:
    from experiments import relay

    spec = dataclasses.replace(relay.quick(relay.Spec()), transports=("sse", "oneshot"))
    tables = relay.run(spec)
    assert (tables.streams["lost"] == 0).all() and (tables.streams["error"] == "").all()
    table = tables.extra["relay"].set_index(["condition", "transport"])
    plain = table.xs("relayed")
    assert plain.loc["sse", "added_latency_p50_ms"] < plain.loc["oneshot", "added_latency_p50_ms"]
    continued = table.drop(index="relayed", level="condition").reset_index().set_index("transport")
    assert (continued["continuations"] == 1).all()
    # a follow-up request pays at least the model's prefill again (ttft_ms=50 in quick)
    assert (continued["continuation_gap_max_ms"] >= 45).all()
