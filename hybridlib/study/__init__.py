"""The steps of a study on a run folder; each notebook calls a few of these.

- ``run``: the run folder, its parameters, tags, languages, evaluation data and question clusters;
- ``prepare`` (01), ``evaluation`` (02, 03: train, evaluate, collect), ``logs`` (training logs),
  ``analysis`` (04, 05: language bias, gains per language, intervals, comparisons, claims, alpha sweep).

Run folder (``runs/<run_name>/``, see docs/design.md):
``params.yaml`` (written by ``hybridlib run``), ``data/prepared.json`` (01), ``train_log/<tag>.csv``
and ``<tag>.val.csv`` (02), ``models/<tag>/`` (02, only with ``keep_models``),
``metrics/parts/<tag>.csv`` + ``<tag>.per_query.parquet`` (02 and 03, one per model),
``metrics/metrics.csv`` + ``per_query.parquet`` (03), ``metrics/rank_distance.csv`` and ``language_gains.csv`` (04),
``metrics/intervals.csv``, ``metrics/significance.csv``, ``metrics/claims.csv``,
``metrics/pair_groups.csv``, ``report.md`` (05), ``figures/`` (PNG + PDF); ``training/<tag>/`` only
while a model trains (checkpoints to resume); ``dapt/seed<k>/`` with a DAPT strategy (its log,
held-out loss and, until both DAPT strategies have used it, the encoder); ``steps.json``
(``hybridlib run``: when and at which commit each step ran).
``<tag>`` is ``<strategy>-seed<k>`` (a strategy or a variant's name), or ``zero-shot``.
"""
from .analysis import (
    alpha_sweep_figures,
    claims,
    gain_pairs,
    hybrid_alphas,
    intervals,
    language_gains,
    load_language_gains,
    load_pair_groups,
    load_seen_unseen,
    pair_groups,
    rank_distance_table,
    rank_distance_wide,
    seen_unseen,
    significance,
)
from .evaluation import (
    collect_metrics,
    evaluate_encoder,
    evaluate_zero_shot,
    load_metrics,
    setting_counts,
    summary_table,
    train_and_evaluate,
)
from .logs import read_dapt_evals, read_dapt_logs, read_train_log, read_train_logs, read_val_log, read_val_logs
from .prepare import describe_model, prepare
from .run import (
    DAPT_TRAINING_KEYS,
    MIRACL_LANGUAGES,
    SIGNIFICANCE_METRICS,
    TRAINING_KEYS,
    StudyError,
    eval_languages,
    expected_tags,
    lareqa_datasets,
    load_eval_data,
    load_run,
    model_tag,
    params_table,
    question_clusters,
    train_languages,
    training_labels,
    training_table,
)

__all__ = [
    "DAPT_TRAINING_KEYS", "MIRACL_LANGUAGES", "SIGNIFICANCE_METRICS", "StudyError", "TRAINING_KEYS",
    "alpha_sweep_figures", "claims", "collect_metrics", "describe_model", "eval_languages", "evaluate_encoder",
    "evaluate_zero_shot", "expected_tags", "gain_pairs", "hybrid_alphas", "intervals", "language_gains",
    "lareqa_datasets", "load_eval_data", "load_language_gains", "load_metrics", "load_pair_groups", "load_run",
    "load_seen_unseen", "model_tag", "pair_groups", "params_table", "prepare", "question_clusters",
    "rank_distance_table", "rank_distance_wide", "read_dapt_evals", "read_dapt_logs", "read_train_log",
    "read_train_logs", "read_val_log", "read_val_logs", "seen_unseen", "setting_counts", "significance",
    "summary_table", "train_and_evaluate", "train_languages", "training_labels", "training_table",
]
