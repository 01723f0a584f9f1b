"""The strategies dapt and dapt+hybrid in a study: DAPT's text, one DAPT run per seed shared by both
strategies, dapt evaluating the DAPT encoder, dapt+hybrid fine-tuning from it, the logs and the tables.

DAPT itself runs for real on the tiny encoder (tests/conftest.py); the hybrid fine-tuning of
dapt+hybrid is replaced (tests/test_train.py covers it) by a stand-in that records what it was
given and saves the encoder it started from.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hybridlib import plots, study
from hybridlib.config import params_from_dict
from hybridlib.dapt import UnsupportedArchitectureError, dapt_folder, study_paragraphs
from hybridlib.data import load_lareqa
from hybridlib.errors import HybridlibError
from hybridlib.study.logs import read_dapt_logs

WEIGHT = "encoder.layer.0.attention.self.query.weight"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dapt_params(model_dir, **changes):
    values = {"model": str(model_dir), "strategies": ["zero-shot", "dapt", "dapt+hybrid"],
              "train_languages": ["en", "de"], "train_max_ids": 40, "validation_ids": 8,
              "eval_languages": ["en", "de"], "eval_max_ids": 6, "max_length": 32, "seeds": [0, 1],
              "precision": "fp32", "device": "cpu", "dapt_steps": 2, "dapt_head_steps": 1, "dapt_batch_size": 2,
              "dapt_max_length": 32, "dapt_learning_rate": 1e-3, "dapt_head_learning_rate": 1e-2}
    return params_from_dict(values | changes)


# -- the text -----------------------------------------------------------------------------------

def test_dapt_text_is_the_training_paragraphs_after_languages_cap_and_validation(tiny_model_dir):
    from hybridlib.train import load_training_data, split_validation

    params = dapt_params(tiny_model_dir)
    paragraphs, held_out = study_paragraphs(params)
    data = load_lareqa("mlqa-r", ["de", "en"])
    tables, validation = split_validation(load_training_data(params), params.validation_ids)
    context_of = dict(zip(zip(data.questions["id"].astype(str), data.questions["lang"]),
                          data.candidates["context"].to_numpy()[data.questions["candidate"].to_numpy()]))
    trained = {context_of[(str(i), lang)] for i, lang in zip(tables[0]["id"], tables[0]["lang"])}
    validated = {context_of[(i.split(":", 1)[1], lang)] for i, lang in zip(validation["id"], validation["lang"])}
    assert set(paragraphs) == trained and len(paragraphs) == len(trained)  # each text once
    assert set(held_out) == validated - trained and held_out
    languages = dict(zip(data.candidates["context"], data.candidates["lang"]))
    assert {languages[text] for text in paragraphs} == {"en", "de"}
    # 40 question ids (a few paragraphs each in two languages) minus 8 held out: far fewer than MLQA-R's 3640
    assert len(paragraphs) < 80
    evaluation = set(load_lareqa("xquad-r").candidates["context"])
    assert not evaluation & (set(paragraphs) | set(held_out))  # never an evaluation dataset's text


def test_every_training_paragraph_without_a_cap_or_validation(tiny_model_dir):
    params = dapt_params(tiny_model_dir, train_max_ids=None, validation_ids=0, train_languages=None)
    paragraphs, held_out = study_paragraphs(params)
    assert held_out == []
    assert set(paragraphs) == set(load_lareqa("mlqa-r").candidates["context"])


# -- the glue -----------------------------------------------------------------------------------

@pytest.fixture
def fake_train(monkeypatch):
    """Replace hybrid fine-tuning: record (strategy, params, seed), save the starting encoder as the result."""
    import hybridlib.train as train_module

    calls = []

    def fake(params, strategy, seed, out_dir, progress=True):
        out_dir = Path(out_dir)
        shutil.copytree(params.model, out_dir / "model")
        pd.DataFrame({"step": [1], "loss": [1.0]}).to_csv(out_dir / "train_log.csv", index=False)
        calls.append((strategy, params, seed))
        return train_module.TrainResult(out_dir / "model", out_dir / "train_log.csv", 1.0, False, 1)

    monkeypatch.setattr(train_module, "train", fake)
    return calls


@pytest.fixture
def evaluated(monkeypatch):
    """Record a weight of every encoder the study evaluates, by strategy label."""
    from hybridlib.study import evaluation

    weights = {}
    original = evaluation.evaluate_encoder

    def spy(encoder, params, strategy, seed, cache=False):
        weights[(strategy, seed)] = encoder.model.state_dict()[WEIGHT].clone()
        return original(encoder, params, strategy, seed, cache=cache)

    monkeypatch.setattr(evaluation, "evaluate_encoder", spy)
    return weights


def test_one_dapt_per_seed_shared_by_dapt_and_dapt_hybrid(tiny_model_dir, tmp_path, fake_train, evaluated):
    params = dapt_params(tiny_model_dir)
    folder = dapt_folder(tmp_path, 0)
    metrics = study.train_and_evaluate(params, tmp_path, "dapt", 0, progress=False)
    assert set(metrics["strategy"]) == {"dapt"} and set(metrics["seed"]) == {0}
    assert (tmp_path / "metrics" / "parts" / "dapt-seed0.csv").is_file()
    done = json.loads((folder / "dapt_done.json").read_text())
    assert (done["head_steps"], done["steps"]) == (1, 2)
    assert done["settings"]["seed"] == 0 and done["settings"]["precision"] == "fp32"
    assert done["settings"]["batch_size"] == 2 and done["settings"]["learning_rate"] == 1e-3
    assert done["settings"]["head_learning_rate"] == 1e-2
    dapt_weights = load_file(folder / "model" / "model.safetensors")[WEIGHT]
    original = load_file(tiny_model_dir / "model.safetensors")[WEIGHT]
    # dapt evaluates the DAPT encoder, not the encoder as loaded
    assert torch.equal(evaluated[("dapt", 0)], dapt_weights) and not torch.equal(dapt_weights, original)
    log = study.read_train_log(tmp_path, "dapt", 0)
    assert log["step"].tolist() == [1, 2, 3] and log["phase"].tolist() == ["head", "full", "full"]
    assert "masked_tokens" in log.columns
    assert not fake_train and (folder / "model").is_dir()  # kept: dapt+hybrid needs it
    stamp = (folder / "dapt_done.json").stat().st_mtime_ns

    study.train_and_evaluate(params, tmp_path, "dapt+hybrid", 0, progress=False)
    [(strategy, run_params, seed)] = fake_train
    # hybrid batches with the study's settings, from the DAPT encoder of the same seed, which is not re-trained
    assert (strategy, seed, run_params.model) == ("hybrid", 0, str(folder / "model"))
    assert run_params.model_dump(exclude={"model"}) == params.model_dump(exclude={"model"})
    assert (folder / "dapt_done.json").stat().st_mtime_ns == stamp
    assert torch.equal(evaluated[("dapt+hybrid", 0)], dapt_weights)
    assert (tmp_path / "metrics" / "parts" / "dapt+hybrid-seed0.csv").is_file()
    # both strategies done for seed 0: the DAPT encoder is released, its logs stay
    assert not (folder / "model").exists() and (folder / "dapt_log.csv").is_file()
    assert not (tmp_path / "training").exists()

    study.train_and_evaluate(params, tmp_path, "dapt+hybrid", 1, progress=False)  # seed 1 first: its own DAPT
    assert fake_train[-1][1].model == str(dapt_folder(tmp_path, 1) / "model")
    assert json.loads((dapt_folder(tmp_path, 1) / "dapt_done.json").read_text())["settings"]["seed"] == 1
    assert (dapt_folder(tmp_path, 1) / "model").is_dir()  # dapt of seed 1 has not run yet

    # a re-run after the release (e.g. hybridlib run --force) pre-trains again, to the same encoder (fp32, seeded)
    study.train_and_evaluate(params, tmp_path, "dapt", 0, progress=False)
    assert torch.equal(evaluated[("dapt", 0)], dapt_weights)

    logs = read_dapt_logs(params, tmp_path)
    assert sorted(set(zip(logs["strategy"], logs["seed"]))) == [("dapt", 0), ("dapt", 1)]
    assert set(study.read_train_logs(params, tmp_path)["strategy"]) == {"dapt+hybrid"}  # InfoNCE logs only
    evals = study.read_dapt_evals(params, tmp_path)  # held-out loss: before, after the 1 head step, at the end
    assert evals.groupby("seed")["step"].apply(list).to_dict() == {0: [0, 1, 3], 1: [0, 1, 3]}
    figure = plots.dapt_curves(logs, evals)
    boundary = [line for line in figure.axes[0].lines if line.get_linestyle() == "--"]
    assert len(figure.axes) == 2 and boundary[0].get_xdata()[0] == 1.5  # after step 1, the last head step
    _, _, missing = study.collect_metrics(params, tmp_path)
    assert missing == ["zero-shot", "dapt-seed1"]


def test_dapt_with_keep_models_keeps_the_dapt_encoder(tiny_model_dir, tmp_path, evaluated):
    params = dapt_params(tiny_model_dir, strategies=["dapt"], keep_models=True, seeds=[0])
    study.train_and_evaluate(params, tmp_path, "dapt", 0, progress=False)
    kept = load_file(tmp_path / "models" / "dapt-seed0" / "model.safetensors")[WEIGHT]
    assert torch.equal(kept, evaluated[("dapt", 0)])
    assert not (dapt_folder(tmp_path, 0) / "model").exists()  # the only DAPT strategy is done


def test_changed_dapt_settings_pre_train_again(tiny_model_dir, tmp_path, evaluated):
    study.train_and_evaluate(dapt_params(tiny_model_dir, strategies=["dapt"]), tmp_path, "dapt", 0, progress=False)
    first = evaluated[("dapt", 0)]
    study.train_and_evaluate(dapt_params(tiny_model_dir, strategies=["dapt"], dapt_learning_rate=2e-3), tmp_path,
                             "dapt", 0, progress=False)
    done = json.loads((dapt_folder(tmp_path, 0) / "dapt_done.json").read_text())
    assert done["settings"]["learning_rate"] == 2e-3 and not torch.equal(first, evaluated[("dapt", 0)])


def test_held_out_paragraphs_measure_the_masked_lm_loss(tiny_model_dir, tmp_path):
    from hybridlib.dapt import pretrain_for_study

    result = pretrain_for_study(dapt_params(tiny_model_dir), tmp_path, 0, progress=False)
    evals = pd.read_csv(dapt_folder(tmp_path, 0) / "dapt_eval.csv")
    assert evals["step"].tolist() == [0, 1, 3] and evals["phase"].tolist() == ["start", "head", "full"]
    assert None not in (result.eval_loss_start, result.eval_loss_head, result.eval_loss_end)


def test_an_encoder_without_a_masked_lm_counterpart_is_named(tiny_model_dir, tmp_path):
    from transformers import GPT2Config, GPT2Model

    folder = tmp_path / "gpt2"
    GPT2Model(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tiny_model_dir / name, folder / name)
    with pytest.raises(UnsupportedArchitectureError, match="GPT2Model .*no masked-LM counterpart") as error:
        study.train_and_evaluate(dapt_params(folder), tmp_path / "run", "dapt", 0, progress=False)
    assert "\n" not in str(error.value) and isinstance(error.value, HybridlibError)


def test_training_table_of_the_dapt_strategies(tiny_model_dir):
    params = dapt_params(tiny_model_dir)
    dapt = study.training_table(params, "dapt")
    assert dapt.loc["batches", "value"].startswith("none") and dapt.loc["dapt_steps", "value"] == "2"
    assert dapt.loc["dapt_head_steps", "value"] == "1" and "dapt_head_learning_rate" in dapt.index
    assert "alpha" not in dapt.index
    both = study.training_table(params, "dapt+hybrid")
    assert both.loc["batches", "value"] == "hybrid" and {"dapt_mask_rate", "alpha", "max_steps"} <= set(both.index)
    assert both.index.is_unique
