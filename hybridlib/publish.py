"""Publishing a finished study: ``results/<run_name>/`` in the repository, readable without re-running.

``hybridlib run PARAMS --publish`` ends with ``publish_run``, which writes (issue 17, item 3):

- ``report.md``: the run's report, with a closing section on this run (command, commit, wall time,
  machine) and links to every file below; its links resolve from the folder;
- ``params.yaml``: the resolved parameters; ``run.json``: ``run_record``'s fields (command, commit
  and whether the tree was dirty, start and end, wall time, machine, steps run or reused);
- ``figures/``: the figures (PNG and PDF), the one place they are published;
- ``metrics/``: the macro tables as CSV, every column (``MACRO_TABLES``: intervals, paired tests,
  claims, seen / unseen languages, pair groups, rank distance), the comparison with the paper and
  each run's macro averages (``runs.csv``); per-query tables stay out;
- ``latex/``: the report's tables as LaTeX (``pandas.io.formats.style.Styler.to_latex``);
- ``notebooks/``: the executed notebooks with their outputs, each as ``.ipynb`` or as HTML
  (nbconvert), whichever is smaller, progress-bar redraws collapsed.

The folder should stay under ``SIZE_BUDGET`` bytes (a warning says when it does not).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

import pandas as pd

from .config import StudyParams, dump_params
from .errors import HybridlibError
from .io import write_json, write_table, write_text

log = logging.getLogger(__name__)

SIZE_BUDGET = 5 * 2 ** 20  # bytes per published study (issue 17: "aim <= 5 MB")
# Tidy CSVs of the run folder's metrics/ copied as they are (names are the run folder's).
MACRO_TABLES = ("intervals.csv", "significance.csv", "claims.csv", "seen_unseen.csv", "pair_groups.csv",
                "language_gains.csv", "rank_distance.csv")
# Symbols of the report's tables that pdflatex does not know in text mode.
_LATEX_SYMBOLS = {"−": "$-$", "↔": r"$\leftrightarrow$", "→": r"$\to$", "×": r"$\times$", "≤": r"$\leq$",
                  "≥": r"$\geq$", "α": r"$\alpha$"}


class PublishError(HybridlibError):
    """The run folder cannot be published (e.g. its report has not been written)."""


# ----------------------------------------------------------------------------- provenance
def git_state(repo_dir: Path) -> dict:
    """``{commit, dirty, changed}`` of the git checkout at ``repo_dir``: HEAD, whether tracked files differ
    from it (the published ``results/`` left aside), and which; ``None`` values outside a git checkout."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, check=True,
                              timeout=30).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed": []}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def machine(params: StudyParams) -> dict:
    """The machine a study ran on: CPU name and class (``models.cpu_class``),
    cores, torch version and threads, and the device and precision ``auto`` resolves to here
    (``models.resolve_device`` / ``resolve_precision``: what every notebook of the run used)."""
    import torch

    from .models import cpu_class, cpu_name, resolve_device, resolve_precision

    device = resolve_device(params.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_name(),
            "cpu_class": cpu_class(),
            "cores": cores, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": str(device), "precision": resolve_precision(params.precision, device),
            "precision_parameter": params.precision, "python": platform.python_version(),
            "platform": platform.platform()}


def run_record(params: StudyParams, command: str, git: dict, started: float, steps: list[dict],
               only: Optional[list] = None) -> dict:
    """The fields of ``run.json`` but the end: command, git state (at the start), start (ISO 8601, UTC, and
    ``started_unix``), the machine, the steps (each ``ran`` in this command or ``reused`` from an earlier
    one, with its times and commit when known), ``resumed`` (some step reused), the runs per strategy
    and the evaluation's sample. ``finish`` adds the end and the wall time."""
    return {"run_name": params.run_name, "command": command, "git": git,
            "started": _iso(started), "started_unix": round(started, 3), "finished": None, "wall_time_s": None,
            "resumed": any(step["status"] == "reused" for step in steps), "only": list(only) if only else None,
            "steps": steps, "machine": machine(params),
            "runs_per_strategy": len(params.seeds), "seeds": list(params.seeds),
            "evaluation": {"datasets": list(params.eval_datasets), "eval_max_ids": params.eval_max_ids,
                           "eval_sample_seed": params.eval_sample_seed}}


