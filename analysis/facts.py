"""Headline facts per transport, read from stored runs of the experiments.

`collect(runs, sources)` takes the stored runs of a suite (any subset of the experiments) and
the experiments' fact sources, and returns one row per transport with the figures an
architect compares; a figure whose experiment was not run is NaN. Each experiment declares
the figures it contributes and the function that reads them from its stored run (its
descriptor); nothing here knows an experiment by name, and nothing is typed by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from transports import registry

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun


class FactSource(Protocol):
    """An experiment's contribution: its figures (name -> (unit, meaning)) and their reader."""

    @property
    def figures(self) -> Mapping[str, tuple[str, str]]: ...

    @property
    def facts(self) -> Callable[[StoredRun], dict[str, dict[str, float]]]: ...


def figures(sources: Iterable[FactSource]) -> dict[str, tuple[str, str]]:
    """Every figure the sources contribute, in their order: name -> (unit, meaning)."""
    out: dict[str, tuple[str, str]] = {}
    for source in sources:
        out.update(source.figures)
    return out


def collect(runs: Iterable[StoredRun], sources: Mapping[str, FactSource]) -> pd.DataFrame:
    """One row per transport (registry order), one column per figure; NaN: not measured.

    `sources` maps an experiment's name (the `experiment` of a run's meta.json) to what it
    contributes; a run of an experiment not in `sources` contributes nothing.
    """
    import pandas as pd

    rows: dict[str, dict[str, float]] = {}
    for run in runs:
        source = sources.get(str(run.meta.get("experiment")))
        for transport, values in (source.facts(run) if source else {}).items():
            rows.setdefault(transport, {}).update(values)
    known = [t.key for t in registry.ordered()]  # display order, read now: a registered one too
    order = [k for k in known if k in rows] + sorted(set(rows) - set(known))
    table = pd.DataFrame([rows[t] for t in order], index=pd.Index(order, name="transport"))
    # headline figures in declared order (NaN where not measured), then the evidence columns
    # the facts functions add: sample sizes `n:<figure>` and `<figure>@fixed` (a setting's fix)
    headline = list(figures(sources.values()))
    evidence = [c for c in table.columns if c not in headline and (":" in c or "@" in c)]
    return table.reindex(columns=headline + evidence)
