"""The default suite: every experiment at its quick size, stored under one folder, then the
report (`report.html`, `report.md`) built from the stored runs.

    results/<suite-id>/<experiment>/...   one stored run per experiment (tables, meta, charts)
    results/<suite-id>/report.html        self-contained: charts embedded
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
from pathlib import Path
from typing import Any

from records.schema import Tables
from streams.errors import ParamError, PushlabError

SUITE = ("latency", "rtt", "reconnect", "cancel", "proxy", "idle-timeout", "loss", "scale",
         "idle", "relay")  # fmt: skip
# every experiment `pushlab run` knows: the suite's, and those that need a browser
MODULES = {
    name: "experiments." + name.replace("-", "_") for name in (*SUITE, "browser-connections")
}


def experiment_module(name: str) -> Any:
    return importlib.import_module(MODULES[name])


def save_run(tables: Tables, experiment: str, spec: object, run_id: str, started: dt.datetime,
             out_dir: Path, charts: bool = True) -> Path:  # fmt: skip
    """Store the tables with metadata, then draw charts and the run's report from the files."""
    from records import meta, store

    spec_dict = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else dict(vars(spec))  # type: ignore[arg-type]
    store.save(tables, meta.collect_meta(experiment, spec_dict, run_id, started), out_dir)
    if charts:
        from presentation import charts as charts_mod
        from presentation import markdown as report

        charts_mod.draw_all(out_dir)
        report.write_markdown(out_dir)
    return out_dir


def run_suite(names: tuple[str, ...] = SUITE, *, quick: bool = True, out: Path | None = None,
              progress: bool = False) -> Path:  # fmt: skip
    """Run each experiment, store it, and write the suite report; the report.html path."""
    from records import meta, store

    started = dt.datetime.now(dt.UTC)
    suite_id = meta.new_run_id("suite", started)
    suite_dir = out or store.results_root() / suite_id
    runs, skipped = [], {}
    for name in names:
        module = experiment_module(name)
        spec = module.quick(module.Spec()) if quick else module.Spec()
        run_started = dt.datetime.now(dt.UTC)
        run_id = f"{suite_id}-{name}"
        if progress:
            print(f"suite: {name}", flush=True)
        try:
            tables = module.run(spec, run_id=run_id, progress=progress)
        except (PushlabError, RuntimeError) as exc:  # this machine cannot: no nginx, no netns
            skipped[name] = str(exc)[:300]
            continue
        runs.append(store.load(save_run(tables, name, spec, run_id, run_started, suite_dir / name)))
    return write_report(suite_dir, runs, skipped)


def write_report(suite_dir: Path, runs: list[Any], skipped: dict[str, str] | None = None) -> Path:
    from presentation import html as htmlreport

    suite_dir.mkdir(parents=True, exist_ok=True)
    html_path, _ = htmlreport.write(suite_dir, runs, skipped or {})
    return html_path


def report_from(run_dirs: list[Path], out: Path | None = None) -> Path:
    """A report over runs already stored (each a run folder, or a suite folder of them)."""
    from records import meta, store

    runs = load_runs(run_dirs)
    suite_dir = out or store.results_root() / meta.new_run_id("report", dt.datetime.now(dt.UTC))
    return write_report(suite_dir, runs)


def expand(paths: list[Path]) -> list[Path]:
    """Run folders: each path itself if it holds meta.json, else its children that do."""
    out = []
    for path in paths:
        if (path / "meta.json").is_file():
            out.append(path)
        else:
            found = sorted(p.parent for p in path.glob("*/meta.json"))
            if not found:
                raise ParamError(f"{path}: neither a stored run nor a suite of them", param="run")
            out += found
    return out


def load_runs(paths: list[Path]) -> list[Any]:
    """The stored runs under `paths`; a folder that is not one is a ParamError (CLI: exit 2)."""
    from records import store

    try:
        return [store.load(d) for d in expand(paths)]
    except ValueError as exc:  # missing file, other schema, unreadable meta: say which
        raise ParamError(str(exc), param="run") from None