def finish(record: dict, finished: float) -> dict:
    """``record`` with its end (``finished``, epoch seconds) and ``wall_time_s`` since ``started_unix``."""
    return {**record, "finished": _iso(finished), "wall_time_s": round(finished - record["started_unix"], 1)}


def _iso(epoch: Optional[float]) -> Optional[str]:
    return None if epoch is None else pd.Timestamp(epoch, unit="s", tz="UTC").isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- tables
def latex_table(frame: pd.DataFrame, styler=None) -> str:
    """``frame`` (or its ``styler``, e.g. ``report.style_table``'s bold best values) as a LaTeX tabular.

    Cells and headers are escaped for LaTeX (``Styler.format(escape="latex")``), bold styles become
    ``\\bfseries``, and the few non-ASCII symbols of the tables (−, ↔, →) become math, so pdflatex
    reads it with the ``booktabs`` package.
    """
    styler = styler if styler is not None else frame.style.hide(axis="index").format(precision=3, na_rep="")
    text_columns = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    styler = styler.format(escape="latex", na_rep="", subset=text_columns) if text_columns else styler
    latex = styler.format_index(escape="latex", axis=1).to_latex(hrules=True, convert_css=True)
    for symbol, command in _LATEX_SYMBOLS.items():
        latex = latex.replace(symbol, command)
    return latex


