"""The study's figures (matplotlib + seaborn); each function returns the Figure.

- ``map_heatmaps``: mAP of every query language (rows) x candidate language (columns) setting,
  one panel per strategy, mean over seeds (the paper's detailed X->Y tables as a picture);
- ``setting_bars``: monolingual / cross-lingual / multilingual mAP per strategy with 95%
  bootstrap intervals (from ``stats.bootstrap_ci``);
- ``rank_distance_distribution``: the per-query language bias (max - min rank of a query's
  parallel relevant candidates, multilingual pool) per query language and strategy;
- ``training_curves``: training loss (smoothed), validation loss and held-out R@10 against the step;
- ``alpha_sweep``: final mono / cross / multilingual mAP and rank distance against hybrid's alpha;
- ``alpha_convergence``: validation loss and held-out R@10 against the step, one colour per alpha;
- ``dapt_curves``: DAPT's masked-LM loss per step with its head-only phase marked, and the held-out loss;

Strategies always appear in ``constants.STRATEGIES`` with the colours of ``STRATEGY_COLORS``; titles
name the model as the metrics table does (the default model is a dequantized 4-bit copy of
multilingual-e5-small, never "multilingual-e5-small" alone). ``save_figure`` writes PNG + PDF.

>>> fig = map_heatmaps(metrics)          # metrics: the tidy table of metrics/metrics.csv
>>> save_figure(fig, run_dir / "figures" / "map_heatmaps")
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .constants import (
    ALL,
    DAPT,
    DAPT_HYBRID,
    MULTI,
    RANK_DISTANCE,
    RANK_DISTANCE_FRACTION,
    SETTINGS,
    VALIDATION_SCORE,
    ZERO_SHOT,
    ordered_strategies,
)
from .io import atomic_path

SETTING_LABELS = {"monolingual": "monolingual X→X", "crosslingual": "cross-lingual X→Y",
                  "multilingual": "multilingual X→all"}
# The validation-log columns drawn against the step: the selection score first (one yardstick for every
# strategy), then each run's own loss (not comparable across strategies).
_VALIDATION_PANELS = ((VALIDATION_SCORE, "validation score: held-out mAP, mean of 3 settings\n"
                                         "(selects every checkpoint; higher is better)"),
                      ("val_loss", "validation loss (each strategy's own batches;\nnot comparable across strategies)"))
_PALETTE = sns.color_palette("colorblind", 10)
# dapt: light blue, dapt+hybrid: pink; variants keep the colours they had before the DAPT strategies (3, 8)
STRATEGY_COLORS = {ZERO_SHOT: _PALETTE[7], DAPT: _PALETTE[9], "x-x-mono": _PALETTE[0], "x-y": _PALETTE[1],
                   "hybrid": _PALETTE[2], DAPT_HYBRID: _PALETTE[6], "x-x": _PALETTE[4], "en-en": _PALETTE[5]}


def strategy_palette(strategies: Sequence[str]) -> dict:
    """Colour of each strategy: fixed for the known ones; other names (variants, e.g. ``hybrid-a0.25``)
    take the palette's remaining colours in the study's order."""
    extra = iter([_PALETTE[i] for i in (3, 8)] + sns.color_palette("tab20", 20))
    return {s: STRATEGY_COLORS[s] if s in STRATEGY_COLORS else next(extra) for s in ordered_strategies(strategies)}


def model_label(frame: pd.DataFrame) -> str:
    """The model name(s) of a metrics-like frame, for titles."""
    if "model" not in frame.columns or frame.empty:
        return "unknown model"
    return ", ".join(sorted(frame["model"].astype(str).unique()))


def save_figure(fig: Figure, path_stem, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<path_stem>.png`` and ``.pdf`` (each through a temporary file); return the paths."""
    stem = Path(path_stem)
    written = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        # a fixed creation date keeps PDFs byte-identical between runs
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else None
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
        written.append(target)
    return written


def check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise a one-line ``ValueError`` naming the columns ``frame`` (described by ``what``) lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}")


