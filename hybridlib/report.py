"""The study's report: our numbers next to the paper's, the strategies' ordering, ``report.md``.

The paper's headline numbers (arXiv 2408.10536, docs/paper.md) come from ``hybridlib.paper``.
The paper's encoders (XLM-R and LaBSE, fine-tuned on millions of machine-translated pairs in
nine languages) differ from ours (by default a dequantized 4-bit copy of multilingual-e5-small
fine-tuned for minutes on one LAReQA dataset), so the absolute numbers are not comparable: only
the ORDER of the strategies within a column is (``strategy_ordering``), and, in the claims
table, the size of a difference beside the paper's (``claims_table``).

>>> table = comparison_table(metrics)            # metrics: the tidy table of metrics/metrics.csv
>>> print(markdown_table(table))
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .config import DATASET_LANGUAGES
from .constants import (
    CROSS,
    MONO,
    MULTI,
    OWN_LANGUAGE,
    PAPER_STRATEGIES,
    RANK_DISTANCE,
    RANK_DISTANCE_FRACTION,
    is_lower_better,
    ordered_strategies,
)
from .io import write_text
from .paper import PAPER_POOL_SIZES, paper_values
from .stats import MARGIN_REASON, VERDICTS
from .stats.languages import PAIR_GROUPS

PAPER_NOTE = ("The paper's models (XLM-R and LaBSE, fine-tuned on millions of machine-translated pairs in "
              "nine languages, batch 100, one A100) differ from ours ({model}, fine-tuned on {training}), so "
              "absolute numbers are not comparable: only the ordering of the strategies within a column is.")

# columns of the comparison table: (setting, metric) of the averaged rows -> column name
COLUMNS = {(MONO, "mAP"): "mono mAP", (CROSS, "mAP"): "cross mAP", (MULTI, "mAP"): "multi mAP",
           (MULTI, RANK_DISTANCE): "rank distance", (MULTI, RANK_DISTANCE_FRACTION): "rank distance / pool",
           (MULTI, OWN_LANGUAGE): "own lang@10"}
METRIC_NOTES = (
    "mAP: full-depth average precision of a query's relevant candidates, macro-averaged over settings (mono, "
    "cross) or query languages (multi). Rank distance: in the multilingual pool, the largest minus the smallest "
    "rank of a query's relevant candidates (its answer in each language; lower is less language bias); it counts "
    "positions, so it grows with the pool: *rank distance / pool* divides it by the pool's size and compares "
    "across pools and datasets (the paper's is divided by the full pool it ranked). *own lang@10*: the share of "
    "the top 10 of the multilingual pool in the query's own language (lower is less biased, down to about one "
    "over the number of languages). In the multilingual pool R@k is the share of a question's relevant answers "
    "in the top k (so R@1 is at most 1/11 on XQuAD-R); Hit@k is whether at least one is.")
# columns shown with one decimal (positions); the others are shares and get three
POSITION_COLUMNS = {"rank distance", RANK_DISTANCE}


def _lower_is_better(column) -> bool:
    """For a metric name or a ``COLUMNS`` display name."""
    names = {name: metric for (_, metric), name in COLUMNS.items()}
    return is_lower_better(names.get(str(column), str(column)))


def paper_results() -> pd.DataFrame:
    """The paper's headline table, tidy: ``source, strategy, eval_dataset`` + the ``COLUMNS`` values."""
    rows = {}
    for model, strategy, dataset, setting, metric, value in paper_values():
        row = rows.setdefault((f"paper {model}", strategy, dataset), {})
        row[COLUMNS[(setting, metric)]] = value
        if metric == RANK_DISTANCE:  # the paper ranked the full pools (an assumption: paper.py)
            row[COLUMNS[(MULTI, RANK_DISTANCE_FRACTION)]] = value / PAPER_POOL_SIZES[dataset]
    return pd.DataFrame([dict(source=source, strategy=strategy, eval_dataset=dataset, **values)
                         for (source, strategy, dataset), values in rows.items()],
                        columns=["source", "strategy", "eval_dataset", *COLUMNS.values()])


