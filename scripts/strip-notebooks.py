#!/usr/bin/env python3
"""Strip the notebooks under experiments/notebooks to their inputs, in place.

A committed notebook holds what a reader runs, never what one run measured: outputs (numbers,
tables, images), execution counts and editor metadata change on every run and belong to
whoever ran it. Kept: each cell's source, id and `tags`; the notebook's `kernelspec` and
`language_info.name`. Everything else in `metadata` is noise (widget state, execution
timings, `collapsed`/`scrolled` flags, the Python version that last ran it).

    python scripts/strip-notebooks.py             # strip every notebook in place
    python scripts/strip-notebooks.py --check     # list notebooks not stripped; exit 1 if any
    python scripts/strip-notebooks.py PATH ...    # only these notebooks (files or folders)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "experiments" / "notebooks"
KEEP_CELL_METADATA = ("tags",)
KEEP_LANGUAGE_INFO = ("name",)


def find_notebooks(paths: Sequence[Path]) -> list[Path]:
    """Every `.ipynb` named, or under a folder named, sorted; Jupyter's checkpoints excluded."""
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found.update(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        elif path.suffix == ".ipynb":
            found.add(path)
        else:
            raise ValueError(f"{path}: not a notebook or a folder")
    return sorted(found)


def _notebook_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    if "kernelspec" in metadata:
        kept["kernelspec"] = metadata["kernelspec"]
    language = metadata.get("language_info") or {}
    language = {k: language[k] for k in KEEP_LANGUAGE_INFO if k in language}
    if language:
        kept["language_info"] = language
    return kept


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What stands between `nb` and its stripped form, e.g. `outputs in 3 cells`; [] if none."""
    counts = {"outputs": 0, "execution counts": 0, "cell metadata": 0}
    for cell in nb.cells:
        counts["outputs"] += bool(cell.get("outputs"))
        counts["execution counts"] += cell.get("execution_count") is not None
        counts["cell metadata"] += any(k not in KEEP_CELL_METADATA for k in cell.metadata)
    found = [f"{what} in {n} cell{'s' * (n > 1)}" for what, n in counts.items() if n]
    if dict(nb.metadata) != _notebook_metadata(nb.metadata):
        found.append("notebook metadata")
    return found


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs, execution counts and metadata noise from `nb` in place; return it."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata = nbformat.from_dict(
            {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        )
    nb.metadata = nbformat.from_dict(_notebook_metadata(nb.metadata))
    return nb


def strip_file(path: Path) -> bool:
    """Strip one notebook file in place; True if its contents changed."""
    text = path.read_text(encoding="utf-8")
    nb = strip(nbformat.reads(text, as_version=nbformat.NO_CONVERT))
    stripped = nbformat.writes(nb) + "\n"
    if stripped == text:
        return False
    path.write_text(stripped, encoding="utf-8")
    return True


def check(paths: Sequence[Path]) -> dict[Path, list[str]]:
    """The notebooks among `paths` that are not stripped, each with what is left in it."""
    report = {}
    for path in paths:
        found = problems(nbformat.read(path, as_version=nbformat.NO_CONVERT))
        if found:
            report[path] = found
    return report


def _shown(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help=f"notebooks or folders (default: {_shown(NOTEBOOKS)})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; list the notebooks that still have outputs etc., exit 1 if any",
    )
    args = parser.parse_args(argv)
    try:
        paths = find_notebooks(args.paths or [NOTEBOOKS])
    except ValueError as exc:
        parser.error(str(exc))
    if args.check:
        report = check(paths)
        for path, found in report.items():
            print(f"{_shown(path)}: not stripped ({', '.join(found)})")
        if report:
            print(f"run: python {_shown(Path(__file__))}", file=sys.stderr)
        return 1 if report else 0
    for path in paths:
        if strip_file(path):
            print(f"stripped {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