def one_dataset(frame: pd.DataFrame, eval_dataset: Optional[str]) -> tuple[pd.DataFrame, str]:
    """The rows of one evaluation dataset (the first by name when ``eval_dataset`` is None) and its name."""
    datasets = sorted(frame["eval_dataset"].unique())
    if eval_dataset is None:
        eval_dataset = datasets[0]
    elif eval_dataset not in datasets:
        raise ValueError(f"no rows for eval_dataset {eval_dataset!r} (have {', '.join(datasets)})")
    return frame[frame["eval_dataset"] == eval_dataset], eval_dataset


def language_matrix(metrics: pd.DataFrame, strategy: str, metric: str = "mAP") -> pd.DataFrame:
    """Query language x pool language table of ``metric`` (mono + cross settings), mean over seeds."""
    rows = metrics[(metrics["strategy"] == strategy) & (metrics["metric"] == metric)
                   & metrics["setting"].isin(["monolingual", "crosslingual"])
                   & (metrics["query_lang"] != "all") & (metrics["pool_lang"] != "all")]
    return rows.pivot_table(index="query_lang", columns="pool_lang", values="value", aggfunc="mean")


def map_heatmaps(metrics: pd.DataFrame, eval_dataset: Optional[str] = None, metric: str = "mAP",
                 strategies: Optional[Sequence[str]] = None) -> Figure:
    """One heatmap per strategy: ``metric`` for query language X (rows) against pool language Y (columns).

    The diagonal is the monolingual setting, the rest the cross-lingual ones; values are means
    over seeds; all panels share one colour scale. ``metrics``: the tidy metrics table.
    """
    check_columns(metrics, ["strategy", "eval_dataset", "setting", "query_lang", "pool_lang", "metric", "value"],
                  "metrics table")
    data, eval_dataset = one_dataset(metrics, eval_dataset)
    strategies = ordered_strategies(strategies or data["strategy"].unique())
    matrices = {s: language_matrix(data, s, metric) for s in strategies}
    matrices = {s: m for s, m in matrices.items() if not m.empty}
    palette = strategy_palette(strategies)
    if not matrices:
        raise ValueError(f"no per-language {metric} rows for {eval_dataset}")
    values = np.concatenate([m.to_numpy().ravel() for m in matrices.values()])
    vmin, vmax = np.nanmin(values), np.nanmax(values)
    n_langs = max(len(m) for m in matrices.values())
    size = 1.2 + 0.42 * n_langs
    fig, axes = panels(len(matrices), size, size * 0.9)
    for ax, (strategy, matrix) in zip(axes, matrices.items()):
        sns.heatmap(matrix, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", square=True, annot=n_langs <= 11,
                    fmt=".2f", annot_kws={"fontsize": 7}, cbar=ax is axes[len(matrices) - 1],
                    cbar_kws={"label": metric, "shrink": 0.8})
        ax.set_title(strategy, color=palette[strategy], fontweight="bold")
        ax.set_xlabel("candidate (pool) language Y")
        ax.set_ylabel("query language X")
    fig.suptitle(f"{metric} X→Y on {eval_dataset} (diagonal: monolingual), mean over seeds\n{model_label(data)}")
    return fig


def panels(n: int, width: float, height: float, max_columns: int = 4):
    """A figure of ``n`` panels of ``width`` x ``height`` inches in rows of at most ``max_columns``; the
    spare axes are hidden. Returns the figure and the ``n`` axes in reading order."""
    columns = min(n, max_columns)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows),
                                           squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, list(axes.ravel()[:n])


