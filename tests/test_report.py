"""Figures (hybridlib.plots) and the report (hybridlib.report) on small synthetic result tables.

The synthetic tables have the layout of ``hybridlib.evaluate``'s output: a per-query table and
its macro averages (per cell, then ``all``), so the expected numbers can be computed by hand.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from synthetic import macro_averages  # noqa: E402

from hybridlib import gains as gains_view  # noqa: E402
from hybridlib import plots, report  # noqa: E402
from hybridlib.config import StudyParams  # noqa: E402

PARAMS = Path(__file__).resolve().parents[1] / "params"
LANGS = ("de", "en", "ru")
STRATEGIES = ("hybrid", "x-y", "zero-shot", "x-x-mono")  # deliberately not in the study's order
MODEL = "tiny model (synthetic)"
# per strategy: base mAP per setting and rank distance; chosen so that the ordering is known
LEVELS = {"zero-shot": (0.50, 0.30, 0.25, 40.0), "x-x-mono": (0.80, 0.60, 0.50, 30.0),
          "x-y": (0.70, 0.70, 0.60, 20.0), "hybrid": (0.82, 0.72, 0.62, 10.0)}


def per_query_frame(n_ids: int = 12, seeds=(0, 1)) -> pd.DataFrame:
    """Per-query rows: mono X->X, cross X->Y and multilingual X->all mAP, multilingual rank distance."""
    rng = np.random.default_rng(0)
    rows = []
    for strategy, seed, q in itertools.product(STRATEGIES, seeds, range(n_ids)):
        mono, cross, multi, distance = LEVELS[strategy]
        for x, y in itertools.product(LANGS, LANGS):
            setting, base = ("monolingual", mono) if x == y else ("crosslingual", cross)
            rows.append((strategy, seed, setting, x, y, f"q{q}", "mAP", base + rng.normal(0, 0.01)))
        for x in LANGS:
            rows.append((strategy, seed, "multilingual", x, "all", f"q{q}", "mAP", multi + rng.normal(0, 0.01)))
            rows.append((strategy, seed, "multilingual", x, "all", f"q{q}", "rank_distance",
                         distance + rng.integers(-3, 4)))
    frame = pd.DataFrame(rows, columns=["strategy", "seed", "setting", "query_lang", "pool_lang", "query_id",
                                        "metric", "value"])
    return frame.assign(model=MODEL, eval_dataset="xquad-r")


@pytest.fixture(scope="module")
def tables():
    per_query = per_query_frame()
    return per_query, macro_averages(per_query)


def test_strategies_keep_the_study_order_and_colours():
    assert plots.ordered_strategies(STRATEGIES + ("mystery",)) == ["zero-shot", "x-x-mono", "x-y", "hybrid", "mystery"]
    assert plots.strategy_palette(["hybrid"])["hybrid"] == plots.STRATEGY_COLORS["hybrid"]


def test_language_matrix_is_the_mean_over_seeds(tables):
    per_query, metrics = tables
    matrix = plots.language_matrix(metrics, "x-y")
    expected = per_query[(per_query.strategy == "x-y") & (per_query.query_lang == "de")
                         & (per_query.pool_lang == "ru")]["value"].mean()
    assert matrix.shape == (3, 3)
    assert matrix.loc["de", "ru"] == pytest.approx(expected)


def test_figures_have_one_panel_per_strategy_and_name_the_model(tables, tmp_path):
    from hybridlib.stats import bootstrap_ci

    per_query, metrics = tables
    heat = plots.map_heatmaps(metrics)
    panels = [ax for ax in heat.axes if ax.get_title() in STRATEGIES]
    assert [ax.get_title() for ax in panels] == ["zero-shot", "x-x-mono", "x-y", "hybrid"]
    assert MODEL in heat._suptitle.get_text()
    assert panels[0].get_ylabel() == "query language X"

    intervals = bootstrap_ci(per_query, bootstrap_samples=50)
    bars = plots.setting_bars(intervals)
    ax = bars.axes[0]
    assert len(ax.patches) == 4 * 3  # strategies x settings
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted(round(v, 6) for v in intervals[intervals.metric == "mAP"]["mean"])
    assert MODEL in ax.get_title()
    dotted = plots.setting_bars(intervals, runs=metrics).axes[0]
    dots = np.concatenate([c.get_offsets()[:, 1] for c in dotted.collections if type(c).__name__ == "PathCollection"])
    macro = metrics[(metrics.metric == "mAP") & (metrics.query_lang == "all") & (metrics.pool_lang == "all")]
    assert sorted(np.round(dots, 9)) == sorted(np.round(macro["value"], 9))  # one dot per run and setting

    box = plots.rank_distance_distribution(per_query)
    assert box.axes[0].get_xlabel() == "query language"
    assert [t.get_text() for t in box.axes[0].get_xticklabels()] == list(LANGS)

    written = plots.save_figure(bars, tmp_path / "figs" / "bars")
    assert [p.name for p in written] == ["bars.png", "bars.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary file left


def test_training_curves_smooth_each_run(tmp_path):
    steps = np.arange(1, 41)
    log = pd.concat([pd.DataFrame({"step": steps, "loss": 3 - 0.05 * steps + 0.1 * (-1) ** steps,
                                   "strategy": s, "seed": 0}) for s in ("x-y", "hybrid")])
    val = pd.DataFrame({"step": [20, 40, 20, 40], "val_loss": [2.0, 1.5, 2.1, 1.6],
                        "strategy": ["x-y", "x-y", "hybrid", "hybrid"], "seed": 0})
    fig = plots.training_curves(log, val)
    train_ax, val_ax = fig.axes
    assert len(train_ax.lines) == 4 and len(val_ax.lines) == 2  # raw + smoothed per run; one per run
    smoothed = train_ax.lines[1].get_ydata()
    assert np.ptp(np.diff(smoothed)) < np.ptp(np.diff(log["loss"].to_numpy()[:40]))  # less jagged
    assert [t.get_text() for t in train_ax.get_legend().get_texts()] == ["x-y", "hybrid"]  # study order
    assert plots.smooth(pd.Series([1.0, 1.0, 1.0]), 5).tolist() == [1.0, 1.0, 1.0]
    empty = plots.training_curves(pd.DataFrame())  # a zero-shot-only study has no training log
    assert empty.axes[0].texts[0].get_text() == "no fine-tuned model in this study"


def test_training_curves_draw_the_selection_score_before_the_own_losses():
    log = pd.DataFrame({"step": [1, 2], "loss": [2.0, 1.0], "strategy": "hybrid", "seed": 0})
    val = pd.DataFrame({"step": [0, 2], "val_loss": [2.0, 1.5], "val_score": [0.7, 0.8], "strategy": "hybrid",
                        "seed": 0})
    fig = plots.training_curves(log, val)
    assert len(fig.axes) == 3
    assert fig.axes[1].get_ylabel() == "val_score" and fig.axes[1].lines[0].get_ydata().tolist() == [0.7, 0.8]
    assert fig.axes[2].get_ylabel() == "val_loss" and fig.axes[2].lines[0].get_ydata().tolist() == [2.0, 1.5]


def test_alpha_sweep_plots_each_alpha_in_order():
    alphas = {"hybrid-a0": 0.0, "hybrid": 0.5, "hybrid-a1": 1.0}
    rows = [(name, "xquad-r", setting, metric, 0.5 + alpha / 10, 0.4 + alpha / 10, 0.6 + alpha / 10, 1)
            for name, alpha in alphas.items() for setting in ("monolingual", "crosslingual", "multilingual")
            for metric in ("mAP", "rank_distance") if metric == "mAP" or setting == "multilingual"]
    rows.append(("zero-shot", "xquad-r", "multilingual", "mAP", 0.3, 0.25, 0.35, 1))
    intervals = pd.DataFrame(rows, columns=["strategy", "eval_dataset", "setting", "metric", "mean", "ci_low",
                                            "ci_high", "n_runs"]).assign(model=MODEL)
    fig = plots.alpha_sweep(intervals.iloc[::-1], alphas)  # rows in any order
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4  # three settings and the rank distance
    multilingual = fig.axes[2]
    assert multilingual.lines[0].get_xdata().tolist() == [0.0, 0.5, 1.0]
    assert multilingual.lines[0].get_ydata().tolist() == pytest.approx([0.5, 0.55, 0.6])
    assert list(multilingual.lines[-1].get_ydata()) == [0.3, 0.3]  # the zero-shot line


def test_alpha_convergence_averages_seeds_per_alpha():
    alphas = {"hybrid-a0": 0.0, "hybrid": 0.5}
    val = pd.DataFrame({"strategy": ["hybrid-a0"] * 4 + ["hybrid"] * 4, "seed": [0, 0, 1, 1] * 2,
                        "step": [0, 10] * 4, "val_loss": [2.0, 1.0, 2.2, 1.2, 2.0, 0.8, 2.0, 0.6],
                        "val_score": [0.5, 0.6, 0.5, 0.7, 0.5, 0.8, 0.5, 0.9]})
    fig = plots.alpha_convergence(val, alphas)
    score_ax, loss_ax = fig.axes[:2]
    means = [line for line in loss_ax.lines if line.get_label() in ("0", "0.5")]
    assert [line.get_ydata().tolist() for line in means] == [pytest.approx([2.1, 1.1]), pytest.approx([2.0, 0.7])]
    assert [t.get_text() for t in score_ax.get_legend().get_texts()] == ["0", "0.5"]
    assert len(score_ax.lines) == 6  # two seeds and the mean per alpha


def test_hybrid_alphas_of_the_sweep_file():
    from hybridlib.config import load_params
    from hybridlib.study import hybrid_alphas

    alphas = hybrid_alphas(load_params(PARAMS / "alpha-sweep.yaml"))
    assert list(alphas.values()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert alphas["hybrid"] == 0.5


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="lacks column"):
        plots.map_heatmaps(pd.DataFrame({"strategy": ["x-y"]}))


def test_paper_numbers_are_the_published_table():
    paper = report.paper_results()
    row = paper[(paper.source == "paper LaBSE") & (paper.strategy == "hybrid") & (paper.eval_dataset == "mlqa-r")]
    assert row[["mono mAP", "cross mAP", "multi mAP", "rank distance"]].values.tolist() == [[.686, .681, .579, 195.0]]
    assert len(paper) == 12


def test_comparison_table_puts_ours_next_to_the_paper(tables):
    per_query, metrics = tables
    table = report.comparison_table(metrics)
    assert table["source"].tolist()[:6] == ["paper XLM-R"] * 3 + ["paper LaBSE"] * 3
    ours = table[table.source == f"ours: {MODEL}"]
    assert ours["strategy"].tolist() == ["zero-shot", "x-x-mono", "x-y", "hybrid"]
    cells = per_query[(per_query.strategy == "x-y") & (per_query.setting == "crosslingual")]
    expected = cells.groupby(["seed", "query_lang", "pool_lang"])["value"].mean().groupby("seed").mean().mean()
    assert ours.set_index("strategy").loc["x-y", "cross mAP"] == pytest.approx(expected)
    assert ours["n_seeds"].tolist() == [2, 2, 2, 2]
    assert set(table["eval_dataset"]) == {"xquad-r"}  # the paper's MLQA-R rows only when we evaluate on it


def test_ordering_reads_best_first(tables):
    ordering = report.strategy_ordering(report.comparison_table(tables[1]))
    ours = ordering[ordering.source == f"ours: {MODEL}"].iloc[0]
    assert ours["mono mAP"] == "hybrid > x-x-mono > x-y"
    assert ours["rank distance"] == "hybrid > x-y > x-x-mono"  # lower is better
    xlmr = ordering[ordering.source == "paper XLM-R"].iloc[0]
    assert xlmr["multi mAP"] == "x-y = hybrid > x-x-mono"  # .593 twice in the paper


def test_markdown_table_formats_numbers():
    frame = pd.DataFrame({"a": ["x|y", "z"], "b": [0.12345, np.nan], "rank distance": [12.34, 5.0]})
    text = report.markdown_table(frame, column_digits={"rank distance": 1})
    assert text.splitlines() == ["| a | b | rank distance |", "|---|---|---|",
                                 "| x\\|y | 0.123 | 12.3 |", "| z |  | 5.0 |"]


def test_report_has_every_table_and_links_the_figures(tables, tmp_path):
    from hybridlib.stats import VERDICTS, bootstrap_ci, claim_verdicts, paired_tests

    per_query, metrics = tables
    clusters = {f"q{q}": f"p{q // 3}" for q in range(12)}  # 12 ids in 4 paragraphs
    significance = paired_tests(per_query, clusters=clusters, bootstrap_samples=50)
    verdicts = claim_verdicts(significance)
    comparison = report.comparison_table(metrics)
    figure = plots.setting_bars(bootstrap_ci(per_query, bootstrap_samples=50))
    figures = plots.save_figure(figure, tmp_path / "figures" / "settings")
    intervals = report.interval_table(bootstrap_ci(per_query, clusters=clusters, bootstrap_samples=50))
    assert intervals["strategy"].tolist() == ["zero-shot", "x-x-mono", "x-y", "hybrid"]
    assert intervals.columns.tolist() == ["eval_dataset", "strategy", "mono mAP", "cross mAP", "multi mAP",
                                          "rank distance", "runs", "clusters", "resampled"]
    assert intervals["runs"].tolist() == [2] * 4 and intervals["clusters"].tolist() == [4] * 4
    assert set(intervals["resampled"]) == {"clusters and training runs"}
    path = report.write_report(tmp_path, StudyParams(), comparison, report.strategy_ordering(comparison),
                               intervals, significance, verdicts, figures, MODEL)
    text = path.read_text()
    assert "only the ordering of the strategies" in text
    assert "![settings](figures/settings.png)" in text and "settings.pdf" not in text
    assert "| Hybrid lowers the rank distance relative to X-X-mono |" in text.replace("| xquad-r ", "")
    assert text.count("\n| paper XLM-R") == 0 and "| xquad-r | paper XLM-R | x-x-mono | 0.792 |" in text
    assert "| clusters | runs | resampled |" in text and "| 4 | 2 / 2 | clusters and training runs |" in text
    assert all(f"- **{word}**: " in text for word in VERDICTS) and "non-inferiority margin is 0.003 mAP" in text
    assert "Each trained strategy has 1 training run (seeds 0)" in text  # StudyParams(): seeds [0]
    assert "## Cross-lingual mAP by language pair group" not in text  # no pair_groups given


def test_claims_table_shows_ours_beside_the_paper_s_differences():
    from hybridlib.stats import claim_verdicts

    significance = pd.DataFrame([("m", "xquad-r", "monolingual", "mAP", "hybrid", "x-x-mono", 0.008, 0.002, 0.014,
                                  0.01, 40, 10, 3, 5, "paragraph clusters and training runs")],
                                columns=["model", "eval_dataset", "setting", "metric", "strategy_a", "strategy_b",
                                         "mean_diff", "ci_low", "ci_high", "p_value", "n_queries", "n_clusters",
                                         "n_runs_a", "n_runs_b", "resampling_unit"])
    table = report.claims_table(claim_verdicts(significance))
    row = table[(table["claim"].str.startswith("Hybrid matches")) & (table["comparison"] == "hybrid − x-x-mono")
                & (table["setting"] == "monolingual")].iloc[0]
    assert row["ours [95% CI]"] == "+0.008 [+0.002, +0.014]"
    assert (row["paper XLM-R"], row["paper LaBSE"]) == ("+0.006 (in our CI)", "+0.009 (in our CI)")
    assert (row["clusters"], row["runs"], row["resampled"]) == (10, "3 / 5", "paragraph clusters and training runs")
    untested = table[table["claim"].str.startswith("Hybrid lowers")].iloc[0]
    assert untested["ours [95% CI]"] == "" and untested["paper XLM-R"] == "-123.6"  # positions: not compared
    assert untested["setting"] == "multilingual rank_distance"


# ------------------------------------------------------------------ study glue on synthetic parts
def write_parts(run_dir, per_query, tags):
    from hybridlib import study

    (run_dir / "metrics" / "parts").mkdir(parents=True, exist_ok=True)
    for strategy, seed in tags:
        rows = per_query[(per_query.strategy == strategy) & (per_query.seed == seed)]
        study.evaluation._save_part(run_dir, study.model_tag(strategy, seed), macro_averages(rows), rows)


def test_collect_metrics_takes_this_study_s_parts_only(tables, tmp_path, caplog):
    from hybridlib import study

    per_query, _ = tables
    params = StudyParams(strategies=["zero-shot", "x-y", "hybrid"], seeds=[0, 1])
    write_parts(tmp_path, per_query, [("zero-shot", 0), ("x-y", 0), ("x-y", 1), ("hybrid", 0),
                                      ("x-x-mono", 0)])  # x-x-mono: left from other parameters
    with caplog.at_level("INFO", logger="hybridlib.study"):
        metrics, collected, missing = study.collect_metrics(params, tmp_path)
    assert missing == ["hybrid-seed1"] and "not evaluated yet" in caplog.text
    assert sorted(set(zip(metrics.strategy, metrics.seed))) == [("hybrid", 0), ("x-y", 0), ("x-y", 1),
                                                               ("zero-shot", 0)]
    assert len(collected) == len(per_query[per_query.strategy.isin(["x-y", "hybrid", "zero-shot"])
                                           & ~((per_query.strategy != "x-y") & (per_query.seed == 1))])
    assert pd.read_csv(tmp_path / "metrics" / "metrics.csv").shape == metrics.shape


def test_summary_and_rank_distance_tables_average_seeds(tables, tmp_path):
    from hybridlib import study

    per_query, metrics = tables
    summary = study.summary_table(metrics)
    assert summary.index.get_level_values("strategy").tolist() == ["zero-shot", "x-x-mono", "x-y", "hybrid"]
    assert summary["seeds"].tolist() == [2, 2, 2, 2]
    hybrid = per_query[(per_query.strategy == "hybrid") & (per_query.setting == "multilingual")
                       & (per_query.metric == "rank_distance")]
    params = StudyParams(train_dataset="mlqa-r", train_languages=["en", "de"])
    table = study.rank_distance_table(params, metrics, tmp_path)
    row = table[(table.strategy == "hybrid") & (table.query_lang == "all")].iloc[0]
    assert row["rank_distance"] == pytest.approx(hybrid.groupby(["seed", "query_lang"])["value"].mean().mean())
    assert row["n_seeds"] == 2
    assert dict(zip(table.query_lang, table.seen)) == {"all": "", "de": "yes", "en": "yes", "ru": "no"}
    assert (tmp_path / "metrics" / "rank_distance.csv").is_file()
    wide = study.rank_distance_wide(table)
    assert wide.columns.tolist() == ["zero-shot", "x-x-mono", "x-y", "hybrid"]
    assert wide.index.get_level_values("query_lang").tolist() == ["de", "en", "ru", "all"]


def test_training_table_shows_a_variant_s_settings():
    from hybridlib import study
    from hybridlib.config import params_from_dict

    params = params_from_dict({"strategies": ["hybrid"], "variants": [{"name": "hybrid-a0.25", "strategy": "hybrid",
                                                                       "alpha": 0.25}]})
    table = study.training_table(params, "hybrid-a0.25")
    assert table.loc["training run", "value"] == "hybrid-a0.25" and table.loc["batches", "value"] == "hybrid"
    assert table.loc["alpha", "value"] == "0.25"
    assert study.expected_tags(params) == ["hybrid-seed0", "hybrid-a0.25-seed0"]


def test_style_table_bolds_the_best_and_prints_counts_as_integers(tables):
    comparison = report.comparison_table(tables[1])
    html = report.style_table(comparison, group_by=["eval_dataset", "source"], skip_strategies=["zero-shot"]).to_html()
    assert ">2<" in html and ">2.000<" not in html  # n_seeds
    styler = report.style_table(comparison, group_by=["eval_dataset", "source"], skip_strategies=["zero-shot"])
    styler._compute()
    bold = {(r, c) for (r, c), props in styler.ctx.items() if ("font-weight", "bold") in props}
    columns = list(comparison.columns)
    ours = comparison.index[comparison.source == f"ours: {MODEL}"]
    best_rank_distance = comparison.loc[ours].set_index("strategy")["rank distance"].drop("zero-shot").idxmin()
    row = comparison.index[(comparison.source == f"ours: {MODEL}") & (comparison.strategy == best_rank_distance)][0]
    assert (row, columns.index("rank distance")) in bold
    # a skipped strategy never counts as best: without hybrid, x-x-mono leads monolingually
    styler = report.style_table(comparison, group_by=["eval_dataset", "source"], skip_strategies=["hybrid"])
    styler._compute()
    bold = {(r, c) for (r, c), props in styler.ctx.items() if ("font-weight", "bold") in props}
    ours_row = {s: comparison.index[(comparison.source == f"ours: {MODEL}") & (comparison.strategy == s)][0]
                for s in ("hybrid", "x-x-mono")}
    assert not any(r == ours_row["hybrid"] for r, _ in bold)
    assert (ours_row["x-x-mono"], columns.index("mono mAP")) in bold


@pytest.mark.parametrize("keep_models", [False, True])
def test_train_and_evaluate_runs_a_variant_and_drops_or_keeps_its_weights(tmp_path, monkeypatch, tiny_encoder,
                                                                           keep_models):
    """The glue around training (train itself is replaced: tests/test_train.py covers it)."""
    from pathlib import Path

    import hybridlib.train as train_module
    from hybridlib import study
    from hybridlib.config import params_from_dict
    from hybridlib.models import DualEncoder

    calls = []

    def fake_train(params, strategy, seed, out_dir, progress=True):
        out_dir = Path(out_dir)
        (out_dir / "model").mkdir(parents=True)
        (out_dir / "model" / "weights").write_text("w")
        pd.DataFrame({"step": [1], "loss": [1.0]}).to_csv(out_dir / "train_log.csv", index=False)
        pd.DataFrame({"step": [0, 1], "val_loss": [2.0, 1.0]}).to_csv(out_dir / "val_log.csv", index=False)
        calls.append((strategy, params.alpha, seed))
        return train_module.TrainResult(out_dir / "model", out_dir / "train_log.csv", 1.0, False, 1)

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(DualEncoder, "from_params", classmethod(lambda cls, params, name_or_path=None: tiny_encoder))
    params = params_from_dict({"strategies": ["hybrid"], "eval_languages": ["en", "de"], "eval_max_ids": 4,
                               "keep_models": keep_models,
                               "variants": [{"name": "hybrid-a0.25", "strategy": "hybrid", "alpha": 0.25}]})
    metrics = study.train_and_evaluate(params, tmp_path, "hybrid-a0.25", 1)
    assert calls == [("hybrid", 0.25, 1)]  # the variant's settings, its batch strategy
    assert set(metrics["strategy"]) == {"hybrid-a0.25"} and set(metrics["seed"]) == {1}
    assert (tmp_path / "metrics" / "parts" / "hybrid-a0.25-seed1.csv").is_file()
    assert study.read_val_log(tmp_path, "hybrid-a0.25", 1)["val_loss"].tolist() == [2.0, 1.0]
    assert (tmp_path / "models" / "hybrid-a0.25-seed1" / "weights").is_file() == keep_models
    assert not (tmp_path / "training").exists()
    with pytest.raises(Exception, match="no training run named 'x-y'"):
        study.train_and_evaluate(params, tmp_path, "x-y", 0)


def test_alpha_sweep_figures_are_drawn_only_for_a_sweep(tmp_path):
    from hybridlib import study
    from hybridlib.config import load_params

    sweep = load_params(PARAMS / "alpha-sweep.yaml")
    alphas = study.hybrid_alphas(sweep)
    intervals = pd.DataFrame([(label, "xquad-r", setting, "mAP", 0.5 + alpha / 10, 0.45, 0.65, 3, MODEL)
                              for label, alpha in alphas.items()
                              for setting in ("monolingual", "crosslingual", "multilingual")],
                             columns=["strategy", "eval_dataset", "setting", "metric", "mean", "ci_low", "ci_high",
                                      "n_seeds", "model"])
    (tmp_path / "train_log").mkdir()
    for label, seed in itertools.product(alphas, sweep.seeds):
        pd.DataFrame({"step": [0, 10], "val_loss": [2.0, 1.0], "val_R@10": [0.7, 0.9]}).to_csv(
            tmp_path / "train_log" / f"{study.model_tag(label, seed)}.val.csv", index=False)
    paths = study.alpha_sweep_figures(sweep, intervals, tmp_path)
    assert sorted(p.name for p in paths) == ["alpha_convergence.pdf", "alpha_convergence.png",
                                             "alpha_sweep_xquad-r.pdf", "alpha_sweep_xquad-r.png"]
    assert study.alpha_sweep_figures(load_params(PARAMS / "default.yaml"), intervals, tmp_path) == []
    ablation = load_params(PARAMS / "ablation.yaml")  # three hybrid runs, all at alpha 0.5
    assert len(study.hybrid_alphas(ablation)) == 3
    assert study.alpha_sweep_figures(ablation, intervals, tmp_path) == []


def test_seen_unseen_table_has_a_row_per_strategy_and_split(tmp_path):
    from hybridlib import study
    from hybridlib.config import params_from_dict

    params = params_from_dict({"train_languages": ["de", "en"], "bootstrap_samples": 50})
    split = study.seen_unseen(params, per_query_frame(), tmp_path)
    assert (tmp_path / "metrics" / "seen_unseen.csv").is_file()
    table = report.seen_unseen_table(study.load_seen_unseen(tmp_path))
    assert table.columns.tolist() == ["eval_dataset", "strategy", "languages", "mono mAP", "cross mAP",
                                      "multi mAP", "rank distance"]
    assert table["strategy"].tolist() == [s for s in ("zero-shot", "x-x-mono", "x-y", "hybrid") for _ in range(2)]
    assert table["languages"].tolist() == ["seen", "unseen"] * 4
    zero_seen = split[(split.strategy == "zero-shot") & (split.setting == "monolingual") & (split.languages == "seen")]
    assert zero_seen["mean"].iloc[0] == pytest.approx(0.50, abs=0.01)  # LEVELS: zero-shot mono mAP 0.50
    assert table.loc[0, "mono mAP"].startswith(f"{zero_seen['mean'].iloc[0]:.3f} [")
    assert report.seen_unseen_table(study.load_seen_unseen(tmp_path / "none")).empty


def test_rank_distance_figure_shows_the_fraction_of_the_pool():
    rows = [("hybrid", 0, "xquad-r", "de", f"q{i}", metric, value)
            for i, distance in enumerate([30.0, 60.0, 90.0])
            for metric, value in (("rank_distance", distance), ("rank_distance_fraction", distance / 300))]
    per_query = pd.DataFrame(rows, columns=["strategy", "seed", "eval_dataset", "query_lang", "query_id", "metric",
                                            "value"]).assign(model=MODEL)
    fig = plots.rank_distance_distribution(per_query)
    right = fig.axes[0].child_axes  # the secondary y axis
    assert len(right) == 1 and right[0].get_ylabel() == "fraction of the pool (300 candidates)"


# ------------------------------------------------------------------ language pair groups (issue 17)
def pair_frame(langs, value_of) -> pd.DataFrame:
    """Cross-lingual per-query rows of every ordered pair of ``langs``, two runs, 4 ids in 2 paragraphs;
    each value is ``value_of(query_lang, pool_lang)`` exactly, so every interval collapses to it."""
    rows = [("hybrid", seed, "crosslingual", x, y, f"q{q}", "mAP", value_of(x, y))
            for seed, q, (x, y) in itertools.product((0, 1), range(4), itertools.permutations(langs, 2))]
    frame = pd.DataFrame(rows, columns=["strategy", "seed", "setting", "query_lang", "pool_lang", "query_id",
                                        "metric", "value"])
    return frame.assign(model=MODEL, eval_dataset="mlqa-r")


@pytest.mark.parametrize("langs, seen, counts", [
    (("a", "b", "c", "d"), ["a", "b"], {"seen ↔ seen": 2, "seen ↔ unseen": 8, "unseen ↔ unseen": 2}),
    # MLQA-R's 7 languages, hi and vi unseen: 5 x 4, 2 x (5 x 2), 2 x 1 ordered pairs
    (("ar", "de", "en", "es", "hi", "vi", "zh"), ["ar", "de", "en", "es", "zh"],
     {"seen ↔ seen": 20, "seen ↔ unseen": 20, "unseen ↔ unseen": 2}),
])
def test_pair_groups_count_ordered_pairs_and_average_their_own(langs, seen, counts):
    from hybridlib.stats.languages import PAIR_GROUPS, pair_group_split

    level = {2: 0.9, 1: 0.6, 0: 0.3}  # by the number of seen languages of the pair
    frame = pair_frame(langs, lambda x, y: level[(x in seen) + (y in seen)])
    split = pair_group_split(frame, seen, clusters={f"q{q}": f"p{q // 2}" for q in range(4)}, bootstrap_samples=20)
    assert dict(zip(split["pair_group"], split["n_cells"])) == counts
    for group, expected in zip(PAIR_GROUPS, (0.9, 0.6, 0.3)):
        row = split[split["pair_group"] == group].iloc[0]
        assert row["mean"] == pytest.approx(expected) and (row["ci_low"], row["ci_high"]) == pytest.approx(
            (expected, expected))  # constant values: every replicate is the mean (rounding only)
        assert (row["n_runs"], row["n_clusters"]) == (2, 2)
    table = report.pair_group_table(split)
    assert table.columns.tolist() == ["eval_dataset", "strategy", *(f"{g} ({counts[g]} pairs)" for g in PAIR_GROUPS),
                                      "runs"]
    assert table.iloc[0, 2] == "0.900 [0.900, 0.900]" and table["runs"].tolist() == [2]


def test_pair_groups_of_a_study_are_written_and_shown(tmp_path):
    from hybridlib import study
    from hybridlib.config import params_from_dict

    params = params_from_dict({"train_languages": ["de", "en"], "bootstrap_samples": 50})
    split = study.analysis.pair_groups(params, per_query_frame(), tmp_path)  # de, en seen; ru unseen
    groups = split.drop_duplicates("pair_group")
    assert dict(zip(groups["pair_group"], groups["n_cells"])) == {"seen ↔ seen": 2, "seen ↔ unseen": 4}
    # (one unseen language: no unseen ↔ unseen pair)
    assert split["strategy"].nunique() == 4 and set(split["metric"]) == {"mAP"}
    loaded = study.analysis.load_pair_groups(tmp_path)
    assert len(loaded) == len(split) and study.analysis.load_pair_groups(tmp_path / "none").empty
    table = report.pair_group_table(loaded)
    assert table.columns.tolist()[2:] == ["seen ↔ seen (2 pairs)", "seen ↔ unseen (4 pairs)", "runs"]
    assert report.pair_group_table(pd.DataFrame()).empty


def test_gain_pairs_compare_with_zero_shot_and_dapt_with_its_fine_tuning():
    from hybridlib import study

    assert study.gain_pairs(["hybrid", "zero-shot", "x-y"]) == [("x-y", "zero-shot"), ("hybrid", "zero-shot")]
    assert study.gain_pairs(["dapt+hybrid", "hybrid", "dapt", "zero-shot"]) == [
        ("dapt", "zero-shot"), ("hybrid", "zero-shot"), ("dapt+hybrid", "zero-shot"), ("dapt+hybrid", "hybrid")]
    assert study.gain_pairs(["x-y", "hybrid"]) == []  # nothing to compare with


def test_language_gains_are_per_query_language_and_shown(tmp_path):
    from hybridlib import study
    from hybridlib.config import params_from_dict

    frame = per_query_frame()
    lift = (frame["strategy"] == "hybrid") & (frame["query_lang"] == "ru") & (frame["metric"] == "mAP")
    frame.loc[lift, "value"] += 0.05  # hybrid gains 0.05 more where the query is in Russian, in every setting
    params = params_from_dict({"train_languages": ["de", "en"], "bootstrap_samples": 200})
    gains = study.language_gains(params, frame, tmp_path)
    pairs = set(zip(gains["strategy_a"], gains["strategy_b"]))
    assert pairs == {(s, "zero-shot") for s in ("x-x-mono", "x-y", "hybrid")}
    assert set(gains["metric"]) == {"mAP"} and len(gains) == 3 * 3 * 3  # pairs x settings x query languages
    hybrid = gains[gains["strategy_a"] == "hybrid"].set_index(["setting", "query_lang"])
    base = {"monolingual": 0.82 - 0.50, "crosslingual": 0.72 - 0.30, "multilingual": 0.62 - 0.25}
    for (setting, lang), row in hybrid.iterrows():
        expected = base[setting] + (0.05 if lang == "ru" else 0.0)
        assert row["mean_diff"] == pytest.approx(expected, abs=0.01)  # noise: sd 0.01 / sqrt(24 values) per cell
        assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
        assert row["seen"] == ("no" if lang == "ru" else "yes")
    loaded = study.load_language_gains(tmp_path)
    assert len(loaded) == len(gains) and study.load_language_gains(tmp_path / "none").empty
    table = gains_view.language_gain_table(loaded)
    assert table.columns.tolist() == ["eval_dataset", "comparison", "query_lang", "seen", "mono mAP", "cross mAP",
                                      "multi mAP", "runs"]
    assert table["comparison"].iloc[0] == "x-x-mono − zero-shot"
    assert table["query_lang"].tolist()[:3] == ["de", "en", "ru"]  # the unseen language last
    assert table["runs"].iloc[0] == "2 / 2" and gains_view.language_gain_table(pd.DataFrame()).empty
    figure = gains_view.language_gain_figure(loaded)
    assert len(figure.axes) == 3 and "ru (unseen)" in [t.get_text() for t in figure.axes[0].get_yticklabels()]
    from hybridlib.stats import claim_verdicts, paired_tests

    significance = paired_tests(frame, bootstrap_samples=20)
    path = report.write_report(tmp_path, params, table, table, table, significance, claim_verdicts(significance),
                               [], MODEL, language_gains=table)
    assert "## Gains per query language" in path.read_text()
    lines = path.read_text().splitlines()
    row = next(line for line in lines if line.startswith("| xquad-r | hybrid − zero-shot | ru |"))
    assert float(row.split("|")[5].split()[0]) == pytest.approx(0.37, abs=0.01)  # mono: 0.32 + the 0.05 lift
    assert study.language_gains(params, frame[frame["strategy"] != "zero-shot"], tmp_path).empty
