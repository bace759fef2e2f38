"""Summary statistics shared by the report and the charts, so both show the same numbers.

Percentiles use numpy's default "linear" method (type 7 of Hyndman & Fan: interpolate between
the two nearest order statistics). NaNs are dropped first and every percentile is reported with
the count it was computed from; nothing here returns a mean alone. Per-token byte costs are
ratios of sums over streams (total bytes / total tokens), not means of per-stream ratios.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PS: tuple[int, ...] = (50, 90, 99)


def percentiles(values: Iterable[float], ps: Sequence[float] = DEFAULT_PS) -> dict[str, float]:
    """Return `count`, `p<p>` for each p in `ps`, and `max` of the non-NaN `values`.

    Method: numpy "linear" interpolation. Empty (or all-NaN) input gives count 0 and NaN for
    every percentile and the max.
    """
    arr = np.asarray(values if hasattr(values, "__array__") else list(values), dtype=float)
    arr = arr[~np.isnan(arr)]
    out: dict[str, float] = {"count": int(arr.size)}
    if arr.size == 0:
        out.update({_pname(p): math.nan for p in ps})
        out["max"] = math.nan
        return out
    qs = np.percentile(arr, list(ps), method="linear")
    out.update({_pname(p): float(q) for p, q in zip(ps, qs, strict=True)})
    out["max"] = float(arr.max())
    return out


def _pname(p: float) -> str:
    return f"p{p:g}"


def summarize(
    df: pd.DataFrame, by: list[str], column: str, ps: Sequence[float] = DEFAULT_PS
) -> pd.DataFrame:
    """One row per group of `by`: the group keys, `count`, `<column>_p50`, ... and `<column>_max`.

    Groups are sorted by their keys; rows whose `column` is NaN do not count.
    """
    import pandas as pd

    stat_cols = ["count", *(f"{column}_{_pname(p)}" for p in ps), f"{column}_max"]
    rows: list[dict[str, object]] = []
    if len(df):
        for keys, group in df.groupby(by, sort=True, dropna=False, observed=True):
            key_tuple = keys if isinstance(keys, tuple) else (keys,)
            stats = percentiles(group[column].to_numpy(dtype=float, na_value=np.nan), ps)
            row: dict[str, object] = dict(zip(by, key_tuple, strict=True))
            row["count"] = stats.pop("count")
            row.update({f"{column}_{k}": v for k, v in stats.items()})
            rows.append(row)
    out = pd.DataFrame(rows, columns=[*by, *stat_cols])
    out["count"] = out["count"].astype("int64")
    return out


def token_gaps_ms(tokens: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Inter-token arrival gaps, one row per gap: the `by` columns plus `gap_ms`.

    Per stream (`by` + `stream_id`), the first delivery of each seq is kept (duplicates are not
    new tokens), arrivals are sorted by `t_recv_ns`, and consecutive receive times are
    differenced. Tokens read from the same response chunk give gaps of 0: that is what a
    batching transport delivers. The first token of a stream has no gap (TTFT covers it).
    """
    import pandas as pd

    keys = [*by, "stream_id"]
    if tokens.empty:
        return pd.DataFrame({**{c: tokens[c] for c in by}, "gap_ms": pd.Series(dtype=float)})
    first = tokens.sort_values("t_recv_ns", kind="stable").drop_duplicates([*keys, "seq"])
    # Relative to the earliest receive: groupby().diff() works in float64, which cannot hold
    # epoch nanoseconds exactly (2**53 ns is about 104 days).
    t_ns = first["t_recv_ns"].astype("int64")
    t_ns = t_ns - t_ns.min()
    gaps_ns = t_ns.groupby([first[k] for k in keys], sort=False, dropna=False).diff()
    out = first[by].copy()
    out["gap_ms"] = gaps_ns.astype("float64") / 1e6
    return out[out["gap_ms"].notna()].reset_index(drop=True)


def byte_costs(streams: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: stream and token counts and byte costs as ratios of sums over its streams.

    Columns: `streams`, `tokens` (sum of tokens_received), `down_per_token_bytes`,
    `payload_per_token_bytes`, `overhead_per_token_bytes` (the two add up to the first),
    `up_per_token_bytes`, and `overhead_ratio` = sum(bytes_down) / sum(payload_bytes).
    A group with no tokens (or no payload) gets NaN rather than a division by zero.
    """
    sums = streams.groupby(by, sort=True, dropna=False, observed=True).agg(
        streams=("stream_id", "size"),
        tokens=("tokens_received", "sum"),
        bytes_down=("bytes_down", "sum"),
        bytes_up=("bytes_up", "sum"),
        payload_bytes=("payload_bytes", "sum"),
    )
    tokens = sums["tokens"].astype(float).where(sums["tokens"] > 0)
    payload = sums["payload_bytes"].astype(float).where(sums["payload_bytes"] > 0)
    out = sums[["streams", "tokens"]].copy()
    out["down_per_token_bytes"] = sums["bytes_down"] / tokens
    out["payload_per_token_bytes"] = sums["payload_bytes"] / tokens
    out["overhead_per_token_bytes"] = out["down_per_token_bytes"] - out["payload_per_token_bytes"]
    out["up_per_token_bytes"] = sums["bytes_up"] / tokens
    out["overhead_ratio"] = sums["bytes_down"] / payload
    return out.reset_index()
