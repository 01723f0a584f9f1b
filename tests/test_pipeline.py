"""``hybridlib run``: the whole smoke study end to end, and the pipeline's rules.

- one end-to-end run of ``params/smoke.yaml`` (subprocess, minutes; marked slow) and the run
  folder it leaves: executed notebooks, metrics for every strategy and setting, figures,
  significance, report; a second run skips every step; changed parameters are refused;
- the rules (skip, make-like staleness, stop at the first failing notebook, resume, --force,
  --publish) on stub notebooks that only write their outputs (seconds each);
- a bad parameter file fails before any notebook starts; a model folder that does not exist
  stops the real study in 01_prepare_data, named with its cell.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from hybridlib.config import load_params
from hybridlib.pipeline import Step, StepFailed, is_done, run_study, study_steps
from hybridlib.stats import CLAIMS, DAPT_CLAIMS, VERDICTS

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"
STRATEGIES = ["zero-shot", "x-x-mono", "x-y", "hybrid", "dapt", "dapt+hybrid"]
FINE_TUNED = ["x-x-mono", "x-y", "hybrid", "dapt+hybrid"]  # validated during training (dapt: DAPT only)
SETTINGS = ["monolingual", "crosslingual", "multilingual"]


def hybridlib(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run the ``hybridlib`` command as a user would (same interpreter, the test's environment)."""
    env = dict(os.environ)
    env.setdefault("HYBRIDLIB_MIRROR", str(ROOT.parent / "shared" / "data"))
    return subprocess.run([sys.executable, "-m", "hybridlib.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)


def write_params(path: Path, **changes) -> Path:
    values = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    values.update(changes)
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------- the smoke study
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = hybridlib("run", SMOKE, "--runs-dir", runs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs / "smoke", result


@pytest.mark.slow
def test_smoke_study_leaves_a_complete_run_folder(smoke_run):
    run_dir, result = smoke_run
    executed = sorted(p.name for p in (run_dir / "notebooks").glob("*.ipynb"))
    assert executed == ["01_prepare_data.ipynb", "02_train-dapt+hybrid-seed0.ipynb", "02_train-dapt-seed0.ipynb",
                        "02_train-hybrid-seed0.ipynb", "02_train-x-x-mono-seed0.ipynb",
                        "02_train-x-y-seed0.ipynb", "03_evaluate.ipynb", "04_language_bias.ipynb",
                        "05_report.ipynb"]
    for name in executed:
        nb = nbformat.read(run_dir / "notebooks" / name, as_version=4)
        assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"], name
    printed = result.stdout + result.stderr  # progress lines are logged (stderr)
    for step in range(1, 10):
        assert f"[{step}/9]" in printed
    assert load_params(run_dir / "params.yaml") == load_params(SMOKE)


@pytest.mark.slow
def test_smoke_metrics_cover_every_strategy_and_setting(smoke_run):
    run_dir, _ = smoke_run
    metrics = pd.read_csv(run_dir / "metrics" / "metrics.csv")
    averaged = metrics[(metrics.query_lang == "all") & (metrics.pool_lang == "all") & (metrics.metric == "mAP")]
    assert sorted(zip(averaged.strategy, averaged.setting)) == sorted(
        (s, setting) for s in STRATEGIES for setting in SETTINGS)
    assert averaged["value"].between(0, 1).all()
    assert metrics["model"].str.contains("dequantized").all()  # the model is named honestly
    pairs = metrics[(metrics.strategy == "hybrid") & (metrics.metric == "mAP") & (metrics.query_lang != "all")]
    assert pairs.groupby("setting").size().to_dict() == {"crosslingual": 12, "monolingual": 4, "multilingual": 4}
    distance = pd.read_csv(run_dir / "metrics" / "rank_distance.csv")
    assert set(distance.strategy) == set(STRATEGIES)
    # one DAPT (seed 0) served dapt and dapt+hybrid, then its encoder was released; its log stays
    dapt = run_dir / "dapt" / "seed0"
    assert (dapt / "dapt_done.json").is_file() and not (dapt / "model").exists()
    assert pd.read_csv(run_dir / "train_log" / "dapt-seed0.csv")["phase"].tolist() == ["head", "full", "full"]
    assert set(distance.query_lang) == {"all", "de", "en", "es", "ru"}
    assert distance.set_index("query_lang").loc["ru", "seen"].eq("no").all()


@pytest.mark.slow
def test_smoke_report_significance_and_figures(smoke_run):
    run_dir, _ = smoke_run
    significance = pd.read_csv(run_dir / "metrics" / "significance.csv")
    # pairs of 6 strategies x (3 mAP settings + rank distance, its fraction of the pool, own-language share)
    assert len(significance) == 15 * 6
    assert significance["p_value"].between(0, 1).all()
    # the unit of replication and the numbers of clusters and runs are named in every row
    assert set(significance["resampling_unit"]) == {"paragraph clusters and training runs"}
    assert significance["n_clusters"].between(1, significance["n_queries"].min()).all()
    assert (significance[["n_runs_a", "n_runs_b"]] == 1).all().all()  # the smoke study has one seed
    claims = pd.read_csv(run_dir / "metrics" / "claims.csv")
    assert set(claims["claim"]) == {c.name for c in CLAIMS + DAPT_CLAIMS}  # the DAPT questions too
    assert claims["verdict"].isin(list(VERDICTS)).all()
    paper_claims = claims[claims["claim"].isin({c.name for c in CLAIMS})]
    assert paper_claims[["paper_xlmr", "paper_labse"]].notna().all().all()  # the paper's effect beside ours
    assert {"n_clusters", "n_runs_a", "n_runs_b", "resampling_unit"} <= set(claims.columns)
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    for stem in ("map_heatmaps_xquad-r", "settings_xquad-r", "rank_distance_xquad-r", "training_curves",
                 "dapt_curves", "language_gains_xquad-r"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= figures
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| xquad-r | paper LaBSE | hybrid | 0.817 |" in report
    links = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(links) == 6 and all((run_dir / link).is_file() for link in links)
    gains = pd.read_csv(run_dir / "metrics" / "language_gains.csv")  # per query language, against zero-shot
    assert ("dapt+hybrid", "hybrid") in set(zip(gains["strategy_a"], gains["strategy_b"]))
    assert "## Gains per query language" in report
    # disk: without keep_models no weights stay in the run folder (no models/, no training/)
    assert not (run_dir / "models").exists() and not (run_dir / "training").exists()



@pytest.mark.slow
def test_smoke_training_lowers_the_validation_loss_of_every_strategy(smoke_run):
    # 4 steps of the real default encoder (hybrid: 0.62 -> 0.44 in bf16), far beyond rounding
    run_dir, _ = smoke_run
    for strategy in FINE_TUNED:
        val = pd.read_csv(run_dir / "train_log" / f"{strategy}-seed0.val.csv")
        assert val["step"].tolist() == [0, 4], strategy
        assert val["val_loss"].iloc[1] < val["val_loss"].iloc[0], (strategy, val["val_loss"].tolist())


@pytest.mark.slow
def test_second_run_skips_every_step(smoke_run):
    run_dir, _ = smoke_run
    before = (run_dir / "metrics" / "metrics.csv").stat().st_mtime_ns
    result = hybridlib("run", SMOKE, "--runs-dir", run_dir.parent)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("done, skipped") == 9
    assert (run_dir / "metrics" / "metrics.csv").stat().st_mtime_ns == before


@pytest.mark.slow
def test_changed_parameters_are_refused(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    result = hybridlib("run", write_params(tmp_path / "p.yaml", alpha=0.3), "--runs-dir", run_dir.parent)
    assert result.returncode == 2
    assert "holds results of other parameters (changed: alpha)" in result.stderr


# ------------------------------------------------------------------------- failures before work
def test_unknown_key_fails_before_any_notebook(tmp_path):
    params = write_params(tmp_path / "typo.yaml", batch_sise=8)
    result = hybridlib("run", params, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2
    assert "batch_sise: unknown key" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_missing_model_folder_stops_in_01_naming_the_cell(tmp_path):
    params = write_params(tmp_path / "nomodel.yaml", model=str(tmp_path / "no-such-model"), strategies=["zero-shot"])
    result = hybridlib("run", params, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("hybridlib run: error: 01_prepare_data (prepare data and model) failed in cell [")
    assert "`study.describe_model(params)`" in error and "no-such-model" in error
    kept = tmp_path / "runs" / "smoke" / "notebooks" / "01_prepare_data.ipynb"
    assert any(o.output_type == "error" for c in nbformat.read(kept, as_version=4).cells for o in c.get("outputs", []))
    assert "[2/4]" not in result.stdout  # nothing after the failing step ran


# ---------------------------------------------------------------------- the rules, on stub notebooks
STUB_OUTPUTS = {"01_prepare_data": ["data/prepared.json"], "03_evaluate": ["metrics/metrics.csv"],
                "04_language_bias": ["metrics/rank_distance.csv", "metrics/seen_unseen.csv"],
                "05_report": ["report.md", "metrics/significance.csv"]}


def write_stubs(folder: Path, failing: str = "") -> Path:
    """Notebooks with the study's names that only write their outputs (``failing``: raises in its 2nd cell)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, outputs in STUB_OUTPUTS.items():
        parameters = nbformat.v4.new_code_cell('params_path = ""\nrun_dir = ""')
        parameters.metadata["tags"] = ["parameters"]
        write = nbformat.v4.new_code_cell(
            "from pathlib import Path\n"
            f"for out in {outputs!r}:\n"
            "    (Path(run_dir) / out).parent.mkdir(parents=True, exist_ok=True)\n"
            "    (Path(run_dir) / out).write_text('done')")
        cells = [parameters, nbformat.v4.new_code_cell("x = 1")]
        if name == failing:
            cells.append(nbformat.v4.new_code_cell("raise ValueError('stub failure')"))
        nb = nbformat.v4.new_notebook(cells=cells + [write])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


@pytest.fixture
def zero_shot_params(tmp_path):
    return write_params(tmp_path / "zero.yaml", run_name="stub", strategies=["zero-shot"])


def mtimes(run_dir: Path) -> dict:
    return {out: (run_dir / out).stat().st_mtime_ns for outs in STUB_OUTPUTS.values() for out in outs
            if (run_dir / out).exists()}


def test_failure_stops_the_run_keeps_finished_steps_and_resumes(tmp_path, zero_shot_params, caplog):
    runs = tmp_path / "runs"
    with pytest.raises(StepFailed) as failure:
        run_study(zero_shot_params, runs_dir=runs, notebooks_dir=write_stubs(tmp_path / "broken", "04_language_bias"))
    message = str(failure.value)
    assert message.startswith("04_language_bias (language bias (rank distance)) failed in cell [4] "
                              "`raise ValueError('stub failure')`: ValueError: stub failure")
    run_dir = runs / "stub"
    assert set(mtimes(run_dir)) == {"data/prepared.json", "metrics/metrics.csv"}  # 01 and 03 kept, 05 not run
    kept = nbformat.read(run_dir / "notebooks" / "04_language_bias.ipynb", as_version=4)
    assert any(o.output_type == "error" for c in kept.cells for o in c.get("outputs", []))

    caplog.clear()
    finished = mtimes(run_dir)
    with caplog.at_level("INFO", logger="hybridlib.pipeline"):
        run_study(zero_shot_params, runs_dir=runs, notebooks_dir=write_stubs(tmp_path / "fixed"))
    printed = caplog.text
    assert "[1/4] 01_prepare_data: prepare data and model: done, skipped" in printed
    assert "[2/4] 03_evaluate: evaluate (zero-shot) and collect metrics: done, skipped" in printed
    assert "[3/4] 04_language_bias: language bias (rank distance) ..." in printed
    after = mtimes(run_dir)
    assert {k: after[k] for k in finished} == finished and "report.md" in after

    run_study(zero_shot_params, runs_dir=runs, notebooks_dir=tmp_path / "fixed", force=True)
    assert all(mtimes(run_dir)[k] > after[k] for k in after)  # --force re-ran every step


def test_publish_always_runs_the_report_then_publishes_the_run(tmp_path, zero_shot_params, monkeypatch, caplog):
    import hybridlib.publish as publish

    published = []
    monkeypatch.setattr(publish, "publish_run", lambda run_dir, params, target, record: published.append(
        (Path(run_dir), Path(target), record)) or Path(target))
    stubs = write_stubs(tmp_path / "stubs")
    run_study(zero_shot_params, runs_dir=tmp_path / "runs", notebooks_dir=stubs)
    assert not published
    caplog.clear()
    with caplog.at_level("INFO", logger="hybridlib.pipeline"):
        run_study(zero_shot_params, runs_dir=tmp_path / "runs", notebooks_dir=stubs, publish=True,
                  results_dir=tmp_path / "results")
    printed = caplog.text
    assert printed.count("done, skipped") == 3  # 01, 03 and 04; the report runs again
    assert "05_report: report: tables, significance, figures ..." in printed
    [(run_dir, target, record)] = published
    assert run_dir == tmp_path / "runs" / "stub" and target == tmp_path / "results" / "stub"  # one per run_name
    assert [step["status"] for step in record["steps"]] == ["reused", "reused", "reused", "ran"]


def test_a_step_is_stale_when_what_it_reads_is_newer(tmp_path):
    steps = study_steps(load_params(SMOKE))
    assert [s.output_name for s in steps] == [
        "01_prepare_data.ipynb", "02_train-x-x-mono-seed0.ipynb", "02_train-x-y-seed0.ipynb",
        "02_train-hybrid-seed0.ipynb", "02_train-dapt-seed0.ipynb", "02_train-dapt+hybrid-seed0.ipynb",
        "03_evaluate.ipynb", "04_language_bias.ipynb", "05_report.ipynb"]
    for step in steps:
        for out in step.outputs:
            (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / out).write_text("x")
    for number, step in enumerate(steps):  # make the outputs' times follow the order of the steps
        for out in step.outputs:
            os.utime(tmp_path / out, ns=(10**18 + number * 10**9,) * 2)
    assert all(is_done(step, steps, tmp_path) for step in steps)
    os.utime(tmp_path / "metrics/parts/x-y-seed0.csv", ns=(10**18 + 10 * 10**9,) * 2)  # x-y retrained
    assert [s.output_name for s in steps if not is_done(s, steps, tmp_path)] == ["03_evaluate.ipynb"]
    assert not is_done(Step("05_report", "", always=True, outputs=("report.md",)), steps, tmp_path)
    (tmp_path / "report.md").unlink()
    assert not is_done(steps[-1], steps, tmp_path)


def test_variants_are_trained_as_their_own_steps():
    params = load_params(ROOT / "params" / "alpha-sweep.yaml")
    trained = [s.parameters["strategy"] for s in study_steps(params)
               if s.notebook == "02_train" and s.parameters["seed"] == 0]
    assert trained == ["hybrid", "hybrid-a0.00", "hybrid-a0.25", "hybrid-a0.75", "hybrid-a1.00"]
