"""``hybridlib run``: one parameter file -> one run folder, by executing the notebooks in order.

The study is the five notebooks of ``notebooks/``; this module only runs them with papermill:
``01_prepare_data``, ``02_train`` once per (strategy, seed), ``03_evaluate``,
``04_language_bias``, ``05_report``. Executed copies go to ``runs/<run_name>/notebooks/``.

- The parameter file is validated before any notebook starts (one line naming a bad key).
- A step is skipped when its outputs exist and are newer than the outputs of the steps it
  reads (make's rule), so a second run continues where the first stopped; ``--force`` re-runs
  every step.
- The first failing notebook stops the run; the error names it and the failing cell, and the
  executed copy with the error is kept. Finished steps are kept.
- Each executed step is recorded in ``steps.json`` of the run folder (start, end, seconds, commit), so
  that a later command knows when and at which commit the steps it reuses ran.
- ``publish``: ``05_report`` always runs, then ``hybridlib.publish.publish_run`` writes the repository's
  ``results/<run_name>/`` (report, macro tables as CSV and LaTeX, executed notebooks, figures,
  ``run.json`` with the command, commit, wall time of the whole command and machine):
  ``hybridlib run params/default.yaml --publish``.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import yaml

from .config import ParamsError, StudyParams, dump_params, load_params, params_from_dict
from .errors import HybridlibError
from .io import write_json
from .study import model_tag, training_labels

REPO_DIR = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_DIR / "notebooks"
RESULTS_DIR = REPO_DIR / "results"  # published studies: results/<run_name>/ (hybridlib.publish)
STEPS_FILE = "steps.json"  # in the run folder: when and at which commit each step last ran

log = logging.getLogger(__name__)


class StepFailed(HybridlibError):
    """A notebook of the study failed; the executed copy with the error is kept."""


@dataclass(frozen=True)
class Step:
    """One papermill execution: a notebook, its parameters, the files that mean it is done,
    and the notebooks whose outputs it reads."""

    notebook: str
    label: str
    parameters: dict = field(default_factory=dict)
    outputs: tuple = ()
    reads: tuple = ()
    always: bool = False

    @property
    def output_name(self) -> str:
        """File name of the executed copy: ``02_train-hybrid-seed0.ipynb`` for a training step."""
        if "strategy" in self.parameters:
            return f"{self.notebook}-{model_tag(self.parameters['strategy'], self.parameters['seed'])}.ipynb"
        return f"{self.notebook}.ipynb"


def study_steps(params: StudyParams, publish: bool = False) -> list[Step]:
    """The notebook executions of a study, in order (``publish``: the report always runs)."""
    steps = [Step("01_prepare_data", "prepare data and model", outputs=("data/prepared.json",))]
    for label in training_labels(params):  # the trained strategies, then the variants
        for seed in params.seeds:
            tag = model_tag(label, seed)
            steps.append(Step("02_train", f"train {label}, seed {seed}", {"strategy": label, "seed": seed},
                              outputs=(f"train_log/{tag}.csv", f"metrics/parts/{tag}.csv")))
    steps += [
        Step("03_evaluate", "evaluate (zero-shot) and collect metrics", outputs=("metrics/metrics.csv",),
             reads=("02_train",)),
        Step("04_language_bias", "language bias (rank distance)",
             outputs=("metrics/rank_distance.csv", "metrics/seen_unseen.csv"),
             reads=("03_evaluate",)),
        Step("05_report", "report: tables, significance, figures", outputs=("report.md", "metrics/significance.csv"),
             reads=("03_evaluate", "04_language_bias"), always=publish),
    ]
    return steps


def _mtimes(run_dir: Path, outputs: Sequence[str]) -> list[float]:
    return [(run_dir / out).stat().st_mtime for out in outputs]


def is_done(step: Step, steps: Sequence[Step], run_dir: Path) -> bool:
    """True when every output of ``step`` exists and none is older than an output of a step it reads."""
    if step.always or not all((run_dir / out).exists() for out in step.outputs):
        return False
    inputs = [out for other in steps if other.notebook in step.reads for out in other.outputs
              if (run_dir / out).exists()]
    return not inputs or min(_mtimes(run_dir, step.outputs)) >= max(_mtimes(run_dir, inputs))


def prepare_run_dir(params: StudyParams, runs_dir: Path, force: bool) -> Path:
    """Create ``runs/<run_name>/`` and write the resolved parameters; refuse to mix parameter sets."""
    run_dir = Path(runs_dir) / params.run_name
    resolved = run_dir / "params.yaml"
    if resolved.exists() and not force:
        previous = yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}
        try:  # defaults filled in, so a key added to the schema since is no change
            previous = params_from_dict(previous).model_dump()
        except ParamsError:
            pass
        changed = sorted(k for k, v in params.model_dump().items() if previous.get(k) != v)
        if changed:
            raise HybridlibError(f"{run_dir} holds results of other parameters (changed: {', '.join(changed)}); "
                                 f"use another run_name or --force to start over")
    for sub in ("notebooks", "metrics/parts", "train_log", "figures", "data"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    dump_params(params, resolved)
    return run_dir


def _first_line(source: str) -> str:
    lines = [l.strip() for l in (source or "").splitlines() if l.strip() and not l.strip().startswith("#")]
    text = lines[0] if lines else ""
    return text if len(text) <= 70 else text[:67] + "..."


def execute_step(step: Step, run_dir: Path, params_path: Path, notebooks_dir: Path = NOTEBOOKS_DIR) -> Path:
    """Run one notebook with papermill into ``run_dir/notebooks/``; ``StepFailed`` names the failing cell."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    output = run_dir / "notebooks" / step.output_name
    parameters = {"params_path": str(params_path), "run_dir": str(run_dir.resolve()), **step.parameters}
    where = (f"the executed notebook with the error is {output}; finished steps are kept, "
             f"run the same command again to continue")
    try:
        papermill.execute_notebook(notebooks_dir / f"{step.notebook}.ipynb", output, parameters=parameters,
                                   kernel_name="python3", cwd=str(notebooks_dir), progress_bar=True)
    except papermill.PapermillExecutionError as error:
        raise StepFailed(f"{step.notebook} ({step.label}) failed in cell [{error.exec_count}] "
                         f"`{_first_line(error.source)}`: {error.ename}: {error.evalue}; {where}") from None
    except (DeadKernelError, CellTimeoutError) as error:
        raise StepFailed(f"{step.notebook} ({step.label}): {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}; {where}") from None
    return output


