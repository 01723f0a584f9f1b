"""Parameter files: every bad input is one line naming the key, exit code 2, no traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from hybridlib.cli import main
from hybridlib.config import ParamsError, StudyParams, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, key, problem", [
    ("alpha: 1.5\n", "alpha", "less than or equal to 1"),
    ("alpha: -0.1\n", "alpha", "greater than or equal to 0"),
    ("batch_size: 1\n", "batch_size", "greater than or equal to 2"),
    ("batch_size: eight\n", "batch_size", "valid integer"),
    ("batch_size: 8.5\n", "batch_size", "valid integer"),
    ("learning_rate: fast\n", "learning_rate", "valid number"),
    ("freeze_embeddings: maybe\n", "freeze_embeddings", "valid boolean"),
    ("strategies: [hybrid, x-z]\n", "strategies", "unknown strategy 'x-z'"),
    ("train_languages: [en, xx]\n", "train_languages", "unknown language 'xx'"),
    ("eval_languages: [klingon]\n", "eval_languages", "unknown language"),
    ("bogus_key: 1\n", "bogus_key", "unknown key"),
    ("pooling: max\n", "pooling", "'mean' or 'cls'"),
    ("train_dataset: squad\n", "train_dataset", "unknown training dataset"),
    ("train_languages: [el, en]\n", "train_languages", "el not in mlqa-r"),
    ("seeds: []\n", "seeds", "at least one seed"),
    ("train_dataset: xquad-r\neval_datasets: [xquad-r]\n", "train_dataset, eval_datasets", "zero-shot"),
    ("train_dataset: [mlqa-r, xquad-r]\neval_datasets: [mlqa-r]\n", "train_dataset, eval_datasets", "'mlqa-r'"),
    ("variants: [{name: h, strategy: hybrid, alpha: 2}]\n", "variants.0.alpha", "less than or equal to 1"),
    ("variants: [{name: h, strategy: zero-shot}]\n", "variants.0.strategy", "unknown strategy"),
    ("variants: [{name: h, strategy: hybrid, lr: 1}]\n", "variants.0.lr", "unknown key (known keys: name, strategy"),
    ("variants: [{name: x-y, strategy: hybrid}]\n", "variants", "'x-y' is used twice"),
    # domain-adaptive pre-training: the ranges are hybridlib.dapt's setting_problems
    ("strategies: [zero-shot, dapt]\n", "dapt_steps", "required by the strategy dapt"),
    ("strategies: [dapt+hybrid]\ndapt_steps: 0\n", "dapt_steps", "must be > 0, not 0"),
    ("strategies: [dapt]\ndapt_steps: 2.5\n", "dapt_steps", "valid integer"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_mask_rate: 0\n", "dapt_mask_rate", "must lie in (0, 1), not 0.0"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_mask_rate: 1\n", "dapt_mask_rate", "must lie in (0, 1), not 1.0"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_mask_rate: .nan\n", "dapt_mask_rate", "must lie in (0, 1)"),
    ("dapt_mask_rate: 1.5\n", "dapt_mask_rate", "must lie in (0, 1)"),  # checked without a DAPT strategy too
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_learning_rate: 0\n", "dapt_learning_rate", "must be > 0"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_head_steps: -1\n", "dapt_head_steps", "must be >= 0, not -1"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_head_steps: 1.5\n", "dapt_head_steps", "valid integer"),
    ("dapt_head_learning_rate: 0\n", "dapt_head_learning_rate", "must be > 0, not 0.0"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_head_learning_rate: .inf\n", "dapt_head_learning_rate", "must be > 0"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_head_learning_rate: fast\n", "dapt_head_learning_rate",
     "valid number"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_batch_size: 0\n", "dapt_batch_size", "must be > 0"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_max_length: 2\n", "dapt_max_length", "must be >= 3"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_warmup_ratio: 1\n", "dapt_warmup_ratio", "must lie in [0, 1)"),
    ("strategies: [dapt]\ndapt_steps: 5\ndapt_weight_decay: -1\n", "dapt_weight_decay", "must be >= 0"),
    ("dapt_freeze_embeddings: maybe\n", "dapt_freeze_embeddings", "valid boolean"),
    ("dapt_precision: fp32\n", "dapt_precision", "unknown key"),
    ("strategies: [dapt]\ndapt_steps: 5\ntrain_dataset: mmarco\n", "strategies", "mmarco has none"),
    ("strategies: [dapt+hybrid]\ndapt_steps: 5\ntrain_languages: [en]\n", "train_languages", "two languages"),
    ("strategies: [dapt]\ndapt_steps: 5\ntrain_dataset: xquad-r\n", "train_dataset, eval_datasets", "zero-shot"),
])
def test_bad_values_name_the_key(tmp_path, text, key, problem):
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, text))
    message = str(error.value)
    assert "\n" not in message
    assert f"{key}:" in message and problem in message


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("- a\n- b\n", "mapping"),
    ("just a string\n", "mapping"),
    ("alpha: [0.5\n", "not valid YAML"),
])
def test_unusable_files(tmp_path, text, problem):
    with pytest.raises(ParamsError, match=problem):
        load_params(write(tmp_path, text))


def test_yaml_exponent_floats_are_numbers(tmp_path):
    params = load_params(write(tmp_path, "learning_rate: 3e-5\nalpha: 1\n"))
    assert params.learning_rate == pytest.approx(3e-5)
    assert params.alpha == 1.0


def test_a_zero_shot_only_study_may_evaluate_any_dataset():
    assert StudyParams(train_dataset="xquad-r", eval_datasets=["xquad-r"], strategies=["zero-shot"])


def test_defaults_are_valid():
    assert StudyParams().alpha == 0.5


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_parameter_files_pass(path):
    load_params(path)


def test_cli_check_rejects_cleanly(tmp_path, capsys):
    assert main(["check", str(write(tmp_path, "alpha: 2\n"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alpha" in err and "Traceback" not in err


def test_cli_check_exit_code_in_a_real_process(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hybridlib.cli", "check", str(write(tmp_path, "batch_size: 1\n"))],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "batch_size" in done.stderr and "Traceback" not in done.stderr


def test_variants_are_training_runs_with_their_settings(tmp_path):
    params = load_params(write(tmp_path, "strategies: [zero-shot, hybrid]\nvariants:\n"
                                         "  - {name: hybrid-a0.25, strategy: hybrid, alpha: 0.25}\n"
                                         "  - {name: hybrid+sym, strategy: hybrid, symmetric_loss: true}\n"))
    runs = {label: (strategy, p.alpha, p.symmetric_loss) for label, strategy, p in params.training_runs()}
    assert runs == {"hybrid": ("hybrid", 0.5, False), "hybrid-a0.25": ("hybrid", 0.25, False),
                    "hybrid+sym": ("hybrid", 0.5, True)}
    with pytest.raises(ParamsError, match="no training run named 'x-y'"):
        params.for_run("x-y")


def test_dapt_settings_come_from_one_place():
    from dataclasses import fields

    from hybridlib.config import DAPT_KEYS
    from hybridlib.dapt import DaptSettings

    params = StudyParams(strategies=["zero-shot", "dapt", "dapt+hybrid"], dapt_steps=7)
    defaults = {f.name: f.default for f in fields(DaptSettings) if f.name in DAPT_KEYS and f.name != "steps"}
    assert params.dapt_values() == {"steps": 7, **defaults}
    assert set(DAPT_KEYS) == {f.name for f in fields(DaptSettings)} - {"precision", "seed"}
    assert params.dapt_strategies == ["dapt", "dapt+hybrid"]
    assert [label for label, _, _ in params.training_runs()] == ["dapt", "dapt+hybrid"]
    assert StudyParams().dapt_steps is None and StudyParams().dapt_strategies == []


def test_cli_check_accepts_the_dapt_study(capsys):
    assert main(["check", str(ROOT / "params" / "dapt.yaml")]) == 0
    params = load_params(ROOT / "params" / "dapt.yaml")
    default = load_params(ROOT / "params" / "default.yaml")
    assert params.strategies == ["zero-shot", "hybrid", "dapt", "dapt+hybrid"]
    same = ("model", "train_dataset", "train_languages", "validation_ids", "eval_datasets", "eval_languages",
            "eval_max_ids", "eval_sample_seed", "seeds", "max_steps", "batch_size", "learning_rate", "alpha",
            "precision", "bootstrap_samples")
    assert {k: getattr(params, k) for k in same} == {k: getattr(default, k) for k in same}
