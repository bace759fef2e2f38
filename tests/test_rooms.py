"""The rooms and the experiments' descriptors: who may import whom, one declaration per
experiment, and a suite that skips only for a machine that cannot, never for a bug."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from experiments import suite
from experiments.catalog import EXPERIMENTS, MODULES, SUITE
from experiments.descriptor import Experiment
from records.schema import empty_tables
from streams.errors import EnvironmentUnavailable

ROOT = Path(__file__).resolve().parents[1]

# room -> top-level packages it must never import (the pipeline only flows one way)
FORBIDDEN = {
    "records": {"experiments", "presentation", "analysis", "harness", "benchmarks"},
    "analysis": {"experiments", "presentation", "benchmarks"},
    "presentation": {"experiments", "benchmarks"},
    "harness": {"experiments", "presentation", "analysis", "benchmarks"},
    "benchmarks": {"experiments"},
    "streams": {"transports", "clients", "experiments", "presentation", "analysis", "harness"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names a module imports (anywhere in it, including inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_only_down_the_pipeline(room: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[room])
        for path in sorted((ROOT / room).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_room_holds_more_than_a_fifth_of_the_source() -> None:
    rooms = ["streams", "transports", "clients", "netem", "harness", "records", "analysis",
             "presentation", "experiments", "benchmarks"]  # fmt: skip
    lines = {r: sum(len(p.read_text().splitlines()) for p in (ROOT / r).rglob("*.py"))
             for r in rooms}  # fmt: skip
    total = sum(lines.values()) + len((ROOT / "server.py").read_text().splitlines())
    biggest = max(lines, key=lambda r: lines[r])
    assert lines[biggest] / total <= 0.20, (biggest, lines)


def test_each_experiment_is_declared_once_and_completely() -> None:
    assert len(EXPERIMENTS) == len(MODULES)  # one descriptor per listed module, unique names
    figures: dict[str, str] = {}
    for name, experiment in EXPERIMENTS.items():
        assert experiment.name == name and experiment.question
        spec = experiment.spec()
        assert dataclasses.is_dataclass(spec)
        assert type(experiment.quick(spec)) is type(spec)
        for figure in experiment.figures:  # a figure belongs to exactly one experiment
            assert figures.setdefault(figure, name) == name, figure
    assert tuple(n for n, e in EXPERIMENTS.items() if e.in_suite) == SUITE


def _stand_in(name: str, error: Exception) -> Experiment:
    def run(spec: object, run_id: str = "", progress: bool = False) -> object:
        raise error

    @dataclasses.dataclass(frozen=True)
    class Spec:
        transports: tuple[str, ...] = ()

    return Experiment(name, "a stand-in", Spec, lambda s: s, run)  # type: ignore[arg-type]


def test_the_suite_skips_an_experiment_only_when_the_machine_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = EnvironmentUnavailable("nginx is not installed: run `make system`")
    monkeypatch.setitem(EXPERIMENTS, "needs-nginx", _stand_in("needs-nginx", missing))
    html = suite.run_suite(("needs-nginx",), out=tmp_path).read_text()
    assert "Not run here" in html and "nginx is not installed" in html


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("column"), ValueError("x")])
def test_any_other_error_fails_the_suite_with_its_traceback(
    error: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(EXPERIMENTS, "buggy", _stand_in("buggy", error))
    with pytest.raises(type(error)):
        suite.run_suite(("buggy",), out=tmp_path)


def test_a_reading_that_lacks_its_figures_says_so() -> None:
    experiment = EXPERIMENTS["latency"]
    run = type("Run", (), {"meta": {"experiment": "latency"}, "tables": empty_tables()})()
    text = experiment.read(run, pd.DataFrame(index=pd.Index([], name="transport")))  # type: ignore[arg-type]
    assert text.startswith("Not enough measured figures")
