"""The scale-out experiment at a tiny size: one process with the in-memory hub, one with the
Redis log and two on one port sharing it, each delivering everything, with the server's
CPU summed over its processes and Redis's CPU in a column of its own."""

from __future__ import annotations

import dataclasses
import os
import types

import pandas as pd
import pytest

from experiments import scale_out
from netem.redis import redis_binary
from streams.errors import ParamError

SMALL = dataclasses.replace(
    scale_out.quick(scale_out.Spec()), ns=(6,), tokens=5, rate=50.0, ramp_s=0.2
)


def test_setups_that_cannot_run_are_one_line() -> None:
    with pytest.raises(ParamError, match="several processes need the redis log"):
        scale_out.Spec(setups=(scale_out.Setup(2, "memory"),))
    with pytest.raises(ParamError, match="1-8 processes with a memory or redis log"):
        scale_out.Spec(setups=(scale_out.Setup(1, "disk"),))


def test_the_log_cost_ratio_compares_one_process_each_at_the_same_n() -> None:
    rows = pd.DataFrame(
        {"processes": [1, 1, 1, 2], "log": ["memory", "redis", "redis", "redis"],
         "n": [100, 100, 50, 100], "server_cpu_per_token_us": [40.0, 44.0, 50.0, 60.0],
         "redis_cpu_per_token_us": [0.0, 6.0, 7.0, 6.0]}
    )  # fmt: skip
    assert scale_out._log_cost_ratio(rows) == pytest.approx(50.0 / 40.0)
    assert scale_out._log_cost_ratio(rows[rows["log"] == "redis"]) is None


@pytest.mark.slow
@pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed")
def test_every_setup_delivers_and_the_redis_cpu_is_its_own_column() -> None:
    table = scale_out.run(SMALL).extra["scale_out"].set_index("setup")
    assert list(table.index) == [s.label for s in scale_out.SETUPS]
    assert (table["delivered_ratio"] == 1.0).all() and (table["errors"] == 0).all()
    assert (table["server_cpu_per_token_us"] > 0).all()
    assert table.loc["1 process, memory log", "redis_cpu_s"] == 0
    assert (table.loc[["1 process, redis log", "2 processes, redis log"], "redis_cpu_s"] > 0).all()
    run = types.SimpleNamespace(extra={"scale_out": table.reset_index()})
    facts = scale_out.facts(run)  # type: ignore[arg-type]
    assert facts["sse"]["capacity_2p_redis_n"] == 6 and facts["sse"]["redis_log_cpu_ratio"] > 0
    reading = scale_out.reading(run, pd.DataFrame())  # type: ignore[arg-type]
    assert "2 processes, redis log: 6 (every N tried)" in reading
    assert f"{os.cpu_count()}-core machine shared by all of them" in reading
