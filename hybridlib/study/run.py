"""The run folder and its parameters: tags, the study's languages, evaluation data and clusters.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..config import DAPT_KEYS, DATASET_LANGUAGES, StudyParams, load_params
from ..constants import DAPT_FINE_TUNING, OWN_LANGUAGE, RANK_DISTANCE, RANK_DISTANCE_FRACTION, ZERO_SHOT
from ..data import LaReQA, load_lareqa, paragraph_clusters, sample_paragraphs
from ..errors import HybridlibError

log = logging.getLogger(__name__)

# MIRACL dev languages (Zhang et al. 2023): monolingual retrieval only.
MIRACL_LANGUAGES = ("ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te",
                    "th", "yo", "zh")
SIGNIFICANCE_METRICS = ("mAP", RANK_DISTANCE, RANK_DISTANCE_FRACTION, OWN_LANGUAGE)
# The parameters that shape a training run (shown by 02_train).
TRAINING_KEYS = ("model", "train_dataset", "train_languages", "train_max_ids", "validation_ids", "alpha",
                 "batch_size", "hard_negatives", "learning_rate", "weight_decay", "warmup_ratio", "temperature",
                 "max_steps", "eval_every", "early_stopping_patience", "freeze_embeddings", "precision", "device")
# The parameters of domain-adaptive pre-training (the strategies dapt and dapt+hybrid).
DAPT_TRAINING_KEYS = ("model", "train_dataset", "train_languages", "train_max_ids", "validation_ids",
                      *(f"dapt_{name}" for name in DAPT_KEYS), "precision", "device")


class StudyError(HybridlibError):
    """A step of the study cannot run on this run folder (e.g. an earlier step has not run)."""


def model_tag(strategy: str, seed: int) -> str:
    """Name of one model's results in the run folder: ``<strategy>-seed<k>``; ``zero-shot`` for the untrained model."""
    return ZERO_SHOT if strategy == ZERO_SHOT else f"{strategy}-seed{seed}"


def training_labels(params: StudyParams) -> list[str]:
    """The names of the study's training runs: the trained strategies, then the variants (``params.variants``)."""
    return [label for label, _, _ in params.training_runs()]


def expected_tags(params: StudyParams) -> list[str]:
    """The result parts a complete run has: ``zero-shot`` (if a strategy) and every training run x seed."""
    tags = [ZERO_SHOT] if ZERO_SHOT in params.strategies else []
    return tags + [model_tag(label, k) for label in training_labels(params) for k in params.seeds]


def load_run(params_path, run_dir) -> tuple[StudyParams, Path]:
    """The validated parameters of a run and its folder (created with its sub-folders if missing).

    Called first by every notebook. Progress bars in notebooks are tqdm's text bars: unlike
    widgets they survive in the executed copies papermill saves, so tqdm's warning that
    ipywidgets is missing is silenced.
    """
    warnings.filterwarnings("ignore", message="IProgress not found")
    params = load_params(params_path)
    run_dir = Path(run_dir)
    for sub in ("metrics/parts", "train_log", "figures", "data"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return params, run_dir


def params_table(params: StudyParams, keys: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The parameters in force as a two-column table (all of them, or ``keys``), for display."""
    values = params.model_dump()
    keys = list(keys) if keys is not None else list(values)
    unknown = [k for k in keys if k not in values]
    if unknown:
        raise StudyError(f"unknown parameter(s) {', '.join(unknown)}")
    return pd.DataFrame({"parameter": keys, "value": [_show(values[k]) for k in keys]}).set_index("parameter")


def training_table(params: StudyParams, label: str) -> pd.DataFrame:
    """The settings of one training run (a strategy or a variant): its batch strategy and ``TRAINING_KEYS``;
    for a DAPT strategy, the ``DAPT_TRAINING_KEYS`` first (``dapt``: only those, nothing is fine-tuned)."""
    strategy, run_params = params.for_run(label)
    if strategy not in DAPT_FINE_TUNING:
        tables, batches = [params_table(run_params, TRAINING_KEYS)], strategy
    else:
        batches = DAPT_FINE_TUNING[strategy]
        tables = [params_table(run_params, DAPT_TRAINING_KEYS)]
        if batches is None:
            batches = "none: DAPT, then zero-shot evaluation"
        else:
            tables.append(params_table(run_params, [k for k in TRAINING_KEYS if k not in DAPT_TRAINING_KEYS]))
    head = pd.DataFrame({"value": [label, batches]}, index=pd.Index(["training run", "batches"], name="parameter"))
    return pd.concat([head, *tables])


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "None" if value is None else str(value)


def train_languages(params: StudyParams) -> list[str]:
    """The languages the models are trained on: ``train_languages`` or every language of the LAReQA sources."""
    if params.train_languages:
        return list(params.train_languages)
    return sorted({l for s in params.train_sources for l in DATASET_LANGUAGES.get(s, ())})


def eval_languages(params: StudyParams, dataset: str) -> list[str]:
    """The evaluation languages of a dataset: ``eval_languages`` that it has, or all of them."""
    langs = DATASET_LANGUAGES[dataset]
    return [l for l in langs if l in params.eval_languages] if params.eval_languages else list(langs)


def load_eval_data(params: StudyParams, dataset: str) -> LaReQA:
    """The evaluation pools of one LAReQA dataset as the parameters restrict them: its
    ``eval_languages``, and with ``eval_max_ids`` a seeded random sample of whole paragraphs
    (``data.sample_paragraphs``, seed ``eval_sample_seed``)."""
    data = load_lareqa(dataset, eval_languages(params, dataset))
    return sample_paragraphs(data, params.eval_max_ids, params.eval_sample_seed) if params.eval_max_ids else data


def question_clusters(params: StudyParams, per_query: pd.DataFrame) -> pd.Series:
    """Query id -> cluster for the statistics: the paragraph of the answer on LAReQA
    (``data.paragraph_clusters``), each id alone elsewhere (MIRACL)."""
    parts = [paragraph_clusters(load_eval_data(params, d)) for d in lareqa_datasets(params)]
    clusters = pd.concat(parts) if parts else pd.Series(dtype=object, name="paragraph")
    others = pd.unique(per_query.loc[~per_query["query_id"].isin(clusters.index), "query_id"])
    return pd.concat([clusters, pd.Series(others, index=others, dtype=object)]).rename("paragraph")


def lareqa_datasets(params: StudyParams) -> list[str]:
    """The LAReQA evaluation datasets of the study (the ones with cross-lingual and multilingual pools)."""
    return [d for d in params.eval_datasets if d in DATASET_LANGUAGES]
