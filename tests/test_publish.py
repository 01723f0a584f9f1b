"""``hybridlib run --publish`` (hybridlib.publish): ``results/<run_name>/`` from a finished run folder.

The run folder is a fake one built from small synthetic frames with the real statistics and report
functions (no training, no notebook runs): MLQA-R's seven languages, hi and vi unseen in training.
"""
from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from synthetic import macro_averages  # noqa: E402

from hybridlib import plots, publish, report  # noqa: E402
from hybridlib.config import StudyParams, load_params, params_from_dict  # noqa: E402
from hybridlib.io import write_table  # noqa: E402
from hybridlib.models import CPU_CLASSES  # noqa: E402
from hybridlib.stats import bootstrap_ci, claim_verdicts, paired_tests, unseen_language_split  # noqa: E402
from hybridlib.stats.languages import pair_group_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LANGS = ("ar", "de", "en", "es", "hi", "vi", "zh")  # MLQA-R
TRAINED = ["ar", "de", "en", "es", "zh"]  # hi, vi unseen
MODEL = "tiny model (synthetic)"
LEVELS = {"zero-shot": 0.5, "x-x-mono": 0.7, "x-y": 0.75, "hybrid": 0.8}


def fake_params() -> StudyParams:
    return params_from_dict({"run_name": "fake", "train_dataset": "xquad-r", "train_languages": TRAINED,
                             "eval_datasets": ["mlqa-r"], "strategies": list(LEVELS), "seeds": [0, 1],
                             "bootstrap_samples": 50})


