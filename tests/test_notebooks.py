"""The study notebooks as committed: parameters cells, thin cells, stored outputs for nbval.

The notebooks themselves run under nbval (``pytest --nbval-lax notebooks/``, part of ``make
test``): with their default parameters they run the smoke study into ``runs/smoke`` in file
order (01 -> 06), and cells marked ``# NBVAL_CHECK_OUTPUT`` are compared with the outputs
stored in the notebook. The tests here check what nbval cannot: that those stored outputs
exist (nbval silently skips a marked cell that was never run), that nothing else is stored,
and that every parameter the pipeline passes is declared in the notebook's parameters cell.

After changing a checked cell, refresh the stored outputs (runs the smoke study, minutes):

    python tests/test_notebooks.py --refresh
"""
from __future__ import annotations

import ast
import copy
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NAMES = ["01_prepare_data", "02_train", "03_evaluate", "04_language_bias", "05_report", "06_explore"]
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
MAX_LOGIC_LINES = 10


def read(name: str):
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def is_checked(cell) -> bool:
    return cell.source.lstrip().startswith(CHECK_MARK)


def parameters_of(nb) -> dict:
    """The names and default values the parameters cell assigns."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, "parameters cell: plain assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_the_study_is_six_notebooks():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_runs_the_smoke_study(name):
    nb = read(name)
    values = parameters_of(nb)
    expected = {"params_path": "../params/smoke.yaml", "run_dir": "../runs/smoke"}
    expected.update({"02_train": {"strategy": "hybrid", "seed": 0},
                     "06_explore": {"dataset": "xquad-r", "question_id": "", "question_lang": "de", "query_text": "",
                                    "models": ["zero-shot", "hybrid"], "k": 10}}.get(name, {}))
    assert values == expected
    assert (NOTEBOOK_DIR / values["params_path"]).is_file()
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {name[:2]} ")
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_every_parameter_the_pipeline_passes_is_declared():
    from hybridlib.config import load_params
    from hybridlib.pipeline import study_steps

    for params_file in sorted((ROOT / "params").glob("*.yaml")):
        for step in study_steps(load_params(params_file), publish=True):
            passed = {"params_path", "run_dir", *step.parameters}
            declared = set(parameters_of(read(step.notebook)))
            assert passed <= declared, f"{step.notebook}: {passed - declared} not in its parameters cell"


@pytest.mark.parametrize("name", NAMES)
def test_only_checked_cells_store_outputs(name):
    checked = 0
    for cell in code_cells(read(name)):
        if is_checked(cell):
            checked += 1
            assert cell.execution_count is not None and cell.outputs, \
                f"{name}: a checked cell without stored outputs is silently not compared: {cell.source[:60]!r}"
            streams = [o for o in cell.outputs if o.output_type == "stream"]
            assert all(o.name == "stdout" for o in streams), f"{name}: stderr in a checked cell"
            text = nbformat.writes(nbformat.v4.new_notebook(cells=[cell]))
            assert not re.search(r"/(work|tmp|home|root|Users)/", text), f"{name}: a machine path is stored"
        else:
            assert cell.execution_count is None and not cell.outputs, f"{name}: unchecked cell has outputs"
    assert checked >= 1


@pytest.mark.parametrize("name", NAMES)
def test_cells_are_thin(name):
    for cell in code_cells(read(name)):
        logic = [l for l in cell.source.splitlines() if l.strip() and not l.strip().startswith("#")]
        assert len(logic) <= MAX_LOGIC_LINES, f"{name}: move this cell's logic into hybridlib: {cell.source[:80]!r}"


def refresh_reference_outputs() -> None:
    """Run the notebooks in order (smoke defaults) and store the outputs of the checked cells only."""
    from nbclient import NotebookClient

    for name in NAMES:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        print(f"running {path.name} ...", flush=True)
        executed = NotebookClient(copy.deepcopy(nb), timeout=3600, kernel_name="python3",
                                  resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
        for cell, run in zip(nb.cells, executed.cells):
            if cell.cell_type == "code":
                cell.outputs = run.outputs if is_checked(cell) else []
                cell.execution_count = run.execution_count if is_checked(cell) else None
        nbformat.write(nb, path)


if __name__ == "__main__":
    if sys.argv[1:] != ["--refresh"]:
        sys.exit(__doc__)
    refresh_reference_outputs()