def setting_bars(intervals: pd.DataFrame, eval_dataset: Optional[str] = None, metric: str = "mAP",
                 runs: Optional[pd.DataFrame] = None) -> Figure:
    """Bars of the macro-averaged ``metric`` per setting (groups) and strategy (colours), 95% intervals,
    and a dot per training run on each bar, so the run-to-run spread shows.

    ``intervals``: ``stats.bootstrap_ci`` output (columns ``strategy, eval_dataset, setting,
    metric, mean, ci_low, ci_high``; ``n_runs`` is shown in the legend when present).
    ``runs``: the tidy metrics table (``metrics.csv``); its macro rows (languages ``all``) give
    each run's value. None: no dots.
    """
    check_columns(intervals, ["strategy", "eval_dataset", "setting", "metric", "mean", "ci_low", "ci_high"],
                  "interval table")
    data, eval_dataset = one_dataset(intervals[intervals["metric"] == metric], eval_dataset)
    settings = [s for s in SETTINGS if s in set(data["setting"])]
    strategies = ordered_strategies(data["strategy"].unique())
    palette = strategy_palette(strategies)
    width = 0.8 / len(strategies)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(settings) * max(2, len(strategies)) / 2, 4.2),
                                         layout="constrained")
    for i, strategy in enumerate(strategies):
        rows = data[data["strategy"] == strategy].set_index("setting").reindex(settings)
        x = np.arange(len(settings)) + (i - (len(strategies) - 1) / 2) * width
        errors = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        label = strategy
        if "n_runs" in rows and rows["n_runs"].notna().any():
            label += f" ({int(rows['n_runs'].max())} run{'s' if rows['n_runs'].max() > 1 else ''})"
        ax.bar(x, rows["mean"], width * 0.95, yerr=errors, capsize=3, label=label,
               color=palette[strategy], error_kw={"elinewidth": 1})
        if runs is not None:
            _run_dots(ax, runs, eval_dataset, metric, strategy, dict(zip(settings, x)), width)
    ax.set_xticks(np.arange(len(settings)), [SETTING_LABELS[s] for s in settings])
    ax.set_ylabel(f"{metric} (macro average)")
    ax.set_xlabel("setting")
    ax.legend(title="batches", fontsize=8, loc="upper right", bbox_to_anchor=(1.0, -0.15), ncols=len(strategies))
    ax.set_title(f"{metric} on {eval_dataset} with 95% bootstrap intervals\n{model_label(data)}")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _run_dots(ax, runs: pd.DataFrame, eval_dataset: str, metric: str, strategy: str, x_of: dict,
              width: float) -> None:
    """One dot per run (seed) of ``strategy`` on its bars, spread across the bar's width."""
    rows = runs[(runs["eval_dataset"] == eval_dataset) & (runs["metric"] == metric) & (runs["strategy"] == strategy)
                & (runs["query_lang"] == ALL) & (runs["pool_lang"] == ALL) & runs["setting"].isin(list(x_of))]
    for setting, group in rows.groupby("setting"):
        offsets = np.linspace(-0.25, 0.25, len(group)) * width if len(group) > 1 else np.zeros(1)
        ax.scatter(x_of[setting] + offsets, group["value"], s=9, color="black", alpha=0.7, zorder=3, linewidths=0)


