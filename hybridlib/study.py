"""The steps of a study on a run folder; each notebook calls one or two of these.

Run folder (``runs/<run_name>/``, see docs/design.md): ``params.yaml``, ``data/prepared.json``,
``models/<strategy>-seed<k>/`` (kept only with ``keep_models``), ``train_log/<tag>.csv`` and
``<tag>.val.csv``, ``metrics/parts/<tag>.csv`` (+ ``.per_query.parquet``), ``metrics/metrics.csv``,
``metrics/per_query.parquet``, ``figures/``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from .config import DATASET_LANGUAGES, StudyParams, load_params
from .data import LaReQA, load_lareqa

ZERO_SHOT = "zero-shot"


def model_tag(strategy: str, seed: int) -> str:
    """Name of a fine-tuned model in the run folder: ``<strategy>-seed<k>``."""
    return f"{strategy}-seed{seed}"


def load_run(params_path, run_dir) -> tuple[StudyParams, Path]:
    """The validated parameters of a run and its folder (created if missing)."""
    run_dir = Path(run_dir)
    for sub in ("metrics/parts", "train_log", "figures", "models", "data"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return load_params(params_path), run_dir


def eval_languages(params: StudyParams, dataset: str) -> list[str]:
    """The evaluation languages of a dataset: ``eval_languages`` that it has, or all of them."""
    langs = DATASET_LANGUAGES[dataset]
    return [l for l in langs if l in params.eval_languages] if params.eval_languages else list(langs)


def load_eval_data(params: StudyParams, dataset: str) -> LaReQA:
    """The evaluation pools of one dataset as the parameters restrict them."""
    return load_lareqa(dataset, eval_languages(params, dataset), max_ids=params.eval_max_ids)


def write_csv_atomically(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV through a temporary file, so a killed run never leaves half a table."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _write_parquet_atomically(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def prepare(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """Fetch and verify data and model; return (and record) the sizes of training and evaluation data."""
    from .models import resolve_model
    from .sources import load_pairs

    model_path = resolve_model(params.model)
    rows = []
    for source in params.train_sources:
        pairs = load_pairs(source, params.train_languages, params.train_max_ids, params.hard_negatives)
        for lang, group in pairs.groupby("lang"):
            rows.append(("train", source, lang, group["id"].nunique(), None))
    for dataset in params.eval_datasets:
        if dataset not in DATASET_LANGUAGES:
            continue  # BEIR-style datasets (MIRACL) load at evaluation time
        data = load_eval_data(params, dataset)
        counts = data.candidates.groupby("lang").size()
        for lang, group in data.questions.groupby("lang"):
            rows.append(("evaluate", dataset, lang, len(group), int(counts.get(lang, 0))))
    summary = pd.DataFrame(rows, columns=["role", "dataset", "lang", "questions", "candidates"])
    record = {"model": str(params.model), "model_path": str(model_path), "sizes": summary.to_dict("records")}
    (run_dir / "data" / "prepared.json").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    return summary


def _evaluate_encoder(encoder, params: StudyParams, strategy: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from .evaluate import evaluate_lareqa

    tables, per_query = [], []
    for dataset in params.eval_datasets:
        if dataset not in DATASET_LANGUAGES:
            continue
        metrics, queries = evaluate_lareqa(encoder, load_eval_data(params, dataset), model=encoder.name,
                                           strategy=strategy, seed=seed, per_query=True)
        tables.append(metrics)
        per_query.append(queries)
    return pd.concat(tables, ignore_index=True), pd.concat(per_query, ignore_index=True)


def _save_part(run_dir: Path, tag: str, metrics: pd.DataFrame, per_query: pd.DataFrame) -> None:
    parts = run_dir / "metrics" / "parts"
    _write_parquet_atomically(per_query, parts / f"{tag}.per_query.parquet")
    write_csv_atomically(metrics, parts / f"{tag}.csv")  # written last: it marks the step done


def train_and_evaluate(params: StudyParams, run_dir: Path, strategy: str, seed: int) -> pd.DataFrame:
    """Fine-tune with one strategy and seed, evaluate at once, drop the weights unless ``keep_models``.

    Evaluating right after training keeps the disk use of a study to one model at a time.
    A crashed run resumes from its last checkpoint when called again.
    """
    from .models import DualEncoder
    from .train import train

    tag = model_tag(strategy, seed)
    out_dir = run_dir / "models" / tag
    result = train(params, strategy=strategy, seed=seed, out_dir=out_dir)
    shutil.copyfile(result.log_path, run_dir / "train_log" / f"{tag}.csv")
    val_log = Path(result.log_path).with_name("val_log.csv")
    if val_log.exists():
        shutil.copyfile(val_log, run_dir / "train_log" / f"{tag}.val.csv")
    encoder = DualEncoder(str(result.model_dir), device=params.device, precision=params.precision)
    encoder.name = f"{params.model}"
    metrics, per_query = _evaluate_encoder(encoder, params, strategy, seed)
    _save_part(run_dir, tag, metrics, per_query)
    if not params.keep_models:
        shutil.rmtree(out_dir, ignore_errors=True)
    return metrics


def evaluate_zero_shot(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """Evaluate the model before fine-tuning (strategy ``zero-shot``), once per run."""
    from .models import DualEncoder

    part = run_dir / "metrics" / "parts" / f"{ZERO_SHOT}.csv"
    if part.exists():
        return pd.read_csv(part)
    encoder = DualEncoder.from_params(params)
    encoder.name = f"{params.model}"
    metrics, per_query = _evaluate_encoder(encoder, params, ZERO_SHOT, params.seeds[0])
    _save_part(run_dir, ZERO_SHOT, metrics, per_query)
    return metrics


def collect_metrics(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the per-model parts into ``metrics/metrics.csv`` and ``metrics/per_query.parquet``."""
    parts = sorted((run_dir / "metrics" / "parts").glob("*.csv"))
    if not parts:
        raise FileNotFoundError(f"no metrics in {run_dir / 'metrics' / 'parts'}: run 02_train / 03_evaluate first")
    metrics = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    per_query = pd.concat([pd.read_parquet(p.with_suffix(".per_query.parquet")) for p in parts], ignore_index=True)
    _write_parquet_atomically(per_query, run_dir / "metrics" / "per_query.parquet")
    write_csv_atomically(metrics, run_dir / "metrics" / "metrics.csv")
    return metrics, per_query


def read_train_logs(run_dir: Path) -> pd.DataFrame:
    """Every training log of the run in one table, with ``strategy`` and ``seed`` columns."""
    frames = []
    for path in sorted((run_dir / "train_log").glob("*-seed*.csv")):
        if path.name.endswith(".val.csv"):
            continue
        strategy, seed = path.stem.rsplit("-seed", 1)
        frames.append(pd.read_csv(path).assign(strategy=strategy, seed=int(seed)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_val_logs(run_dir: Path) -> pd.DataFrame:
    """Every validation log of the run in one table, with ``strategy`` and ``seed`` columns."""
    frames = []
    for path in sorted((run_dir / "train_log").glob("*.val.csv")):
        strategy, seed = path.name.removesuffix(".val.csv").rsplit("-seed", 1)
        frames.append(pd.read_csv(path).assign(strategy=strategy, seed=int(seed)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
