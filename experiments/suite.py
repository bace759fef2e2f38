"""The default suite: every experiment at its quick size, stored under one folder, then the
report (`report.html`, `report.md`) built from the stored runs.

    results/<suite-id>/<experiment>/...   one stored run per experiment (tables, meta, charts)
    results/<suite-id>/report.html        self-contained: charts embedded
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from experiments.catalog import EXPERIMENTS, SUITE
from experiments.descriptor import Experiment
from records.schema import Tables
from streams.errors import EnvironmentUnavailable


def save_run(tables: Tables, experiment: Experiment | str, spec: object, run_id: str,
             started: dt.datetime, out_dir: Path, charts: bool = True) -> Path:  # fmt: skip
    """Store the tables with metadata, then draw the charts (once) and the run's report.

    `experiment` is the descriptor, or a bare name for runs no experiment declares
    (`pushlab bench`): those get the generic charts and report only."""
    from presentation import charts as charts_mod
    from presentation import markdown
    from records import meta, store

    name = experiment if isinstance(experiment, str) else experiment.name
    spec_dict = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(vars(spec))  # type: ignore[arg-type]
    store.save(tables, meta.collect_meta(name, spec_dict, run_id, started), out_dir)
    if charts:
        run = store.load(out_dir)
        if isinstance(experiment, str):
            charts_mod.draw_all(run)
            markdown.write_markdown(out_dir)
        else:
            experiment.draw(run)
            markdown.write_markdown(out_dir, experiment)
    return out_dir


def run_suite(names: tuple[str, ...] = SUITE, *, quick: bool = True, out: Path | None = None,
              progress: bool = False) -> Path:  # fmt: skip
    """Run each experiment, store it, and write the suite report; the report.html path.

    An experiment is skipped only when this machine cannot run it (EnvironmentUnavailable:
    nginx, network namespaces or Chromium missing), and the report says why; any other
    exception is a bug and propagates with its traceback."""
    from records import meta, store

    started = dt.datetime.now(dt.UTC)
    suite_id = meta.new_run_id("suite", started)
    suite_dir = out or store.results_root() / suite_id
    runs, skipped = [], {}
    for name in names:
        experiment = EXPERIMENTS[name]
        spec = experiment.quick(experiment.spec()) if quick else experiment.spec()
        run_started = dt.datetime.now(dt.UTC)
        run_id = f"{suite_id}-{name}"
        if progress:
            print(f"suite: {name}", flush=True)
        try:
            tables = experiment.execute(spec, run_id=run_id, progress=progress)
        except EnvironmentUnavailable as exc:
            skipped[name] = exc.message[:300]
            continue
        run_dir = save_run(tables, experiment, spec, run_id, run_started, suite_dir / name)
        runs.append(store.load(run_dir))
    return write_report(suite_dir, runs, skipped, quick=quick)


def write_report(suite_dir: Path, runs: list[Any], skipped: dict[str, str] | None = None,
                 quick: bool | None = None) -> Path:  # fmt: skip
    """Write the suite report over stored runs; `quick` (the suite's size, when known) names
    the size on the first screen and in the commands that run a skipped experiment."""
    from presentation import html as htmlreport

    suite_dir.mkdir(parents=True, exist_ok=True)
    html_path, _ = htmlreport.write(suite_dir, runs, skipped or {}, EXPERIMENTS, quick=quick)
    return html_path


def report_from(run_dirs: list[Path], out: Path | None = None) -> Path:
    """A report over runs already stored (each a run folder, or a suite folder of them)."""
    from records import meta, store

    runs = store.load_runs(run_dirs)
    suite_dir = out or store.results_root() / meta.new_run_id("report", dt.datetime.now(dt.UTC))
    return write_report(suite_dir, runs)