def rank_distance_distribution(per_query: pd.DataFrame, eval_dataset: Optional[str] = None) -> Figure:
    """Box plots of the per-query rank distance (multilingual pool) per query language and strategy.

    ``per_query``: the per-query table (rows with ``metric == "rank_distance"`` are used; seeds
    are pooled). Lower is better: the parallel answers are ranked closer together. White
    diamonds mark the means, which the paper's tables report.
    """
    check_columns(per_query, ["strategy", "eval_dataset", "query_lang", "metric", "value"], "per-query table")
    data, eval_dataset = one_dataset(per_query[per_query["metric"] == "rank_distance"], eval_dataset)
    if data.empty:
        raise ValueError("no rank_distance rows in the per-query table")
    strategies = ordered_strategies(data["strategy"].unique())
    languages = sorted(data["query_lang"].unique())
    fig, ax = plt.subplots(figsize=(1.5 + 0.35 * len(languages) * len(strategies), 4.2),
                                         layout="constrained")
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated ``vert``
        warnings.filterwarnings("ignore", message=".*vert: bool.*")
        sns.boxplot(data=data, x="query_lang", y="value", hue="strategy", order=languages, hue_order=strategies,
                    palette=strategy_palette(strategies), showfliers=False, showmeans=True, ax=ax,
                    meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black",
                               "markersize": 4})
    ax.set_xlabel("query language")
    ax.set_ylabel("rank distance (max − min rank of parallel answers)")
    pool = _pool_size(per_query, eval_dataset)
    if pool:  # the same distances as a fraction of the pool: comparable across pools and datasets
        ax.secondary_yaxis("right", functions=(lambda x: x / pool, lambda f: f * pool)).set_ylabel(
            f"fraction of the pool ({pool:,} candidates)")
    ax.legend(title="batches", fontsize=8)
    ax.set_title(f"Language bias on {eval_dataset}, multilingual pool (lower is better; ◇ = mean)\n"
                 f"{model_label(data)}")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _pool_size(per_query: pd.DataFrame, eval_dataset: str) -> Optional[int]:
    """The multilingual pool's size, from the per-query rank distance and its fraction (None without them)."""
    rows = per_query[per_query["eval_dataset"] == eval_dataset]
    keys = ["strategy", "seed", "query_lang", "query_id"]
    raw = rows[rows["metric"] == RANK_DISTANCE].set_index(keys)["value"]
    fraction = rows[rows["metric"] == RANK_DISTANCE_FRACTION].set_index(keys)["value"]
    ratio = (raw / fraction[fraction > 0]).dropna()
    return int(round(ratio.median())) if len(ratio) else None


def smooth(values: pd.Series, span: int) -> pd.Series:
    """Exponential moving average with ``span`` steps (the usual TensorBoard-style smoothing)."""
    return values.ewm(span=max(1, span), adjust=True).mean()


