"""Gains per query language, as a reader sees them: ``study.language_gains`` computes each comparison's
mAP difference per query language and setting (``metrics/language_gains.csv``); ``language_gain_table``
shows it as the report's table, ``language_gain_figure`` as a figure (one panel per setting).

>>> gains = study.language_gains(params, per_query, run_dir)
>>> plots.save_figure(language_gain_figure(gains), run_dir / "figures" / "language_gains_xquad-r")
"""
from __future__ import annotations

from typing import Optional

import pandas as pd
from matplotlib.figure import Figure

from .constants import CROSS, MONO, MULTI, SETTINGS, ZERO_SHOT
from .plots import SETTING_LABELS, check_columns, model_label, one_dataset, panels, strategy_palette
from .report import COLUMNS, interval_text, runs_text


def language_gain_table(gains: pd.DataFrame) -> pd.DataFrame:
    """``study.language_gains`` output as one row per (dataset, comparison, query language) and one
    ``difference [low, high]`` column per setting (mono, cross, multi mAP), then ``seen`` and ``runs``.
    Languages unseen in training come after the seen ones. An empty ``gains`` gives an empty frame."""
    if gains.empty:
        return pd.DataFrame()
    names = {s: COLUMNS[(s, "mAP")] for s in (MONO, CROSS, MULTI)}
    cells = [interval_text(r.mean_diff, r.ci_low, r.ci_high, 3, "+") for r in gains.itertuples()]
    frame = gains.assign(cell=cells, comparison=gains["strategy_a"] + " − " + gains["strategy_b"])
    keys = ["eval_dataset", "comparison", "seen", "query_lang"]
    table = frame.pivot_table(index=keys, columns="setting", values="cell", aggfunc="first")
    table = table[[s for s in names if s in table.columns]].rename(columns=names)
    runs = frame.groupby(keys).apply(lambda g: runs_text(g["n_runs_a"].max(), g["n_runs_b"].max()))
    table = table.join(runs.rename("runs")).reset_index()
    order = {c: i for i, c in enumerate(dict.fromkeys(frame["comparison"]))}
    table = table.assign(_c=table["comparison"].map(order), _s=table["seen"] != "yes")
    table = table.sort_values(["eval_dataset", "_c", "_s", "query_lang"]).drop(columns=["_c", "_s"])
    table.columns.name = None
    return table[["eval_dataset", "comparison", "query_lang", "seen", *[c for c in table.columns
                                                                     if c in names.values()], "runs"]]


def language_gain_figure(gains: pd.DataFrame, eval_dataset: Optional[str] = None) -> Figure:
    """Each comparison's mAP difference (a − b) per query language, one panel per setting, 95% intervals.

    ``gains``: ``study.language_gains`` output (``stats.paired_tests`` columns by ``query_lang``, and
    ``seen``). Languages unseen in training are listed last and marked ``(unseen)``; a comparison
    against the zero-shot encoder is a dot in the colour of its strategy, any other a diamond.
    """
    check_columns(gains, ["eval_dataset", "setting", "query_lang", "seen", "strategy_a", "strategy_b", "mean_diff",
                           "ci_low", "ci_high"], "language gains table")
    data, eval_dataset = one_dataset(gains, eval_dataset)
    settings = [s for s in SETTINGS if s in set(data["setting"])]
    seen = data.drop_duplicates("query_lang").set_index("query_lang")["seen"]
    languages = sorted(seen.index, key=lambda lang: (seen[lang] != "yes", lang))[::-1]  # top to bottom
    y_of = {lang: i for i, lang in enumerate(languages)}
    pairs = list(dict.fromkeys(zip(data["strategy_a"], data["strategy_b"])))
    palette = strategy_palette(data["strategy_a"].unique())
    fig, axes = panels(len(settings), 3.3, 0.9 + 0.32 * len(languages))
    for ax, setting in zip(axes, settings):
        for i, (a, b) in enumerate(pairs):
            rows = data[(data["setting"] == setting) & (data["strategy_a"] == a) & (data["strategy_b"] == b)]
            y = rows["query_lang"].map(y_of) + (i - (len(pairs) - 1) / 2) * 0.6 / max(len(pairs), 1)
            errors = [rows["mean_diff"] - rows["ci_low"], rows["ci_high"] - rows["mean_diff"]]
            ax.errorbar(rows["mean_diff"], y, xerr=errors, fmt="o" if b == ZERO_SHOT else "D", markersize=4,
                        capsize=2, color=palette[a], label=f"{a} − {b}")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(languages)), [lang if seen[lang] == "yes" else f"{lang} (unseen)"
                                              for lang in languages])
        ax.set_xlabel("mAP difference")
        ax.set_title(SETTING_LABELS[setting], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"mAP difference per query language on {eval_dataset} (95% bootstrap intervals)\n{model_label(data)}")
    return fig
