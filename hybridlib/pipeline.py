"""``hybridlib run``: one parameter file -> one run folder, by executing the notebooks in order.

The study is the five notebooks of ``notebooks/``; this module only runs them with papermill:
``01_prepare_data``, ``02_train`` once per (strategy, seed), ``03_evaluate``,
``04_language_bias``, ``05_report``. Executed copies go to ``runs/<run_name>/notebooks/``.
A step whose outputs exist is skipped (``--force`` re-runs it); the first failing notebook
stops the run, is kept with its error, and is named with the failing cell.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .config import StudyParams, dump_params, load_params
from .errors import HybridlibError
from .study import model_tag

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"


class StepFailed(HybridlibError):
    """A notebook of the study failed; the executed copy with the error is kept."""


@dataclass(frozen=True)
class Step:
    """One papermill execution: a notebook, its parameters, and the files that mean it is done."""

    notebook: str
    label: str
    parameters: dict = field(default_factory=dict)
    outputs: tuple = ()

    def done(self, run_dir: Path) -> bool:
        """True when every output of the step exists in the run folder."""
        return bool(self.outputs) and all((run_dir / out).exists() for out in self.outputs)

    @property
    def output_name(self) -> str:
        suffix = "-".join(str(v) for k, v in sorted(self.parameters.items()) if k in ("strategy", "seed"))
        return f"{self.notebook}{'-' + suffix if suffix else ''}.ipynb"


def study_steps(params: StudyParams) -> list[Step]:
    """The notebook executions of a study, in order."""
    steps = [Step("01_prepare_data", "prepare data and model", outputs=("data/prepared.json",))]
    for strategy in params.trained_strategies:
        for seed in params.seeds:
            tag = model_tag(strategy, seed)
            steps.append(Step("02_train", f"train {strategy}, seed {seed}", {"strategy": strategy, "seed": seed},
                              outputs=(f"train_log/{tag}.csv", f"metrics/parts/{tag}.csv")))
    steps += [
        Step("03_evaluate", "evaluate (zero-shot) and collect metrics", outputs=("metrics/metrics.csv",)),
        Step("04_language_bias", "language bias (rank distance)", outputs=("metrics/rank_distance.csv",)),
        Step("05_report", "report: tables, significance, figures", outputs=("report.md",)),
    ]
    return steps


def prepare_run_dir(params: StudyParams, runs_dir: Path, force: bool) -> Path:
    """Create ``runs/<run_name>/`` and write the resolved parameters; refuse to mix parameter sets."""
    run_dir = Path(runs_dir) / params.run_name
    resolved = run_dir / "params.yaml"
    if resolved.exists() and not force:
        previous = yaml.safe_load(resolved.read_text(encoding="utf-8"))
        changed = sorted(k for k, v in params.model_dump().items() if previous.get(k) != v)
        if changed:
            raise HybridlibError(f"{run_dir} holds results of other parameters (changed: {', '.join(changed)}); "
                                 f"use another run_name or --force to start over")
    for sub in ("notebooks", "metrics/parts", "train_log", "figures", "models", "data"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    dump_params(params, resolved)
    return run_dir


def _execute(step: Step, run_dir: Path, params_path: Path) -> None:
    import papermill

    output = run_dir / "notebooks" / step.output_name
    parameters = {"params_path": str(params_path), "run_dir": str(run_dir.resolve()), **step.parameters}
    try:
        papermill.execute_notebook(NOTEBOOKS_DIR / f"{step.notebook}.ipynb", output, parameters=parameters,
                                   kernel_name="python3", cwd=str(NOTEBOOKS_DIR), progress_bar=True)
    except papermill.PapermillExecutionError as error:
        raise StepFailed(f"{step.notebook} ({step.label}) failed in cell {error.exec_count}: "
                         f"{error.ename}: {error.evalue}; the executed notebook with the error is {output}; "
                         f"finished steps are kept, run the same command again to continue") from None


def run_study(params_path, force: bool = False, runs_dir="runs", only: Optional[list] = None) -> Path:
    """Validate the parameter file, then execute the study's notebooks into the run folder."""
    params_path = Path(params_path)
    params = load_params(params_path)
    run_dir = prepare_run_dir(params, Path(runs_dir), force)
    steps = [s for s in study_steps(params) if not only or s.notebook in only]
    started = time.perf_counter()
    for number, step in enumerate(steps, 1):
        head = f"[{number}/{len(steps)}] {step.notebook}: {step.label}"
        if step.done(run_dir) and not force:
            print(f"{head}: done, skipped (--force re-runs it)", flush=True)
            continue
        print(f"{head} ...", flush=True)
        step_started = time.perf_counter()
        _execute(step, run_dir, (run_dir / "params.yaml").resolve())
        print(f"{head}: finished in {time.perf_counter() - step_started:.0f} s", flush=True)
    print(f"study {params.run_name} finished in {(time.perf_counter() - started) / 60:.1f} min: {run_dir}")
    return run_dir