def training_curves(train_log: pd.DataFrame, val_log: Optional[pd.DataFrame] = None,
                    span: Optional[int] = None, title: str = "") -> Figure:
    """Training loss, the validation score that selects every checkpoint, and each run's validation loss.

    ``train_log``: columns ``strategy, seed, step, loss`` (``study.read_train_logs``);
    ``val_log``: columns ``strategy, seed, step`` and ``val_score`` and/or ``val_loss``
    (``study.read_val_logs``), optional. ``val_score`` (held-out mAP averaged over the three
    settings) is the same yardstick for every strategy, so its panel compares them on one axis;
    the losses are each strategy's own objective on its own kind of batch and do not compare
    across strategies. Each seed is one line. ``span`` (EMA of the training loss) defaults to a
    twentieth of the steps. An empty log (a study without fine-tuning) gives a figure that says so.
    """
    if train_log.empty:
        fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
        ax.text(0.5, 0.5, "no fine-tuned model in this study", ha="center", va="center")
        ax.set_axis_off()
        return fig
    check_columns(train_log, ["strategy", "seed", "step", "loss"], "training log")
    val_panels = [(column, label) for column, label in _VALIDATION_PANELS
                  if val_log is not None and column in val_log.columns and val_log[column].notna().any()]
    n_panels = 1 + len(val_panels)
    fig, axes = plt.subplots(1, n_panels, figsize=(1 + 5 * n_panels, 4), squeeze=False, layout="constrained")
    ax = axes[0, 0]
    span = span or max(1, int(train_log["step"].max()) // 20)
    palette = strategy_palette(train_log["strategy"].unique())
    for (strategy, seed), run in _runs(train_log):
        colour = palette[strategy]
        ax.plot(run["step"], run["loss"], color=colour, alpha=0.2, linewidth=0.8)
        ax.plot(run["step"], smooth(run["loss"], span), color=colour, linewidth=1.8,
                label=strategy if seed == _first_seed(train_log, strategy) else None)
    ax.set_ylabel("InfoNCE loss (batch)")  # DAPT's masked-LM loss has its own figure, dapt_curves
    ax.set_title(f"training loss (EMA over {span} steps; faint: raw)" if span > 1 else "training loss")
    ax.legend(title="batches", fontsize=8)
    for ax, (column, label) in zip(axes[0, 1:], val_panels):
        for (strategy, seed), run in _runs(val_log):
            ax.plot(run["step"], run[column], marker="o", markersize=3, color=palette.get(strategy, "grey"),
                    label=strategy if seed == _first_seed(val_log, strategy) else None)
        ax.set_ylabel(column)
        ax.set_title(label, fontsize=10)
    return _finish_step_axes(fig, axes, "training step", title)


def dapt_curves(log: pd.DataFrame, evals: Optional[pd.DataFrame] = None, title: str = "") -> Figure:
    """DAPT's masked-LM loss per step (one line per seed, EMA and raw) with the end of the head-only phase
    marked, and the held-out masked-LM loss at the start, after the head phase and at the end.

    ``log``: ``study.read_dapt_logs`` (columns ``seed, step, phase, loss``); ``evals``:
    ``study.read_dapt_evals`` (``seed, step, phase, eval_loss``), optional.
    """
    check_columns(log, ["seed", "step", "phase", "loss"], "DAPT log")
    has_evals = evals is not None and not evals.empty
    fig, axes = plt.subplots(1, 1 + has_evals, figsize=(5.5 + 4 * has_evals, 3.8), squeeze=False, layout="constrained")
    ax, colour = axes[0, 0], STRATEGY_COLORS[DAPT]
    span = max(1, int(log["step"].max()) // 20)
    for _, run in log.sort_values("step").groupby("seed"):
        ax.plot(run["step"], run["loss"], color=colour, alpha=0.2, linewidth=0.8)
        ax.plot(run["step"], smooth(run["loss"], span), color=colour, linewidth=1.5)
    head = log.loc[log["phase"] == "head", "step"]
    if not head.empty:
        ax.axvline(head.max() + 0.5, color="black", linestyle="--", linewidth=0.8)
        ax.text(head.max() + 0.5, 0.98, " full steps →", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.text(head.max() + 0.5, 0.98, "← head only ", transform=ax.get_xaxis_transform(), va="top", ha="right",
                fontsize=8)
    ax.set_ylabel("masked-LM loss (batch)")
    ax.set_title(f"DAPT training loss, {log['seed'].nunique()} seeds (EMA over {span} steps; faint: raw)", fontsize=10)
    if has_evals:
        check_columns(evals, ["seed", "step", "eval_loss"], "DAPT held-out log")
        for _, run in evals.sort_values("step").groupby("seed"):
            axes[0, 1].plot(run["step"], run["eval_loss"], marker="o", color=colour, alpha=0.8)
        axes[0, 1].set_ylabel("held-out masked-LM loss")
        axes[0, 1].set_title("held-out paragraphs: start, after the head phase, end", fontsize=10)
    return _finish_step_axes(fig, axes, "DAPT step", title)


def _finish_step_axes(fig: Figure, axes, xlabel: str, title: str) -> Figure:
    """Panels against a step: the x label, integer ticks, a grid; the figure's title when given."""
    for axis in axes.ravel():
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return fig


def _alpha_colours(alphas: dict) -> dict:
    """One colour per alpha on a sequential scale (0 = all X-Y batches, 1 = all X-X-mono)."""
    cmap = plt.get_cmap("viridis")
    return {label: cmap(0.9 * alpha) for label, alpha in alphas.items()}


def _sweep_rows(intervals: pd.DataFrame, alphas: dict, metric: str, setting: str) -> pd.DataFrame:
    rows = intervals[(intervals["metric"] == metric) & (intervals["setting"] == setting)
                     & intervals["strategy"].isin(list(alphas))]
    return rows.assign(alpha=rows["strategy"].map(alphas)).sort_values("alpha")


def alpha_sweep(intervals: pd.DataFrame, alphas: dict, eval_dataset: Optional[str] = None) -> Figure:
    """Final mono / cross / multilingual mAP and rank distance against hybrid's alpha, 95% intervals.

    ``intervals``: ``stats.bootstrap_ci`` output; ``alphas``: label -> alpha of the hybrid runs
    (``study.hybrid_alphas``). A zero-shot row, when present, is drawn as a dashed line.
    """
    check_columns(intervals, ["strategy", "eval_dataset", "setting", "metric", "mean", "ci_low", "ci_high"],
                  "interval table")
    data, eval_dataset = one_dataset(intervals, eval_dataset)
    shown = [("mAP", s) for s in SETTINGS] + [(RANK_DISTANCE, MULTI)]
    shown = [(m, s) for m, s in shown if not _sweep_rows(data, alphas, m, s).empty]
    if not shown:
        raise ValueError(f"no interval rows of the runs {', '.join(alphas)} on {eval_dataset}")
    fig, axes = panels(len(shown), 3.4, 3.2)
    for ax, (metric, setting) in zip(axes, shown):
        rows = _sweep_rows(data, alphas, metric, setting)
        ax.errorbar(rows["alpha"], rows["mean"], yerr=[rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]],
                    marker="o", capsize=3, color=STRATEGY_COLORS["hybrid"], label="hybrid")
        zero_shot = data[(data["strategy"] == "zero-shot") & (data["metric"] == metric) & (data["setting"] == setting)]
        if not zero_shot.empty:
            ax.axhline(zero_shot["mean"].iloc[0], color=STRATEGY_COLORS["zero-shot"], linestyle="--", label="zero-shot")
        ax.set_xlabel("alpha (share of X-X-mono batches)")
        ax.set_ylabel("rank distance (lower is better)" if metric == RANK_DISTANCE else "mAP (macro average)")
        ax.set_title(SETTING_LABELS[setting] if metric == "mAP" else "language bias, multilingual pool", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Alpha sweep on {eval_dataset} (95% bootstrap intervals)\n{model_label(data)}")
    return fig


def alpha_convergence(val_log: pd.DataFrame, alphas: dict, title: str = "") -> Figure:
    """Validation score and validation loss against the step, one colour per alpha (mean over seeds; faint: seeds).

    ``val_log``: ``study.read_val_logs`` (columns ``strategy, seed, step`` and ``val_score`` and/or
    ``val_loss``); ``alphas``: ``study.hybrid_alphas``.
    """
    check_columns(val_log, ["strategy", "seed", "step"], "validation log")
    data = val_log[val_log["strategy"].isin(list(alphas))]
    if data.empty:
        raise ValueError(f"no validation rows of the runs {', '.join(alphas)}")
    columns = [(c, label) for c, label in _VALIDATION_PANELS if c in data.columns and data[c].notna().any()]
    fig, axes = plt.subplots(1, len(columns), figsize=(1 + 5 * len(columns), 4), squeeze=False, layout="constrained")
    colours = _alpha_colours(alphas)
    for ax, (column, label) in zip(axes[0], columns):
        for strategy, alpha in alphas.items():
            runs = data[data["strategy"] == strategy]
            for _, run in runs.groupby("seed"):
                ax.plot(run["step"], run[column], color=colours[strategy], alpha=0.25, linewidth=0.8)
            mean = runs.groupby("step")[column].mean()
            ax.plot(mean.index, mean.values, marker="o", markersize=3, color=colours[strategy],
                    label=f"{alpha:g}")
        ax.set_xlabel("training step")
        ax.set_ylabel(column)
        ax.set_title(label, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(title="alpha", fontsize=8)
    fig.suptitle(title or "Convergence per alpha (bold: mean over seeds)")
    return fig


def _runs(log: pd.DataFrame):
    order = {s: i for i, s in enumerate(ordered_strategies(log["strategy"].unique()))}
    groups = sorted(log.groupby(["strategy", "seed"]), key=lambda item: (order[item[0][0]], item[0][1]))
    return [(key, run.sort_values("step")) for key, run in groups]


def _first_seed(log: pd.DataFrame, strategy: str):
    return log.loc[log["strategy"] == strategy, "seed"].min()
