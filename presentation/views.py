"""What presentation needs to know of an experiment, as an interface.

Presentation never imports an experiment: the suite and the CLI pass descriptors that have
these members (`experiments.descriptor.Experiment` does), so a report can be drawn for any
stored run whose experiment is known, and a test can pass a stand-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from analysis.facts import FactSource

if TYPE_CHECKING:
    import pandas as pd

    from records.store import StoredRun


class ExperimentView(Protocol):
    """The descriptor's presentation side: charts, summary tables, a reading."""

    @property
    def name(self) -> str: ...

    @property
    def question(self) -> str: ...

    @property
    def captions(self) -> Mapping[str, str]: ...

    def draw(self, run: StoredRun) -> list[Path]:
        """Write the run's charts into its folder; their paths."""
        ...

    def tables(self, run: StoredRun) -> list[tuple[str, pd.DataFrame]]:
        """Summary tables (title, table) for the run's report."""
        ...

    def read(self, run: StoredRun, facts: pd.DataFrame) -> str:
        """A reading computed from the run's numbers and the suite's facts."""
        ...


class ReportedExperiment(ExperimentView, FactSource, Protocol):
    """What the suite report needs of an experiment: its presentation and its facts."""
