"""The ``hybridlib`` command: what ``evaluate`` prints and writes, and that library log lines reach the terminal."""
import logging

import pandas as pd

from hybridlib.cli import main
from hybridlib.constants import METRIC_COLUMNS
from hybridlib.data import load_lareqa


def test_cli_evaluate_writes_the_tidy_csv(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "m.csv"
    assert main(["evaluate", str(tiny_model_dir), "--dataset", "mlqa-r", "--max-ids", "4",
                 "--strategy", "x-y", "--precision", "fp32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(fp32) on mlqa-r" in printed
    n_lang = len(load_lareqa("mlqa-r", max_ids=4).languages)
    assert f"{n_lang} monolingual" in printed and "mono mAP" in printed and "rank distance" in printed
    assert "rank distance fraction" in printed and "own lang@10" in printed and "multi Hit@1" in printed
    table = pd.read_csv(out)
    assert list(table.columns) == list(METRIC_COLUMNS) and set(table["strategy"]) == {"x-y"}
    assert set(table["eval_dataset"]) == {"mlqa-r"} and table["value"].notna().all()
    assert list((tmp_path / "cache" / "embeddings").glob("*.npy"))


def test_cli_lets_the_library_info_lines_through(caplog):
    """Library modules log progress at INFO; without main()'s logging set-up Python drops those lines."""
    package = logging.getLogger("hybridlib")
    before = package.level
    package.setLevel(logging.NOTSET)
    try:
        logging.getLogger("hybridlib.study").info("dropped")
        assert main(["check", "params/smoke.yaml"]) == 0
        logging.getLogger("hybridlib.study").info("shown")
    finally:
        package.setLevel(before)
    assert "shown" in caplog.text and "dropped" not in caplog.text


def test_cli_check_warns_when_the_cpu_emulates_the_precision(tmp_path, monkeypatch, capsys):
    from hybridlib.models import device

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(device, "emulated_slowdown", lambda precision: 95.0)
    params = tmp_path / "p.yaml"
    params.write_text("precision: bf16\ndevice: cpu\n", encoding="utf-8")
    assert main(["check", str(params)]) == 0
    captured = capsys.readouterr()
    assert ": ok (" in captured.out
    warning = captured.err.strip()
    assert warning.count("\n") == 0 and warning.startswith("warning: precision bf16 is emulated")
    assert "95x slower" in warning and "auto would pick fp32" in warning
    params.write_text("precision: auto\ndevice: cpu\n", encoding="utf-8")
    assert main(["check", str(params)]) == 0 and capsys.readouterr().err == ""


def test_cli_run_passes_its_command_line_and_start_time(monkeypatch):
    """run.json's command and wall time are the whole `hybridlib run` command's (issue 17)."""
    import time

    import hybridlib.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_study", lambda params, **kwargs: calls.append((params, kwargs)))
    before = time.time()
    assert main(["run", "params/smoke.yaml", "--publish", "--runs-dir", "my runs"]) == 0
    (params, kwargs), = calls
    assert params == "params/smoke.yaml" and kwargs["publish"] is True and kwargs["runs_dir"] == "my runs"
    assert kwargs["command"] == "hybridlib run params/smoke.yaml --publish --runs-dir 'my runs'"
    assert before <= kwargs["started"] <= time.time()
