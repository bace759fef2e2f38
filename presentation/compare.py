"""`pushlab compare A B`: what changed between two stored runs (or suites) on the headline
figures per transport, with the ratio B / A."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from analysis import facts
from analysis.facts import FactSource
from records.store import load_runs

if TYPE_CHECKING:
    import pandas as pd


def headline(path: Path, sources: Mapping[str, FactSource]) -> pd.DataFrame:
    return facts.collect(load_runs([path]), sources)


def compare(a: Path, b: Path, sources: Mapping[str, FactSource]) -> pd.DataFrame:
    """Long table: transport, figure, a, b, ratio (b / a); figures measured on both sides.
    `sources` are the experiments' fact sources (name -> descriptor)."""
    import pandas as pd

    left, right = headline(a, sources), headline(b, sources)
    rows = []
    for transport in [t for t in left.index if t in right.index]:
        for figure in facts.figures(sources.values()):
            va, vb = left.at[transport, figure], right.at[transport, figure]
            if pd.notna(va) and pd.notna(vb):
                ratio = vb / va if va else float("nan")
                rows.append(
                    {"transport": transport, "figure": figure, "a": va, "b": vb, "ratio": ratio}
                )
    return pd.DataFrame(rows, columns=["transport", "figure", "a", "b", "ratio"])