def fake_per_query(n_ids: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for strategy, base in LEVELS.items():
        for seed, q in itertools.product([0] if strategy == "zero-shot" else [0, 1], range(n_ids)):
            for x, y in itertools.product(LANGS, LANGS):
                setting = "monolingual" if x == y else "crosslingual"
                rows.append((strategy, seed, setting, x, y, f"q{q}", "mAP", base + rng.normal(0, 0.02)))
            for x in LANGS:
                rows.append((strategy, seed, "multilingual", x, "all", f"q{q}", "mAP", base - 0.2))
                rows.append((strategy, seed, "multilingual", x, "all", f"q{q}", "rank_distance",
                             100 * (1 - base) + rng.integers(-3, 4)))
    frame = pd.DataFrame(rows, columns=["strategy", "seed", "setting", "query_lang", "pool_lang", "query_id",
                                        "metric", "value"])
    return frame.assign(model=MODEL, eval_dataset="mlqa-r")


def write_notebook(path: Path) -> None:
    """An executed notebook: a progress bar redrawn with carriage returns, then a result."""
    cell = nbformat.v4.new_code_cell("train()", execution_count=1)
    redraws = [nbformat.v4.new_output("stream", name="stderr", text=f"\rsteps: {k}/40") for k in range(41)]
    cell.outputs = redraws + [nbformat.v4.new_output("stream", name="stderr", text="\n"),
                              nbformat.v4.new_output("stream", name="stdout", text="model saved\n")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run folder as notebooks 01-05 leave it (per-query table included, to be left out)."""
    folder = tmp_path_factory.mktemp("runs") / "fake"
    params, per_query = fake_params(), fake_per_query()
    metrics, clusters = macro_averages(per_query), {f"q{q}": f"p{q // 2}" for q in range(6)}  # 6 ids in 3 paragraphs
    boot = dict(clusters=clusters, bootstrap_samples=50)
    write_table(metrics, folder / "metrics" / "metrics.csv")
    write_table(per_query, folder / "metrics" / "per_query.parquet")
    intervals = bootstrap_ci(per_query, **boot)
    significance = paired_tests(per_query, **boot)
    verdicts = claim_verdicts(significance)
    seen_unseen = unseen_language_split(per_query, TRAINED, **boot)
    pair_groups = pair_group_split(per_query[per_query.metric == "mAP"], TRAINED, **boot)
    for name, table in [("intervals", intervals), ("significance", significance), ("claims", verdicts),
                        ("seen_unseen", seen_unseen), ("pair_groups", pair_groups)]:
        write_table(table, folder / "metrics" / f"{name}.csv")
    figures = plots.save_figure(plots.setting_bars(intervals, "mlqa-r"), folder / "figures" / "settings_mlqa-r")
    comparison = report.comparison_table(metrics)
    report.write_report(folder, params, comparison, report.strategy_ordering(comparison),
                        report.interval_table(intervals), significance, verdicts, figures, MODEL,
                        report.seen_unseen_table(seen_unseen), report.pair_group_table(pair_groups))
    write_notebook(folder / "notebooks" / "02_train-hybrid-seed0.ipynb")
    return folder


@pytest.fixture(scope="module")
def published(run_dir, tmp_path_factory) -> Path:
    started = time.time() - 60.0
    steps = [{"step": "01_prepare_data.ipynb", "label": "prepare data and model", "status": "reused",
              "started": None, "finished": "2026-01-01T00:00:00+00:00", "seconds": None, "commit": None},
             {"step": "05_report.ipynb", "label": "report", "status": "ran", "started": publish._iso(started),
              "finished": publish._iso(started + 1), "seconds": 1.0, "commit": "0" * 40}]
    record = publish.run_record(fake_params(), "hybridlib run params/fake.yaml --publish",
                                publish.git_state(REPO), started, steps)
    target = tmp_path_factory.mktemp("results") / "fake"
    (target / "stale.txt").parent.mkdir(parents=True)
    (target / "stale.txt").write_text("from an earlier publication")
    return publish.publish_run(run_dir, fake_params(), target, record)


def test_the_folder_has_every_part_and_no_per_query_table(published):
    files = {p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file()}
    tables = ("intervals", "significance", "claims", "seen_unseen", "pair_groups")
    expected = {"report.md", "params.yaml", "run.json", "figures/settings_mlqa-r.png", "figures/settings_mlqa-r.pdf",
                "metrics/runs.csv", "metrics/comparison.csv",
                *(f"metrics/{t}.csv" for t in tables), *(f"latex/{t}.tex" for t in (*tables, "comparison"))}
    assert expected <= files
    assert {f for f in files if f.startswith("notebooks/")} == {"notebooks/02_train-hybrid-seed0.ipynb"}
    assert "stale.txt" not in files  # the folder is rebuilt
    assert not [f for f in files if f.endswith((".parquet", "metrics.csv"))]
    assert publish.folder_size(published) < publish.SIZE_BUDGET
    assert load_params(published / "params.yaml") == fake_params()
    runs = pd.read_csv(published / "metrics" / "runs.csv")  # each run's macro averages: 1 + 3 x 2 models
    assert set(runs.query_lang) == {"all"} and len(runs.drop_duplicates(["strategy", "seed"])) == 7


def test_report_links_resolve_from_the_folder_and_name_the_run(published):
    from test_docs import markdown_links

    text = (published / "report.md").read_text(encoding="utf-8")
    targets = [target for _, target in markdown_links(text)]
    assert "figures/settings_mlqa-r.png" in targets and "run.json" in targets and "latex/claims.tex" in targets
    assert [t for t in targets if not (published / t).is_file()] == []
    assert "## Cross-lingual mAP by language pair group" in text and "unseen: hi, vi" in text
    assert "Each trained strategy has 2 training runs (seeds 0, 1)" in text
    assert "`hybridlib run params/fake.yaml --publish` at " in text and "1 of 2 steps were reused" in text


def test_run_json_records_command_commit_times_and_machine(published):
    import torch

    record = json.loads((published / "run.json").read_text(encoding="utf-8"))
    assert record["command"] == "hybridlib run params/fake.yaml --publish" and record["run_name"] == "fake"
    assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"]) and isinstance(record["git"]["dirty"], bool)
    started, finished = pd.Timestamp(record["started"]), pd.Timestamp(record["finished"])
    # the wall time is end - start of the whole command (60 s before the fixture's publish) to 0.1 s;
    # the ISO times keep whole seconds, so they agree with it to 1 s
    assert record["wall_time_s"] >= 60.0
    assert abs((finished - started).total_seconds() - record["wall_time_s"]) <= 1.0
    assert record["resumed"] is True and [s["status"] for s in record["steps"]] == ["reused", "ran"]
    box = record["machine"]
    assert box["cpu_class"] in CPU_CLASSES.values() and box["cores"] >= 1
    assert box["torch"] == torch.__version__ and box["precision"] in ("fp32", "bf16", "fp16")
    assert box["device"] == "cpu" or box["device"].startswith(("cuda", "mps"))
    assert record["runs_per_strategy"] == 2 and record["evaluation"]["eval_max_ids"] is None
    others = publish.folder_size(published) - (published / "run.json").stat().st_size
    assert record["published_bytes"] == others


def test_notebooks_are_published_with_progress_redraws_collapsed(published):
    notebook = nbformat.read(published / "notebooks" / "02_train-hybrid-seed0.ipynb", as_version=4)
    outputs = notebook.cells[0].outputs
    assert [(o.name, o.text) for o in outputs] == [("stderr", "steps: 40/40\n"), ("stdout", "model saved\n")]


# ------------------------------------------------------------------------------ LaTeX tables
_SPECIAL = re.compile(r"(?<!\\)[_%#&$]")  # unescaped in a cell: would break LaTeX (math $...$ aside)


def parse_tabular(latex: str) -> tuple[str, list[list[str]]]:
    """The column spec and the rows (cells as written) of the one tabular in ``latex``; fails on a malformed one."""
    match = re.fullmatch(r"\s*\\begin\{tabular\}\{([lrc]+)\}\n(.*)\\end\{tabular\}\s*", latex, re.DOTALL)
    assert match, latex[:200]
    spec, body = match.groups()
    rows = []
    for line in body.splitlines():
        line = line.strip()
        if line in (r"\toprule", r"\midrule", r"\bottomrule") or not line:
            continue
        assert line.endswith(r"\\"), line
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)&", line[:-2])])
    return spec, rows


def _plain(cell: str) -> str:
    """A cell's text without LaTeX markup: math symbols back, escapes undone, bold dropped."""
    for symbol, command in publish._LATEX_SYMBOLS.items():
        cell = cell.replace(command, symbol)
    cell = re.sub(r"\\bfseries\s*", "", cell)
    return re.sub(r"\\([_%#&$])", r"\1", cell).replace(r"\textasciitilde ", "~")


@pytest.mark.parametrize("name", ["comparison", "intervals", "significance", "claims", "seen_unseen", "pair_groups"])
def test_latex_tables_parse_and_hold_the_report_s_table(published, run_dir, name):
    latex = (published / "latex" / f"{name}.tex").read_text(encoding="utf-8")
    assert latex.isascii(), "pdflatex reads it without unicode packages"
    spec, rows = parse_tabular(latex)
    metrics = pd.read_csv(run_dir / "metrics" / "metrics.csv")
    table = publish.display_tables(run_dir, metrics)[name]
    assert len(spec) == table.shape[1] and len(rows) == table.shape[0] + 1
    assert all(len(row) == len(spec) for row in rows)
    assert [_plain(c) for c in rows[0]] == [str(c) for c in table.columns]
    for row in rows:
        for cell in row:
            assert not _SPECIAL.search(re.sub(r"\$[^$]*\$", "", cell)), cell
    first = [_plain(c) for c in rows[1]]
    assert first[0] == str(table.iloc[0, 0]) and first[1] == str(table.iloc[0, 1])


def test_latex_escapes_text_and_keeps_numbers():
    frame = pd.DataFrame({"comparison": ["x_y − hybrid", "a & b"], "p": [0.01234, np.nan], "runs": [5, 3]})
    spec, rows = parse_tabular(publish.latex_table(frame))
    assert spec == "lrr"
    assert rows == [["comparison", "p", "runs"], [r"x\_y $-$ hybrid", "0.012", "5"], [r"a \& b", "", "3"]]


def test_publishing_needs_the_report(tmp_path):
    with pytest.raises(publish.PublishError, match="no report.md"):
        publish.publish_run(tmp_path, fake_params(), tmp_path / "out", {})


# ------------------------------------------------------------------------------ from the pipeline
def test_the_pipeline_records_reused_steps_and_the_whole_command(tmp_path, monkeypatch):
    """Steps are faked (they write their outputs): a first command runs 01 only, the second publishes."""
    import hybridlib.pipeline as pipeline

    def fake_execute(step, run_dir, params_path, notebooks_dir):
        for out in step.outputs:
            (run_dir / out).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / out).write_text("done")

    captured = {}
    monkeypatch.setattr(pipeline, "execute_step", fake_execute)
    monkeypatch.setattr(publish, "publish_run", lambda run_dir, params, target, record: captured.update(
        target=target, record=record) or target)
    params_file = tmp_path / "p.yaml"
    params_file.write_text("run_name: stub\nstrategies: [zero-shot]\n", encoding="utf-8")
    pipeline.run_study(params_file, runs_dir=tmp_path / "runs", only=["01_prepare_data"])
    history = json.loads((tmp_path / "runs" / "stub" / pipeline.STEPS_FILE).read_text())
    assert list(history) == ["01_prepare_data.ipynb"] and history["01_prepare_data.ipynb"]["status"] == "ran"

    started = time.time() - 5.0
    pipeline.run_study(params_file, runs_dir=tmp_path / "runs", publish=True, results_dir=tmp_path / "results",
                       command="hybridlib run p.yaml --publish", started=started)
    record = captured["record"]
    assert captured["target"] == tmp_path / "results" / "stub"
    assert record["command"] == "hybridlib run p.yaml --publish" and record["started_unix"] == round(started, 3)
    assert record["resumed"] is True
    statuses = {s["step"]: s["status"] for s in record["steps"]}
    assert statuses == {"01_prepare_data.ipynb": "reused", "03_evaluate.ipynb": "ran", "04_language_bias.ipynb": "ran",
                        "05_report.ipynb": "ran"}
    reused = record["steps"][0]
    assert reused["finished"] == history["01_prepare_data.ipynb"]["finished"]  # when it ran, from steps.json
    assert reused["commit"] == history["01_prepare_data.ipynb"]["commit"]


def test_default_command_rebuilds_the_command_line():
    from hybridlib.pipeline import default_command

    assert default_command("params/default.yaml", False, "runs", None, True) == \
        "hybridlib run params/default.yaml --publish"
    assert default_command("p.yaml", True, "/tmp/r", ["05_report"], False) == \
        "hybridlib run p.yaml --force --runs-dir /tmp/r  # only 05_report"
