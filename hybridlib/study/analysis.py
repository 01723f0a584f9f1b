"""Notebooks 04 and 05: language bias, intervals, paired comparisons, the paper's claims, the alpha sweep,
cross-lingual mAP by language pair group (seen / unseen in training), each strategy's gain per query language.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import StudyParams
from ..constants import CROSS, DAPT_FINE_TUNING, ZERO_SHOT, ordered_strategies
from ..io import write_table
from .logs import read_val_logs
from .run import SIGNIFICANCE_METRICS, StudyError, lareqa_datasets, load_eval_data, question_clusters, train_languages


def rank_distance_table(params: StudyParams, metrics: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Mean rank distance per (dataset, query language, strategy) over seeds; writes ``metrics/rank_distance.csv``.

    Rows: one per query language and an ``all`` row (the macro average the paper reports);
    ``seen`` says whether the query language was trained on. Columns ``eval_dataset, model,
    query_lang, seen, strategy, rank_distance, seed_sd, n_seeds``.
    """
    rows = metrics[(metrics["setting"] == "multilingual") & (metrics["metric"] == "rank_distance")]
    if rows.empty:
        raise StudyError("no rank_distance rows in the metrics (only LAReQA's multilingual pool has them)")
    grouped = rows.groupby(["eval_dataset", "model", "query_lang", "strategy"])["value"]
    table = grouped.agg(rank_distance="mean", seed_sd="std", n_seeds="count").reset_index()
    seen = set(train_languages(params))
    table.insert(3, "seen", [("" if l == "all" else "yes" if l in seen else "no") for l in table["query_lang"]])
    write_table(table, run_dir / "metrics" / "rank_distance.csv")
    return table


def rank_distance_wide(table: pd.DataFrame) -> pd.DataFrame:
    """``rank_distance_table`` as query language (rows, ``all`` last) x strategy (columns), for display."""
    from ..plots import ordered_strategies

    wide = table.pivot_table(index=["eval_dataset", "query_lang", "seen"], columns="strategy",
                             values="rank_distance")
    wide = wide[ordered_strategies(wide.columns)]
    wide.columns.name = None
    return wide.sort_index(level="query_lang", key=lambda i: i.map(lambda l: (l == "all", l))
                           if i.name == "query_lang" else i, sort_remaining=False)