def _step_history(run_dir: Path) -> dict:
    path = run_dir / STEPS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:  # a damaged record only loses the history
        return {}


def reused_record(step: Step, run_dir: Path, history: dict) -> dict:
    """What is known of a step skipped as done: its record in ``steps.json`` (times, commit), else the
    time its newest output was written."""
    known = history.get(step.output_name)
    if known:
        return {**known, "step": step.output_name, "label": step.label, "status": "reused"}
    newest = max(_mtimes(run_dir, step.outputs))
    return {"step": step.output_name, "label": step.label, "status": "reused", "started": None,
            "finished": _iso(newest), "seconds": None, "commit": None}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def default_command(params_path, force: bool, runs_dir, only, publish: bool) -> str:
    """The ``hybridlib run`` command line that ``run_study``'s arguments stand for."""
    words = ["hybridlib", "run", str(params_path), *(["--force"] if force else []),
             *([] if str(runs_dir) == "runs" else ["--runs-dir", str(runs_dir)]), *(["--publish"] if publish else [])]
    return shlex.join(words) + (f"  # only {', '.join(only)}" if only else "")


def run_study(params_path, force: bool = False, runs_dir="runs", only: Optional[Sequence[str]] = None,
              publish: bool = False, notebooks_dir: Path = NOTEBOOKS_DIR, results_dir: Path = RESULTS_DIR,
              command: Optional[str] = None, started: Optional[float] = None) -> Path:
    """Validate the parameter file, then execute the study's notebooks into ``<runs_dir>/<run_name>/``.

    ``only``: notebook names to run (others are left alone); ``publish``: then write
    ``<results_dir>/<run_name>/`` (``hybridlib.publish.publish_run``); ``notebooks_dir``: where the
    notebooks are (tests); ``command``: the command line for ``run.json`` (default: rebuilt from the
    arguments); ``started``: when the command started (epoch seconds; default: now), so that the wall
    time covers the whole command. Raises ``ParamsError`` before any work, ``StepFailed`` at the first
    failing notebook.
    """
    started = time.time() if started is None else started
    from .publish import git_state

    params = load_params(params_path)
    notebooks_dir = Path(notebooks_dir)
    steps = study_steps(params, publish)
    missing = sorted({s.notebook for s in steps if not (notebooks_dir / f"{s.notebook}.ipynb").is_file()})
    if missing:
        raise HybridlibError(f"{notebooks_dir}: missing notebook(s) {', '.join(missing)}")
    run_dir = prepare_run_dir(params, Path(runs_dir), force)
    git, history, records = git_state(REPO_DIR), _step_history(run_dir), []
    selected = [s for s in steps if not only or s.notebook in only]
    log.info("study %s: %d steps into %s", params.run_name, len(selected), run_dir)
    for number, step in enumerate(selected, 1):
        head = f"[{number}/{len(selected)}] {step.notebook}: {step.label}"
        if not force and is_done(step, steps, run_dir):
            log.info("%s: done, skipped (--force re-runs it)", head)
            records.append(reused_record(step, run_dir, history))
            continue
        log.info("%s ...", head)
        step_started = time.time()
        execute_step(step, run_dir, (run_dir / "params.yaml").resolve(), notebooks_dir)
        seconds = time.time() - step_started
        log.info("%s: finished in %.0f s", head, seconds)
        history[step.output_name] = {"step": step.output_name, "label": step.label, "status": "ran",
                                     "started": _iso(step_started), "finished": _iso(step_started + seconds),
                                     "seconds": round(seconds, 1), "commit": git["commit"], "dirty": git["dirty"]}
        write_json(history, run_dir / STEPS_FILE)
        records.append(history[step.output_name])
    if publish:
        from .publish import publish_run, run_record

        command = command or default_command(params_path, force, runs_dir, only, publish)
        record = run_record(params, command, git, started, records, only)
        log.info("published to %s", publish_run(run_dir, params, Path(results_dir) / params.run_name, record))
    log.info("study %s finished in %.1f min: %s", params.run_name, (time.time() - started) / 60, run_dir)
    return run_dir