def our_results(metrics: pd.DataFrame) -> pd.DataFrame:
    """Our averaged numbers in the paper's columns, mean over seeds, one row per (model, dataset, strategy).

    ``metrics``: the tidy metrics table; only its averaged rows (``all`` languages) are used.
    ``n_seeds`` says how many seeds each mean holds.
    """
    averaged = metrics[(metrics["query_lang"] == "all") & (metrics["pool_lang"] == "all")]
    keys = [(s, m) for s, m in COLUMNS]
    averaged = averaged[[(s, m) in keys for s, m in zip(averaged["setting"], averaged["metric"])]]
    averaged = averaged.assign(column=[COLUMNS[(s, m)] for s, m in zip(averaged["setting"], averaged["metric"])])
    table = averaged.pivot_table(index=["model", "eval_dataset", "strategy"], columns="column", values="value",
                                 aggfunc="mean").reindex(columns=list(COLUMNS.values()))
    seeds = averaged.groupby(["model", "eval_dataset", "strategy"])["seed"].nunique().rename("n_seeds")
    table = table.join(seeds).reset_index()
    table.columns.name = None
    table.insert(0, "source", "ours: " + table.pop("model"))
    return _in_strategy_order(table)


def _in_strategy_order(table: pd.DataFrame) -> pd.DataFrame:
    rank = {s: i for i, s in enumerate(ordered_strategies(table["strategy"].unique()))}
    key = table["strategy"].map(rank)
    return table.assign(_order=key).sort_values(["eval_dataset", "source", "_order"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def comparison_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows (XLM-R, LaBSE) and ours, for each evaluation dataset of ``metrics`` the paper has.

    Columns: ``eval_dataset, source, strategy, mono mAP, cross mAP, multi mAP, rank distance,
    n_seeds`` (``n_seeds`` is empty for the paper, which reports one run).
    """
    ours = our_results(metrics)
    paper = paper_results()
    paper = paper[paper["eval_dataset"].isin(ours["eval_dataset"].unique())]
    table = pd.concat([paper, ours], ignore_index=True)
    table["_paper_first"] = ~table["source"].str.startswith("paper")
    table = table.sort_values(["eval_dataset", "_paper_first"], kind="stable").drop(columns="_paper_first")
    return table[["eval_dataset", "source", "strategy", *COLUMNS.values(), "n_seeds"]].reset_index(drop=True)


def strategy_ordering(table: pd.DataFrame, strategies: Sequence[str] = PAPER_STRATEGIES) -> pd.DataFrame:
    """For each source and column, the strategies from best to worst, e.g. ``hybrid > x-y > x-x-mono``.

    ``table``: ``comparison_table`` output. Only ``strategies`` (the paper's three) are ordered;
    ties print as ``=``; a source lacking one of them gets an empty cell. Lower is better for
    the rank distance, higher for mAP.
    """
    rows = []
    for (dataset, source), group in table.groupby(["eval_dataset", "source"], sort=False):
        group = group[group["strategy"].isin(strategies)]
        row = {"eval_dataset": dataset, "source": source}
        for column in COLUMNS.values():
            values = group.set_index("strategy")[column].dropna()
            row[column] = _order_text(values, _lower_is_better(column)) if len(values) == len(strategies) else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=["eval_dataset", "source", *COLUMNS.values()])


def _order_text(values: pd.Series, lower_is_better: bool) -> str:
    ordered = values.sort_values(ascending=lower_is_better, kind="stable")
    text = str(ordered.index[0])
    for previous, (strategy, value) in zip(ordered.to_numpy(), list(ordered.items())[1:]):
        text += f" {'=' if np.isclose(previous, value) else '>'} {strategy}"
    return text


def paper_note(params, model: str) -> str:
    """Why only the ordering of the strategies compares with the paper, for this run."""
    return PAPER_NOTE.format(model=model, training=training_description(params))


def _best_in_column(column: pd.Series, groups: pd.Series) -> list[str]:
    """CSS for each cell: bold where the value is the best of its group (lowest for the rank distance)."""
    lower = _lower_is_better(column.name)
    best = column.groupby(groups.to_numpy()).transform("min" if lower else "max")
    return ["font-weight: bold" if np.isclose(v, b) else "" for v, b in zip(column, best)]


def style_table(table: pd.DataFrame, group_by: Sequence[str] = ("eval_dataset",),
                skip_strategies: Sequence[str] = ()):
    """A pandas Styler for notebooks: 3 decimals (rank distance 1), the best value of each column in bold.

    ``group_by``: columns (or index levels) within which "best" is taken, e.g. per dataset and
    source; rows of ``skip_strategies`` never count as best.
    """
    frame = table.reset_index() if any(n in (table.index.names or []) for n in group_by) else table
    numeric = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    groups = frame[list(group_by)].astype(str).agg(" / ".join, axis=1)
    eligible = ~frame["strategy"].isin(skip_strategies) if "strategy" in frame else pd.Series(True, frame.index)
    styler = frame.style.hide(axis="index")
    for column in numeric:
        values = frame[column].dropna()
        counts = len(values) and (values % 1 == 0).all()  # counts (n_seeds): integers, never "best"
        if not counts:
            styles = _best_in_column(frame[column].where(eligible), groups)
            styler = styler.apply(lambda _, s=styles: s, subset=[column])
        digits = 0 if counts else 1 if str(column) in POSITION_COLUMNS else 3
        styler = styler.format(f"{{:.{digits}f}}", subset=[column], na_rep="")
    return styler


def _format(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, digits: int = 3, column_digits: Optional[dict] = None) -> str:
    """A GitHub-flavoured markdown table of ``frame`` (floats with ``digits`` decimals, NaN empty).

    ``column_digits`` overrides ``digits`` per column (e.g. ``{"rank distance": 1}``).
    """
    column_digits = column_digits or {}
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        cells = [_format(v, column_digits.get(c, digits)) for c, v in zip(frame.columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interval_text(mean: float, low: float, high: float, digits: int, sign: str = "") -> str:
    """``mean [low, high]`` with ``digits`` decimals (``sign="+"`` signs differences)."""
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _digits(metric: str) -> int:
    """Decimals of a metric in the tables: positions 1, fractions of a pool 4, scores 3."""
    return 1 if metric == RANK_DISTANCE else 4 if "fraction" in metric else 3


def interval_table(intervals: pd.DataFrame) -> pd.DataFrame:
    """``stats.bootstrap_ci`` output as one row per (dataset, strategy), cells ``mean [low, high]``.

    Columns ``eval_dataset, strategy``, the ``COLUMNS`` present, then (when ``intervals`` has
    them) ``runs`` and ``clusters`` (the most of any setting) and ``resampled`` (the unit).
    """
    intervals = intervals[[(s, m) in COLUMNS for s, m in zip(intervals["setting"], intervals["metric"])]]
    cells = [interval_text(r.mean, r.ci_low, r.ci_high, _digits(r.metric)) for r in intervals.itertuples()]
    frame = intervals.assign(cell=cells, column=[COLUMNS[(s, m)] for s, m in zip(intervals["setting"],
                                                                                     intervals["metric"])])
    table = frame.pivot_table(index=["eval_dataset", "strategy"], columns="column", values="cell",
                              aggfunc="first").reindex(columns=[c for c in COLUMNS.values()
                                                                if c in set(frame["column"])])
    extra = {"n_runs": "runs", "n_clusters": "clusters", "resampling_unit": "resampled"}
    extra = {c: name for c, name in extra.items() if c in frame.columns}
    if extra:
        table = table.join(frame.groupby(["eval_dataset", "strategy"])[list(extra)].max().rename(columns=extra))
    table = table.reset_index()
    table.columns.name = None
    return _in_strategy_order(table.assign(source="")).drop(columns="source")


def seen_unseen_table(split: pd.DataFrame) -> pd.DataFrame:
    """``stats.unseen_language_split`` output as ``interval_table`` rows per (dataset, strategy, languages).

    ``languages`` is ``seen`` or ``unseen``; a cross-lingual cell counts as unseen when its query
    or its pool language was not trained on.
    """
    if split.empty:
        return pd.DataFrame()
    labels = split["languages"].replace({"both seen": "seen", "query or pool unseen": "unseen"})
    tables = [interval_table(split[labels == label]).assign(languages=label)
              for label in ("seen", "unseen") if (labels == label).any()]
    table = pd.concat(tables, ignore_index=True)
    rank = {s: i for i, s in enumerate(ordered_strategies(table["strategy"].unique()))}
    table = table.assign(_order=table["strategy"].map(rank)).sort_values(["eval_dataset", "_order", "languages"])
    metrics = [c for c in COLUMNS.values() if c in table.columns]
    return table[["eval_dataset", "strategy", "languages", *metrics]].reset_index(drop=True)


def pair_group_table(split: pd.DataFrame) -> pd.DataFrame:
    """``study.pair_groups`` output (cross-lingual mAP per language pair group) as one row per (dataset,
    strategy) and one ``mean [low, high]`` column per group, ``seen ↔ seen (20 pairs)``, ...; then ``runs``.

    The number of ordered pairs of a group is in its column's name when it is the same in every
    dataset of ``split``. An empty ``split`` gives an empty frame.
    """
    if split.empty:
        return pd.DataFrame()
    groups = [g for g in PAIR_GROUPS if g in set(split["pair_group"])]
    pairs = split.groupby("pair_group")["n_cells"].agg(lambda n: n.iloc[0] if n.nunique() == 1 else None)
    names = {g: g if pd.isna(pairs[g]) else f"{g} ({int(pairs[g])} pairs)" for g in groups}
    cells = [interval_text(r.mean, r.ci_low, r.ci_high, 3) for r in split.itertuples()]
    table = split.assign(cell=cells).pivot_table(index=["eval_dataset", "strategy"], columns="pair_group",
                                                 values="cell", aggfunc="first")[groups].rename(columns=names)
    table = table.join(split.groupby(["eval_dataset", "strategy"])["n_runs"].max().rename("runs")).reset_index()
    table.columns.name = None
    return _in_strategy_order(table.assign(source="")).drop(columns="source")


def runs_text(a, b) -> str:
    """``a / b``, the runs behind each side of a comparison; empty when either is unknown."""
    return "" if pd.isna(a) or pd.isna(b) else f"{int(a)} / {int(b)}"


def significance_table(significance: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``stats.paired_tests`` output a reader needs: differences with their intervals,
    p-values, and what was resampled (clusters of questions, runs of each strategy, the unit)."""
    return pd.DataFrame({
        "eval_dataset": significance["eval_dataset"], "setting": significance["setting"],
        "metric": significance["metric"],
        "comparison": significance["strategy_a"] + " − " + significance["strategy_b"],
        "difference [95% CI]": [interval_text(r.mean_diff, r.ci_low, r.ci_high, _digits(r.metric), "+")
                                for r in significance.itertuples()],
        "p": [f"{p:.3g}" for p in significance["p_value"]],
        "queries": significance["n_queries"],
        "clusters": significance.get("n_clusters"),
        "runs": [runs_text(a, b) for a, b in zip(significance.get("n_runs_a", pd.Series(np.nan, significance.index)),
                                                 significance.get("n_runs_b", pd.Series(np.nan, significance.index)))],
        "resampled": significance.get("resampling_unit"),
    })


def _paper_text(size: float, inside, digits: int) -> str:
    if pd.isna(size):
        return ""
    return f"{size:+.{digits}f}" + ("" if pd.isna(inside) else " (in our CI)" if inside else " (outside)")


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """``stats.claim_verdicts`` output for reading: one row per comparison of a claim.

    Columns: ``eval_dataset, claim, verdict, comparison, setting, ours [95% CI]`` (our difference
    a − b), ``p (Holm)``, ``outcome``, ``paper XLM-R`` / ``paper LaBSE`` (the paper's difference,
    marked whether our interval includes it), ``clusters``, ``runs`` (a / b), ``resampled``.
    """
    tested = claims["mean_diff"].notna()
    return pd.DataFrame({
        "eval_dataset": claims["eval_dataset"], "claim": claims["claim"], "verdict": claims["verdict"],
        "comparison": claims["strategy_a"] + " − " + claims["strategy_b"],
        "setting": claims["setting"] + np.where(claims["metric"] == "mAP", "", " " + claims["metric"]),
        "ours [95% CI]": [interval_text(r.mean_diff, r.ci_low, r.ci_high, _digits(r.metric), "+") if t else ""
                          for r, t in zip(claims.itertuples(), tested)],
        "p (Holm)": [f"{p:.3g} ({h:.3g})" if t else "" for p, h, t in zip(claims["p_value"], claims["p_holm"], tested)],
        "outcome": claims["outcome"],
        "paper XLM-R": [_paper_text(v, i, _digits(m)) for v, i, m in
                        zip(claims["paper_xlmr"], claims["xlmr_in_ci"], claims["metric"])],
        "paper LaBSE": [_paper_text(v, i, _digits(m)) for v, i, m in
                        zip(claims["paper_labse"], claims["labse_in_ci"], claims["metric"])],
        "clusters": claims["n_clusters"],
        "runs": [runs_text(a, b) for a, b in zip(claims["n_runs_a"], claims["n_runs_b"])],
        "resampled": claims["resampling_unit"],
    })


def verdict_words() -> str:
    """The verdict words of the claims table and their definitions, and the margin's reason, as markdown."""
    return "\n".join([*(f"- **{word}**: {meaning}" for word, meaning in VERDICTS.items()), "", MARGIN_REASON])


def training_description(params) -> str:
    """One phrase saying how the run's models were trained (for the paper note)."""
    languages = ", ".join(params.train_languages) if params.train_languages else "all languages"
    ids = f", first {params.train_max_ids} ids" if params.train_max_ids else ""
    return (f"{' + '.join(params.train_sources)} ({languages}{ids}) for {params.max_steps} steps of "
            f"{params.batch_size} pairs, seeds {', '.join(map(str, params.seeds))}")


def write_report(run_dir, params, comparison: pd.DataFrame, ordering: pd.DataFrame, intervals: pd.DataFrame,
                 significance: pd.DataFrame, verdicts: pd.DataFrame, figures: Sequence[Path],
                 model: str, seen_unseen: Optional[pd.DataFrame] = None,
                 pair_groups: Optional[pd.DataFrame] = None, language_gains: Optional[pd.DataFrame] = None) -> Path:
    """Write ``<run_dir>/report.md``: the tables as markdown and links to the PNG figures.

    ``seen_unseen``: ``seen_unseen_table`` output; ``pair_groups``: ``pair_group_table`` output;
    ``language_gains``: ``gains.language_gain_table`` output; each shown when given and not empty.
    """
    run_dir = Path(run_dir)
    note = PAPER_NOTE.format(model=model, training=training_description(params))
    pools = (f"a random sample of whole paragraphs, stratified by article, with about {params.eval_max_ids} "
             f"question ids (seed {params.eval_sample_seed})" if params.eval_max_ids else "full pools")
    languages = ", ".join(params.eval_languages) if params.eval_languages else "all languages"
    parts = [
        f"# Hybrid batch training, study `{params.run_name}`",
        f"Reproduction of Elmahdy, Lin & Ahmad (arXiv 2408.10536). Model: {model}. Trained on "
        f"{training_description(params)}; evaluated zero-shot on {', '.join(params.eval_datasets)} "
        f"({languages}, {pools}). {_runs_sentence(params)} Parameters: `params.yaml`; executed notebooks: "
        f"`notebooks/`.",
        "## Our numbers next to the paper's (mAP; rank distance)", f"> {note}",
        markdown_table(comparison, column_digits={"rank distance": 1, "n_seeds": 0}),
        METRIC_NOTES,
        "## Ordering of the strategies (best first)", markdown_table(ordering),
        "## Our numbers with 95% bootstrap intervals",
        "Each interval resamples clusters of questions (the paragraph of a question's answer) and each "
        "strategy's training runs (`resampled`); `runs`: trained models per strategy, `clusters`: the clusters "
        "resampled. See `hybridlib/stats/resampling.py`.",
        markdown_table(intervals),
        "## Paired tests",
        "Difference a − b for every pair of strategies: both sides share the resampled clusters (the same "
        "questions), each side's runs are drawn independently; the p-value comes from the same replicates (it is "
        "below 0.05 exactly when the 95% interval excludes 0). `metrics/significance.csv` has every column.",
        markdown_table(significance_table(significance)) if not significance.empty else "(no pairs to test)",
        *(["## Languages seen and unseen in training (95% bootstrap intervals)",
            markdown_table(seen_unseen)] if seen_unseen is not None and not seen_unseen.empty else []),
        *_pair_group_section(params, pair_groups),
        *_language_gain_section(language_gains),
        *_claims_section(verdicts),
        "## Figures",
        *[f"![{Path(f).stem}](figures/{Path(f).name})" for f in figures if Path(f).suffix == ".png"],
    ]
    return write_text("\n\n".join(parts) + "\n", run_dir / "report.md")


def _runs_sentence(params) -> str:
    runs = len(params.seeds)
    return (f"Each trained strategy has {runs} training run{'s' if runs > 1 else ''} (seeds "
            f"{', '.join(map(str, params.seeds))}); the zero-shot encoder is one model.")


def _pair_group_section(params, pair_groups: Optional[pd.DataFrame]) -> list[str]:
    """The report's section of cross-lingual mAP by language pair group, when there is one."""
    if pair_groups is None or pair_groups.empty:
        return []
    from .study import train_languages

    trained = train_languages(params)
    unseen = sorted({l for d in params.eval_datasets for l in DATASET_LANGUAGES.get(d, ())
                     if (not params.eval_languages or l in params.eval_languages) and l not in trained})
    return ["## Cross-lingual mAP by language pair group (95% bootstrap intervals)",
            f"Ordered pairs query → pool by how many of their two languages the models were fine-tuned on "
            f"({', '.join(trained)}; unseen: {', '.join(unseen) or 'none'}), each group macro-averaged over its "
            f"pairs, intervals resampling paragraph clusters and runs as above (`metrics/pair_groups.csv`).",
            markdown_table(pair_groups)]


def _language_gain_section(gains: Optional[pd.DataFrame]) -> list[str]:
    """The report's section of mAP differences per query language, when there is one."""
    if gains is None or gains.empty:
        return []
    return ["## Gains per query language (mAP differences, 95% bootstrap intervals)",
            "Each comparison per query language: the monolingual cell, the cross-lingual cells of that query "
            "language (macro-averaged over its pools) and its multilingual cell; `seen`: the language was in the "
            "fine-tuning data. Intervals resample paragraph clusters and runs as above; the p-values "
            "(`metrics/language_gains.csv`) are not adjusted for the many cells, so read this table as a map "
            "of where the differences lie, not as claims.",
            markdown_table(gains)]


def _claims_section(verdicts: pd.DataFrame) -> list[str]:
    """The report's claims section: the verdict per claim, every comparison with the paper's sizes, the words."""
    summary = verdicts.drop_duplicates(["model", "eval_dataset", "claim"])[["eval_dataset", "claim", "verdict"]]
    return [
        "## The paper's claims", markdown_table(summary),
        "Each comparison: our difference with its 95% interval, its p-value (Holm-adjusted over the whole table), "
        "and the paper's own difference for the same comparison (XLM-R, LaBSE), marked whether our interval "
        "includes it. The rank distance counts positions, so it grows with the pool: the paper's rank-distance "
        "differences are rescaled to our pool when its size is known, else shown in the paper's positions and "
        "not compared.",
        markdown_table(claims_table(verdicts)), verdict_words(),
    ]
