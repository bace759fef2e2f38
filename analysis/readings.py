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


def same(series: pd.Series, rel: float = 0.05, floor: float = 0.0) -> bool:
    """Whether every measured value is within `rel` of the largest (or within `floor` of each
    other): then a reading says they were alike instead of naming a "lowest" and "highest"."""
    s = series.dropna()
    if s.empty:
        raise KeyError(str(series.name))
    lo, hi = float(s.min()), float(s.max())
    return hi - lo <= max(floor, rel * abs(hi))


def num(value: float) -> str:
    """A figure in a sentence: whole above 100, else three significant digits."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def span(series: pd.Series, what: str, unit: str, rel: float = 0.05, floor: float = 0.0) -> str:
    """One sentence on a figure across transports: its range (lowest first) with who, or that
    they were alike (within `rel` of the largest, or `floor` in absolute terms). KeyError when
    nothing was measured."""
    lo, lo_v, hi, hi_v = extremes(series)
    count = series.dropna().size
    if count == 1:
        return f"{what} was {num(lo_v)} {unit} ({lo}, the only transport measured)."
    if same(series, rel, floor):
        return f"{what} was alike for all {count} transports ({num(lo_v)}-{num(hi_v)} {unit})."
    return f"{what} ranged from {num(lo_v)} {unit} ({lo}) to {num(hi_v)} {unit} ({hi})."
