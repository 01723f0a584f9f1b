"""Notebooks 02 and 03: train and evaluate each model, collect the metrics of a study.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

import pandas as pd

from ..config import DATASET_LANGUAGES, StudyParams
from ..constants import DAPT_FINE_TUNING, ZERO_SHOT
from ..io import write_table
from .run import MIRACL_LANGUAGES, StudyError, expected_tags, load_eval_data, model_tag

log = logging.getLogger(__name__)


def _miracl_metrics(encoder, params: StudyParams, strategy: str, seed: int, cache) -> tuple:
    """MIRACL dev of each evaluation language (``evaluate.evaluate_beir``) and their macro average
    (``evaluate.aggregate`` of the languages' per-query tables)."""
    from ..evaluate import aggregate, evaluate_beir

    languages = [l for l in (params.eval_languages or MIRACL_LANGUAGES) if l in MIRACL_LANGUAGES]
    per_query = pd.concat([evaluate_beir(encoder, f"miracl:{lang}", model=encoder.name, strategy=strategy, seed=seed,
                                         language=lang, per_query=True, cache=cache,
                                         index_type=params.beir_index)[1] for lang in languages],
                          ignore_index=True)
    return aggregate(per_query), per_query


def evaluate_encoder(encoder, params: StudyParams, strategy: str, seed: int,
                     cache=False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and per-query values of ``encoder`` on every ``eval_datasets`` (``evaluate.evaluate_lareqa``).

    The rows carry the encoder's own ``name`` (for the default model, a label saying it is a
    dequantized 4-bit copy). ``cache``: the embedding cache of ``evaluate.encode_texts``.
    """
    from ..evaluate import evaluate_lareqa

    tables, per_query = [], []
    for dataset in params.eval_datasets:
        if dataset in DATASET_LANGUAGES:
            metrics, queries = evaluate_lareqa(encoder, load_eval_data(params, dataset), model=encoder.name,
                                               strategy=strategy, seed=seed, per_query=True, cache=cache,
                                               candidate_context=params.candidate_context)
        else:
            metrics, queries = _miracl_metrics(encoder, params, strategy, seed, cache)
        tables.append(metrics)
        per_query.append(queries)
    return pd.concat(tables, ignore_index=True), _plain(pd.concat(per_query, ignore_index=True))


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as strings, so that parts of different models concatenate cleanly."""
    return frame.astype({c: str for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)})


def _save_part(run_dir: Path, tag: str, metrics: pd.DataFrame, per_query: pd.DataFrame) -> None:
    parts = run_dir / "metrics" / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    write_table(per_query, parts / f"{tag}.per_query.parquet")
    write_table(metrics, parts / f"{tag}.csv")  # written last: it marks the model done


def train_and_evaluate(params: StudyParams, run_dir: Path, strategy: str, seed: int,
                       progress: bool = True) -> pd.DataFrame:
    """Fine-tune with one strategy and seed, evaluate at once, keep the weights only with ``keep_models``.

    ``strategy`` is the name of a training run: a trained strategy or a variant's name (its
    settings applied, see ``StudyParams.training_runs``); it labels the result rows. Training
    happens in ``training/<tag>/`` (``train.train``: checkpoints there let a killed run resume
    when called again); the logs are copied to ``train_log/``, the metrics written to
    ``metrics/parts/<tag>.csv``, then the training folder is deleted (with ``keep_models`` the
    final model moves to ``models/<tag>/`` first). Disk use: one model at a time.

    The DAPT strategies (``constants.DAPT_FINE_TUNING``) first get the DAPT encoder of ``seed``
    (``dapt.pretrain_for_study``: pre-trained once in ``dapt/seed<k>/``, shared by both). ``dapt``
    evaluates it as it is (its masked-LM log is its ``train_log``; ``keep_models`` copies it to
    ``models/<tag>/``); ``dapt+hybrid`` fine-tunes it with hybrid batches and the study's
    settings, as above. Once every DAPT strategy of the study has its metrics for ``seed``, the
    DAPT encoder is deleted (its logs stay).
    """
    batches, run_params = params.for_run(strategy)
    if batches not in DAPT_FINE_TUNING:
        return _fine_tune_and_evaluate(params, run_params, run_dir, strategy, batches, seed, progress)
    from ..dapt import pretrain_for_study

    dapt = pretrain_for_study(params, run_dir, seed, progress=progress)
    if DAPT_FINE_TUNING[batches] is None:
        metrics = _evaluate_dapt(params, run_dir, strategy, seed, dapt)
    else:
        from_dapt = run_params.model_copy(update={"model": str(dapt.model_dir)})
        metrics = _fine_tune_and_evaluate(params, from_dapt, run_dir, strategy, DAPT_FINE_TUNING[batches], seed,
                                          progress)
    _release_dapt(params, run_dir, seed, dapt.model_dir)
    return metrics


def _fine_tune_and_evaluate(params: StudyParams, run_params: StudyParams, run_dir: Path, label: str, batches: str,
                            seed: int, progress: bool) -> pd.DataFrame:
    """``train_and_evaluate`` of one fine-tuning run: ``run_params`` train, ``params`` evaluate."""
    from ..train import train

    tag = model_tag(label, seed)
    work = run_dir / "training" / tag
    result = train(run_params, strategy=batches, seed=seed, out_dir=work, progress=progress)
    (run_dir / "train_log").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.log_path, run_dir / "train_log" / f"{tag}.csv")
    val_log = Path(result.log_path).with_name("val_log.csv")
    if val_log.exists():
        shutil.copyfile(val_log, run_dir / "train_log" / f"{tag}.val.csv")
    metrics = _evaluate_saved(params, run_dir, label, seed, result.model_dir)
    if params.keep_models:
        target = run_dir / "models" / tag
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(result.model_dir), target)
    shutil.rmtree(work, ignore_errors=True)
    if not any(work.parent.iterdir()):
        work.parent.rmdir()
    return metrics


