"""Small pieces the experiments' readings are computed from (never a fixed sentence)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun


def extremes(series: pd.Series) -> tuple[str, float, str, float]:
    """(index of min, min, index of max, max) over the measured values; KeyError if none."""
    s = series.dropna()
    if s.empty:
        raise KeyError(str(series.name))
    return str(s.idxmin()), float(s.min()), str(s.idxmax()), float(s.max())


def worst_point_reading(run: StoredRun) -> str:
    """Token latency p99 per transport at the sweep's largest value (rtt, loss)."""
    worst = run.tokens[run.tokens["sweep_value"] == run.tokens["sweep_value"].max()]
    p99 = worst.groupby("transport")["latency_ms"].quantile(0.99)
    lo, lo_v, hi, hi_v = extremes(p99)
    label = worst["condition"].iloc[0]
    return (
        f"At {label}, token latency p99 ranged from {lo_v:.1f} ms ({lo}) to "
        f"{hi_v:.1f} ms ({hi}). Compare with the first condition in the charts."
    )
