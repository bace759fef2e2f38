"""Every notebook under experiments/notebooks runs top to bottom, and is committed stripped.

Each notebook is executed with nbclient in a fresh `python3` kernel (this interpreter's
ipykernel), with the repository root as its working directory and `PUSHLAB_RESULTS` in a
temporary directory; notebooks are found by globbing, so a new one is tested without a change
here. A notebook that stops because the machine lacks something it needs (root, nginx) raises
`CannotRunHere` in its first cells: that fails here with the notebook's reason, except that
a root-only notebook is skipped on a machine without root, as tests/test_netns.py is.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.support import UNIT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "experiments" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = int(120 * UNIT)
NEEDS_ROOT = {"loss.ipynb"}  # network namespaces and nftables
# A quantity in prose: a number with a unit. Measured values belong in code cells' output.
QUANTITY = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|s|us|µs|%|x|KiB|MiB|kB|bytes)(?!\w)")


def strip_script() -> ModuleType:
    """scripts/strip-notebooks.py as a module (its file name is not an identifier)."""
    spec = importlib.util.spec_from_file_location(
        "strip_notebooks", ROOT / "scripts" / "strip-notebooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks_and_a_tour() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert "tour_why_chatgpt_streams_over_sse.ipynb" in names
    assert {"latency.ipynb", "loss.ipynb", "proxy.ipynb", "idle_timeout.ipynb"} <= names


def test_kernel_runs_this_interpreter() -> None:
    """nbclient starts `python3`; it must be this venv's Python, which has pushlab installed."""
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    # jupyter_client replaces a bare `python` with sys.executable
    assert spec.argv[0] in ("python", "python3", sys.executable), (
        f"kernel {KERNEL!r} runs {spec.argv[0]} (from {spec.resource_dir}), not this Python; "
        f"install this one's: {sys.executable} -m ipykernel install --sys-prefix"
    )


def test_notebooks_are_stripped(capsys: pytest.CaptureFixture[str]) -> None:
    assert strip_script().main(["--check"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape(path: Path) -> None:
    """An introduction first, "Try this" last, and no measured quantity quoted in prose."""
    nb = nbformat.read(path, as_version=4)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith("# "), path.name
    assert last.cell_type == "markdown" and "## Try this" in last.source, path.name
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            prose = re.sub(r"```.*?```|`[^`]*`", "", cell.source, flags=re.DOTALL)
            assert not QUANTITY.findall(prose), (path.name, QUANTITY.findall(prose), prose)


@pytest.mark.slow
@pytest.mark.timeout(CELL_TIMEOUT_S * 3)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name in NEEDS_ROOT and (sys.platform != "linux" or os.geteuid() != 0):
        pytest.skip("needs Linux and root")
    monkeypatch.setenv("PUSHLAB_RESULTS", str(tmp_path / "results"))  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(ROOT)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} stopped with an error:\n{exc}", pytrace=False)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} drew no chart"
    assert not [o for o in outputs if o.output_type == "error"], path.name