def _evaluate_saved(params: StudyParams, run_dir: Path, label: str, seed: int, model_dir: Path) -> pd.DataFrame:
    """Evaluate the encoder saved in ``model_dir`` as ``label``/``seed``; write its part and encoder record."""
    from ..models import DualEncoder
    from ..search import write_encoder_record

    tag = model_tag(label, seed)
    encoder = DualEncoder.from_params(params, name_or_path=str(model_dir))
    # the pools' embeddings stay in the run folder (a third of XQuAD-R: ~13 MB a model), so that
    # notebook 06 and `hybridlib search` can explore a model whose weights are not kept
    metrics, per_query = evaluate_encoder(encoder, params, label, seed, cache=run_dir / "embeddings")
    write_encoder_record(encoder, run_dir / "embeddings" / f"{tag}.json")
    _save_part(run_dir, tag, metrics, per_query)
    return metrics


def _evaluate_dapt(params: StudyParams, run_dir: Path, label: str, seed: int, dapt) -> pd.DataFrame:
    """``train_and_evaluate`` of ``dapt``: the DAPT log as the run's log, the DAPT encoder evaluated as it is."""
    tag = model_tag(label, seed)
    (run_dir / "train_log").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dapt.log_path, run_dir / "train_log" / f"{tag}.csv")
    metrics = _evaluate_saved(params, run_dir, label, seed, dapt.model_dir)
    if params.keep_models:
        target = run_dir / "models" / tag
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(dapt.model_dir, target)
    return metrics


def _release_dapt(params: StudyParams, run_dir: Path, seed: int, model_dir: Path) -> None:
    """Delete the DAPT encoder of ``seed`` once every DAPT strategy of the study has its metrics for it."""
    parts = run_dir / "metrics" / "parts"
    if all((parts / f"{model_tag(s, seed)}.csv").is_file() for s in params.dapt_strategies):
        shutil.rmtree(model_dir, ignore_errors=True)


def evaluate_zero_shot(params: StudyParams, run_dir: Path) -> Optional[pd.DataFrame]:
    """Evaluate the model before fine-tuning (strategy ``zero-shot``, seed ``seeds[0]``), if a strategy.

    Its embeddings go to the shared cache (``evaluate.encode_texts``), so re-running costs a
    model load only. Returns None (and says so) when ``zero-shot`` is not among the strategies.
    """
    from ..models import DualEncoder

    if ZERO_SHOT not in params.strategies:
        log.info("zero-shot is not among the strategies: not evaluated")
        return None
    encoder = DualEncoder.from_params(params)
    metrics, per_query = evaluate_encoder(encoder, params, ZERO_SHOT, params.seeds[0], cache=True)
    _save_part(run_dir, ZERO_SHOT, metrics, per_query)
    return metrics


def collect_metrics(params: StudyParams, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Join the parts of this study's models into ``metrics/metrics.csv`` and ``metrics/per_query.parquet``.

    Only the parts ``expected_tags(params)`` names are used (a run folder may hold others from
    earlier parameters). Returns ``(metrics, per_query, missing)``; ``missing`` lists the
    expected parts not there yet (e.g. a strategy whose 02_train has not run).
    """
    parts_dir = run_dir / "metrics" / "parts"
    present = [t for t in expected_tags(params) if (parts_dir / f"{t}.csv").is_file()]
    missing = [t for t in expected_tags(params) if t not in present]
    if missing:
        log.warning("not evaluated yet (run 02_train / hybridlib run for them): %s", ", ".join(missing))
    if not present:
        raise StudyError(f"no metrics in {parts_dir}: run 02_train (or the zero-shot evaluation of 03) first")
    metrics = pd.concat([pd.read_csv(parts_dir / f"{t}.csv") for t in present], ignore_index=True)
    per_query = pd.concat([pd.read_parquet(parts_dir / f"{t}.per_query.parquet") for t in present],
                          ignore_index=True)
    write_table(per_query, run_dir / "metrics" / "per_query.parquet")
    write_table(metrics, run_dir / "metrics" / "metrics.csv")
    return metrics, per_query, missing


def setting_counts(metrics: pd.DataFrame) -> pd.DataFrame:
    """How many language pairs each setting has per dataset (multilingual: query languages), for checks."""
    pairs = metrics[metrics["query_lang"] != "all"].drop_duplicates(["eval_dataset", "setting", "query_lang",
                                                                     "pool_lang"])
    counts = pairs.groupby(["eval_dataset", "setting"], sort=False).size().rename("language pairs")
    return counts.reset_index()


def load_metrics(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``metrics/metrics.csv`` and ``metrics/per_query.parquet`` of a run (written by 03_evaluate)."""
    path = run_dir / "metrics" / "metrics.csv"
    if not path.is_file():
        raise StudyError(f"{path}: missing; run 03_evaluate first")
    return pd.read_csv(path), pd.read_parquet(run_dir / "metrics" / "per_query.parquet")


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the macro averages (``evaluate.summarize``), one row per (model, dataset, strategy)."""
    from ..evaluate import summarize
    from ..plots import ordered_strategies

    per_seed = summarize(metrics).reset_index()
    keys = ["model", "eval_dataset", "strategy"]
    table = per_seed.groupby(keys, sort=False).mean(numeric_only=True).drop(columns="seed")
    table.insert(0, "seeds", per_seed.groupby(keys, sort=False)["seed"].nunique())
    order = {s: i for i, s in enumerate(ordered_strategies(per_seed["strategy"].unique()))}
    return table.sort_index(key=lambda index: index.map(order) if index.name == "strategy" else index)