def display_tables(run_dir: Path, metrics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The report's tables by name, rebuilt from the run folder's CSVs (those it has) and ``metrics``
    (``metrics/metrics.csv``)."""
    from . import report
    from .gains import language_gain_table
    from .study.analysis import load_language_gains, load_pair_groups, load_seen_unseen

    builders = {"intervals": report.interval_table, "significance": report.significance_table,
                "claims": report.claims_table}
    tables = {"comparison": report.comparison_table(metrics)}
    for name, build in builders.items():
        path = Path(run_dir) / "metrics" / f"{name}.csv"
        frame = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        tables[name] = build(frame) if not frame.empty else frame
    tables["seen_unseen"] = report.seen_unseen_table(load_seen_unseen(run_dir))
    tables["pair_groups"] = report.pair_group_table(load_pair_groups(run_dir))
    tables["language_gains"] = language_gain_table(load_language_gains(run_dir))
    return {name: table for name, table in tables.items() if not table.empty}


def publish_tables(run_dir: Path, target: Path) -> list[Path]:
    """The macro tables: tidy CSVs into ``target/metrics/`` (``MACRO_TABLES``, the comparison with the
    paper, each run's macro averages as ``runs.csv``), the report's tables as ``target/latex/*.tex``."""
    from . import report

    written = [_copy(Path(run_dir) / "metrics" / name, target / "metrics" / name) for name in MACRO_TABLES
               if (Path(run_dir) / "metrics" / name).is_file()]
    metrics = pd.read_csv(Path(run_dir) / "metrics" / "metrics.csv")
    averaged = metrics[(metrics["query_lang"] == "all") & (metrics["pool_lang"] == "all")]
    written.append(write_table(averaged, target / "metrics" / "runs.csv"))
    for name, table in display_tables(run_dir, metrics).items():
        styler = None
        if name == "comparison":
            written.append(write_table(table, target / "metrics" / "comparison.csv"))
            styler = report.style_table(table, group_by=["eval_dataset", "source"], skip_strategies=["zero-shot"])
        written.append(write_text(latex_table(table, styler), target / "latex" / f"{name}.tex"))
    return written


# ----------------------------------------------------------------------------- notebooks, figures
def compact_notebook(source: Path, target_dir: Path) -> Path:
    """Write the executed notebook ``source`` into ``target_dir`` as ``.ipynb`` or ``.html``, the smaller.

    Stream outputs are coalesced and carriage-return redraws (progress bars) dropped first
    (nbconvert's ``CoalesceStreamsPreprocessor``); the HTML is nbconvert's with images embedded.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    notebook = nbformat.read(source, as_version=4)
    notebook, _ = CoalesceStreamsPreprocessor().preprocess(notebook, {})
    as_ipynb = nbformat.writes(notebook)
    as_html, _ = HTMLExporter(embed_images=True).from_notebook_node(notebook)
    smaller = min([(len(as_ipynb.encode()), ".ipynb", as_ipynb), (len(as_html.encode()), ".html", as_html)])
    return write_text(smaller[2], target_dir / f"{source.stem}{smaller[1]}")


def publish_figures(run_dir: Path, target: Path) -> list[Path]:
    """Copy the run's figures (PNG and PDF) into ``target/figures/``."""
    return [_copy(figure, target / "figures" / figure.name) for figure in sorted(Path(run_dir, "figures").glob("*"))
            if figure.suffix in (".png", ".pdf")]


def _copy(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


# ----------------------------------------------------------------------------- the folder
def published_report(report_text: str, record: dict, files: list[Path], target: Path) -> str:
    """The run's ``report.md`` with two closing sections: how this run was made, and links to the folder's files."""
    git, box = record["git"], record["machine"]
    commit = "an unknown commit" if not git.get("commit") else \
        f"commit `{git['commit'][:7]}`" + (" with uncommitted changes" if git.get("dirty") else "")
    reused = [s["step"] for s in record["steps"] if s["status"] == "reused"]
    how = (f"`{record['command']}` at {commit}, {record['started']} to {record['finished']}: "
           f"{record['wall_time_s'] / 60:.1f} min wall time on {box['cores']} cores of {box['cpu']} "
           f"({box['cpu_class']}), device {box['device']}, precision {box['precision']}, torch {box['torch']}. ")
    how += (f"{len(reused)} of {len(record['steps'])} steps were reused from an earlier command "
            f"(`run.json` says which, and when they ran)." if reused else "Every step ran in this command.")
    links = sorted(f"- [{name}]({name})" for name in (p.relative_to(target).as_posix() for p in files))
    return "\n\n".join([report_text.rstrip(), "## This run", how, "## Files of this folder", "\n".join(links)]) + "\n"


def folder_size(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def publish_run(run_dir, params: StudyParams, target, record: dict) -> Path:
    """Write ``target`` (``results/<run_name>/``) from the finished run folder ``run_dir``; see the module doc.

    ``record``: ``run_record`` output, finished now (``finish``) and written as ``run.json`` with
    ``published_bytes`` (the size of every other file of the folder) added.
    The folder is rebuilt from scratch. Raises ``PublishError`` when the run has no ``report.md``.
    """
    run_dir, target = Path(run_dir), Path(target)
    if not (run_dir / "report.md").is_file():
        raise PublishError(f"{run_dir}: no report.md to publish (the study has not run to its report)")
    if target.exists():
        shutil.rmtree(target)
    files = publish_figures(run_dir, target) + publish_tables(run_dir, target)
    files += [compact_notebook(nb, target / "notebooks") for nb in sorted((run_dir / "notebooks").glob("*.ipynb"))]
    dump_params(params, target / "params.yaml")
    files += [target / "params.yaml", target / "run.json"]
    record = finish(record, time.time())  # the wall time covers the publishing too, but for two small writes
    text = published_report((run_dir / "report.md").read_text(encoding="utf-8"), record, files, target)
    write_text(text, target / "report.md")
    size = folder_size(target)
    write_json({**record, "published_bytes": size}, target / "run.json")
    if size > SIZE_BUDGET:
        log.warning("%s: %.1f MB published, more than the %.0f MB aimed at", target, size / 2**20, SIZE_BUDGET / 2**20)
    log.info("published %s (%d files, %.1f MB)", target, len(files) + 1, size / 2**20)
    return target


def read_record(target) -> dict:
    """The ``run.json`` of a published study."""
    return json.loads((Path(target) / "run.json").read_text(encoding="utf-8"))
