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
