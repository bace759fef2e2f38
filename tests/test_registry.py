"""The registry is the one list of transports: an entry alone makes a transport first-class.

`tests/mirror.py` defines a throw-away transport, "mirror", with new halves; registering it
(and editing nothing else) must give it the whole conformance suite, the page's transport
list, a chart colour and its place in the chart order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import types
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pandas as pd
import pytest

from analysis import facts
from experiments import cancel, suite
from experiments.catalog import EXPERIMENTS
from presentation import charts
from records import store
from tests.support import MIRROR, ServeFactory, registered
from tests.test_conformance import CHECKS, Check, check_id
from transports import registry
from transports.web.common import COUNTERS

KEY = MIRROR.key


def test_registry_pairs_each_key_with_its_halves() -> None:
    for key, entry in registry.TRANSPORTS.items():
        assert entry.client_class().key == key
        assert callable(entry.add_routes())
        importlib.import_module(entry.codec)


def test_capabilities_tell_transports_apart_where_they_must() -> None:
    transports = list(registry.TRANSPORTS.values())
    assert len({t.order for t in transports}) == len(transports)  # a total display order
    assert len({t.colour for t in transports}) == len(transports)
    names = [name for t in transports for name in t.browser_clients]
    assert len(set(names)) == len(names)  # a page client belongs to one transport
    for t in transports:
        assert t.variant_of in ("", *registry.TRANSPORTS) and t.variant_of != t.key
        assert t.cancel_requests == (0 if t.cancel == "message" else 1)
        for name in t.browser_clients:
            assert registry.by_browser_client(name) is t


def test_register_and_unregister_change_every_view_of_the_registry() -> None:
    before = registry.KEYS
    with registered(MIRROR):
        assert (*before, KEY) == registry.KEYS
        assert registry.get(KEY) is MIRROR
        assert registry.parse_keys("all")[-1] == KEY
        assert registry.ordered()[-1] is MIRROR  # order 99: after every built-in
        with pytest.raises(ValueError, match="already registered"):
            registry.register(MIRROR)
    assert before == registry.KEYS and KEY not in registry.TRANSPORTS
    with pytest.raises(ValueError, match="unknown transport"):
        registry.get(KEY)


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
async def test_a_registry_entry_alone_gives_a_transport_the_conformance_suite(
    serve: ServeFactory, check: Check
) -> None:
    with registered(MIRROR):
        served = await serve()  # make_app mounts what the registry holds now
        await check(served, KEY)
    # the mirror's own server half answered: the server mounted it from the registry alone
    assert served.app[COUNTERS].by_transport[KEY]["requests"] >= 1


async def test_the_page_lists_the_registry_with_its_capabilities(serve: ServeFactory) -> None:
    with registered(MIRROR):
        served = await serve()
        async with aiohttp.ClientSession() as http, http.get(f"{served.url}/transports") as resp:
            assert resp.status == 200
            listed = await resp.json()
    assert [t["key"] for t in listed] == [t.key for t in [*registry.ordered(), MIRROR]]
    mirror = listed[-1]
    assert mirror == MIRROR.capabilities() and "client" not in mirror
    assert mirror["colour"] == MIRROR.colour and mirror["browser_clients"] == []


def test_charts_colour_and_order_a_registered_transport_from_its_entry() -> None:
    first = registry.ordered()[0].key
    assert charts.colour(KEY) != MIRROR.colour  # unknown: a hash-picked fallback
    with registered(MIRROR):
        assert charts.colour(KEY) == MIRROR.colour
        assert charts.transport_order(["zz", KEY, first]) == [first, KEY, "zz"]


def test_cancel_facts_read_how_a_transport_cancels_from_its_entry() -> None:
    by_message = dataclasses.replace(MIRROR, cancel="message")
    rows = [
        {"policy": "keep", "how": how, "transport": key, "wasted_tokens": 1.0}
        for key in (KEY, "sse")
        for how in ("cancel", "close")
    ]
    run = types.SimpleNamespace(extra={"cancel": pd.DataFrame(rows)})
    with registered(by_message):
        facts = cancel.facts(run)  # type: ignore[arg-type]
    assert facts[KEY]["cancel_extra_requests"] == 0.0  # a message on the open connection
    assert facts["sse"]["cancel_extra_requests"] == 1.0  # DELETE /streams/{id}


async def test_a_registry_entry_alone_puts_a_transport_in_the_charts_and_the_report(
    serve: ServeFactory, tmp_path: Path
) -> None:
    """Measured by the latency experiment, stored, charted and reported with no other edit:
    a row of the headline, a column of the matrix, a line in the charts' data."""
    latency = EXPERIMENTS["latency"]
    with registered(MIRROR):
        served = await serve()
        spec = dataclasses.replace(
            latency.quick(latency.spec()), transports=(KEY, "sse"), server=served.url,
            rates_hz=(50.0,), tokens=5, ttft_ms=0.0,
        )  # fmt: skip
        # the experiment drives its own event loop: run it beside the one serving it
        tables = await asyncio.to_thread(latency.run, spec, run_id="mirror-run")
        started = datetime.now(UTC)
        run_dir = suite.save_run(tables, latency, spec, "mirror-run", started, tmp_path / "latency")
        html_path = suite.write_report(tmp_path, [store.load(run_dir)])
        table = facts.collect([store.load(run_dir)], EXPERIMENTS)
    assert set(tables.streams["transport"]) == {KEY, "sse"}
    assert (tables.streams["error"] == "").all() and tables.streams["lost"].sum() == 0
    assert list(table.index) == ["sse", KEY]  # registry order, the entry's `order` last
    assert table.loc[KEY, ["latency_p99_ms", "bytes_per_token"]].notna().all()
    report_md = (tmp_path / "report.md").read_text()
    assert f"| {KEY} |" in report_md  # its headline row
    assert f"| scenario | sse | {KEY} | rule |" in report_md  # its column of the matrix
    assert 'src="data:image/png;base64,' in html_path.read_text()
    run_report = (run_dir / "report.md").read_text()
    assert f"| {KEY} |" in run_report and (run_dir / "latency_cdf.png").is_file()
