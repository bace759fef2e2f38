"""What an experiment declares about itself, once: the `Experiment` descriptor.

An experiment module ends with one `EXPERIMENT = Experiment(...)`: its name, the question it
answers, its spec and quick size, `run`, the headline figures it contributes (with the
function that reads them from a stored run), its charts, its summary tables and its reading.
The suite, the facts, the charts, the report and the CLI loop over the descriptors
(`experiments.catalog`); adding an experiment touches its own module and that list only.

Presentation never imports this module: the CLI and the suite hand the descriptors to it
(they satisfy `presentation.views.ExperimentView` and `analysis.facts.FactSource`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from records.schema import Tables
    from records.store import StoredRun

Facts = dict[str, dict[str, float]]  # transport -> figure -> value


def _no_tables(run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
    return []


def _no_reading(run: StoredRun, facts: pd.DataFrame) -> str:
    return ""


def _no_facts(run: StoredRun) -> Facts:
    return {}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment, declared once."""

    name: str  # CLI name, `experiment` column, folder name in a suite
    question: str  # one line: what it answers (pushlab list, the report's section head)
    spec: type[Any]  # a frozen dataclass; Spec() is the default size
    quick: Callable[[Any], Any]  # spec -> the quick size of it
    run: Callable[..., Tables]  # run(spec, run_id=..., progress=...) -> Tables; draws nothing
    # headline figures it contributes: name -> (unit, meaning), and how to read them
    figures: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    facts: Callable[[StoredRun], Facts] = _no_facts
    # its own charts (functions of a stored run writing PNGs into it), with their captions
    charts: tuple[Callable[[StoredRun], list[Path]], ...] = ()
    captions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    generic_charts: bool = True  # the per-transport latency/bytes charts apply to it
    tables: Callable[[StoredRun], list[tuple[str, pd.DataFrame]]] = _no_tables
    reading: Callable[[StoredRun, pd.DataFrame], str] = _no_reading
    in_suite: bool = True
    # the path this experiment's streams take when it carries TCP only (a fault proxy, nginx,
    # a TLS front): a QUIC transport asked for there is refused in one line; "": any stack
    tcp_only: str = ""

    def execute(self, spec: Any, run_id: str = "", progress: bool = False) -> Tables:
        """`run`, after refusing transports its path cannot carry."""
        if self.tcp_only:
            from experiments.spec import check_over_tcp

            check_over_tcp(tuple(getattr(spec, "transports", ())), self.tcp_only)
        return self.run(spec, run_id=run_id, progress=progress)

    def draw(self, run: StoredRun) -> list[Path]:
        """Every chart of this experiment for a stored run, each drawn once."""
        from presentation import charts

        paths = charts.draw_all(run) if self.generic_charts else []
        return paths + [p for chart in self.charts for p in chart(run)]

    def read(self, run: StoredRun, facts: pd.DataFrame) -> str:
        """The reading, or a plain statement that the figures it needs are missing."""
        try:
            return self.reading(run, facts)
        except KeyError as exc:  # a figure this reading needs was not measured in this run
            return f"Not enough measured figures for a reading (missing {exc})."