def seen_unseen(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """``stats.unseen_language_split`` of the ``SIGNIFICANCE_METRICS``: languages trained on vs. not, with
    95% intervals over paragraph clusters and runs; writes ``metrics/seen_unseen.csv``
    (``report.seen_unseen_table`` shows it)."""
    from ..stats import unseen_language_split

    rows = per_query[per_query["metric"].isin(SIGNIFICANCE_METRICS)]
    table = unseen_language_split(rows, train_languages(params), clusters=question_clusters(params, rows),
                                  bootstrap_samples=params.bootstrap_samples)
    write_table(table, run_dir / "metrics" / "seen_unseen.csv")
    return table


def _read_metrics_table(run_dir: Path, name: str) -> pd.DataFrame:
    path = Path(run_dir) / "metrics" / name
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def load_seen_unseen(run_dir: Path) -> pd.DataFrame:
    """``metrics/seen_unseen.csv`` written by ``seen_unseen`` (notebook 04), or an empty frame."""
    return _read_metrics_table(run_dir, "seen_unseen.csv")


def pair_groups(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Cross-lingual mAP by language pair group (``stats.languages.pair_group_split``: seen ↔ seen,
    seen ↔ unseen, unseen ↔ unseen in training), with 95% intervals over paragraph clusters and runs;
    writes ``metrics/pair_groups.csv`` (empty without cross-lingual rows; ``report.pair_group_table``
    shows it)."""
    from ..stats import CI_COLUMNS
    from ..stats.languages import pair_group_split

    rows = per_query[(per_query["metric"] == "mAP") & (per_query["setting"] == CROSS)]
    if rows.empty:
        table = pd.DataFrame(columns=[*CI_COLUMNS[:5], "pair_group", *CI_COLUMNS[5:]])
    else:
        table = pair_group_split(rows, train_languages(params), clusters=question_clusters(params, rows),
                                 bootstrap_samples=params.bootstrap_samples)
    write_table(table, run_dir / "metrics" / "pair_groups.csv")
    return table


def load_pair_groups(run_dir: Path) -> pd.DataFrame:
    """``metrics/pair_groups.csv`` written by ``pair_groups`` (notebook 05), or an empty frame."""
    return _read_metrics_table(run_dir, "pair_groups.csv")


def gain_pairs(strategies) -> list[tuple[str, str]]:
    """The comparisons of the per-language table (``language_gains``): every strategy against the
    zero-shot encoder, and each DAPT strategy that fine-tunes against the same fine-tuning without
    DAPT (``dapt+hybrid − hybrid``); only pairs whose two strategies are in ``strategies``."""
    present = ordered_strategies(strategies)
    pairs = [(s, ZERO_SHOT) for s in present if s != ZERO_SHOT and ZERO_SHOT in present]
    return pairs + [(d, base) for d, base in DAPT_FINE_TUNING.items() if base and d in present and base in present]


def language_gains(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Per query language, the mAP difference of each ``gain_pairs`` comparison in each setting, with its
    95% interval over paragraph clusters and runs (``stats.paired_tests`` grouped by ``query_lang``: the
    cross-lingual difference macro-averages the language's pools); ``seen`` says whether the language
    was trained on. Where do the languages with little pre-training text, or none in fine-tuning, gain
    or lose? The p-values are per cell and not adjusted: a map to read, not a family of claims.
    Writes ``metrics/language_gains.csv`` (empty when no pair is present)."""
    from ..stats import TEST_COLUMNS, paired_tests

    rows = per_query[per_query["metric"] == "mAP"]
    pairs = gain_pairs(rows["strategy"].unique())
    if pairs:
        table = paired_tests(rows, pairs, clusters=question_clusters(params, rows),
                             bootstrap_samples=params.bootstrap_samples, by=["query_lang"])
        trained = set(train_languages(params))
        table.insert(5, "seen", ["yes" if lang in trained else "no" for lang in table["query_lang"]])
    else:
        table = pd.DataFrame(columns=[*TEST_COLUMNS[:4], "query_lang", "seen", *TEST_COLUMNS[4:]])
    write_table(table, run_dir / "metrics" / "language_gains.csv")
    return table


def load_language_gains(run_dir: Path) -> pd.DataFrame:
    """``metrics/language_gains.csv`` written by ``language_gains`` (notebook 04), or an empty frame."""
    return _read_metrics_table(run_dir, "language_gains.csv")


def intervals(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """95% bootstrap intervals (``stats.bootstrap_ci``) of the ``SIGNIFICANCE_METRICS``, resampling
    paragraph clusters and training runs; writes ``metrics/intervals.csv``."""
    from ..stats import bootstrap_ci

    rows = per_query[per_query["metric"].isin(SIGNIFICANCE_METRICS)]
    table = bootstrap_ci(rows, clusters=question_clusters(params, rows), bootstrap_samples=params.bootstrap_samples)
    write_table(table, run_dir / "metrics" / "intervals.csv")
    return table


def significance(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Paired comparisons of every pair of strategies (``stats.paired_tests``, paragraph clusters shared,
    each side's runs resampled); writes ``metrics/significance.csv``."""
    from ..stats import TEST_COLUMNS, paired_tests

    rows = per_query[per_query["metric"].isin(SIGNIFICANCE_METRICS)]
    if rows["strategy"].nunique() < 2:
        table = pd.DataFrame(columns=TEST_COLUMNS)
    else:
        table = paired_tests(rows, clusters=question_clusters(params, rows), bootstrap_samples=params.bootstrap_samples)
    write_table(table, run_dir / "metrics" / "significance.csv")
    return table


def claims(params: StudyParams, significance_table: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The verdict on each of the paper's claims, with the paper's effect sizes beside ours
    (``stats.claim_verdicts``); writes ``metrics/claims.csv``."""
    from ..stats import claim_verdicts

    pool_sizes = {d: len(load_eval_data(params, d).candidates) for d in lareqa_datasets(params)}
    table = claim_verdicts(significance_table, pool_sizes=pool_sizes)
    write_table(table, run_dir / "metrics" / "claims.csv")
    return table


def hybrid_alphas(params: StudyParams) -> dict:
    """The alpha of each hybrid training run (label -> alpha), in increasing alpha: the alpha sweep."""
    alphas = {label: run.alpha for label, strategy, run in params.training_runs() if strategy == "hybrid"}
    return dict(sorted(alphas.items(), key=lambda item: item[1]))


def alpha_sweep_figures(params: StudyParams, intervals_table: pd.DataFrame, run_dir: Path) -> list[Path]:
    """The alpha-sweep figures (``plots.alpha_sweep`` per dataset, ``plots.alpha_convergence``) in
    ``figures/``, when the study trains hybrid batches at two alphas or more; else none (an
    ablation's hybrid variants share one alpha)."""
    from ..plots import alpha_convergence, alpha_sweep, save_figure

    alphas = hybrid_alphas(params)
    if len(set(alphas.values())) < 2:
        return []
    paths = []
    for dataset in lareqa_datasets(params):
        figure = alpha_sweep(intervals_table, alphas, dataset)
        paths += save_figure(figure, run_dir / "figures" / f"alpha_sweep_{dataset}")
    val_logs = read_val_logs(params, run_dir)
    if not val_logs.empty:
        paths += save_figure(alpha_convergence(val_logs, alphas), run_dir / "figures" / "alpha_convergence")
    return paths
