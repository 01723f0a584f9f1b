"""Tests of hybridlib.dapt: BERT masking against its definition and transformers' collator, the MLM
head around the encoder, the DAPT loop (its head and full phases, resumption in either, outputs,
errors) on the tiny encoder.

One test (``slow``) pre-trains the real default encoder (8 head steps, then 16 full steps) and checks
that its masked-LM loss on held-out MLQA-R paragraphs (the same masked positions each time) goes down.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hybridlib.dapt import (
    IGNORE_INDEX,
    DaptError,
    DaptSettings,
    UnsupportedArchitectureError,
    continue_pretraining,
    evaluation_batches,
    fresh_head_parameters,
    mask_tokens,
    masked_lm_head,
    masked_lm_logits,
    masked_lm_loss,
    masked_lm_model,
    training_batch,
    training_paragraphs,
)
from hybridlib.dapt.corpus import masked_batch, token_windows
from hybridlib.data import load_lareqa
from hybridlib.errors import HybridlibError

Z = 5.0  # binomial bounds at 5 standard deviations: a correct implementation fails with probability < 1e-6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def paragraphs():
    return training_paragraphs("mlqa-r", ["en", "de", "es"])


# -- masking ----------------------------------------------------------------------------------

class _Vocab:
    """What mask_tokens needs of a tokenizer: the mask id and the vocabulary size."""

    mask_token_id = 4

    def __len__(self):
        return 250002


def _within_binomial(count: int, trials: int, p: float) -> bool:
    return abs(count - trials * p) <= Z * math.sqrt(trials * p * (1 - p))


def test_mask_tokens_follows_the_bert_definition():
    vocab = len(_Vocab())
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab, (400, 250), generator=generator)
    lengths = torch.randint(2, 251, (400,), generator=generator)
    special = (torch.arange(250) >= lengths[:, None]) | (torch.arange(250) == 0)  # <s> and padding
    original = input_ids.clone()
    inputs, labels = mask_tokens(input_ids, special, _Vocab(), 0.15, torch.Generator().manual_seed(2))
    assert torch.equal(input_ids, original)  # not changed in place
    selected = labels != IGNORE_INDEX
    assert not selected[special].any()
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(inputs[~selected], original[~selected])
    n, m = int((~special).sum()), int(selected.sum())
    assert _within_binomial(m, n, 0.15)
    # Among the selected: <mask> with 0.8, a uniform random id with 0.1 (it may itself be the
    # mask id or the original, with probability 1 / vocab each), the original with 0.1.
    chosen, kept = inputs[selected], original[selected]
    as_mask = int((chosen == _Vocab.mask_token_id).sum())
    as_original = int((chosen == kept).sum())
    assert _within_binomial(as_mask, m, 0.8 + 0.1 / vocab)
    assert _within_binomial(as_original, m, 0.1 + 0.1 / vocab)
    assert _within_binomial(m - as_mask - as_original, m, 0.1 * (1 - 2 / vocab))
    assert int(inputs.min()) >= 0 and int(inputs.max()) < vocab


def test_mask_tokens_is_reproducible_from_the_generator():
    ids = torch.randint(5, 1000, (8, 64), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    a = mask_tokens(ids, special, _Vocab(), 0.15, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, _Vocab(), 0.15, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, special, _Vocab(), 0.15, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_tokens_draws_like_the_transformers_collator(tokenizer, paragraphs):
    from transformers import DataCollatorForLanguageModeling

    if "seed" not in {f.name for f in dataclasses.fields(DataCollatorForLanguageModeling)}:
        pytest.skip("this transformers' collator takes no seed (added in 4.51)")
    windows = token_windows(tokenizer, paragraphs[:16], 64)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=123)
    expected = collator([{"input_ids": w, "special_tokens_mask": [int(t in tokenizer.all_special_ids) for t in w]}
                         for w in windows])
    ours = masked_batch(tokenizer, windows, 0.15, torch.Generator().manual_seed(123))
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["labels"], expected["labels"])


def test_training_batches_depend_only_on_seed_and_step(tokenizer, paragraphs):
    a = training_batch(tokenizer, paragraphs, 3, 4, 32, 0.15, seed=0)
    b = training_batch(tokenizer, paragraphs, 3, 4, 32, 0.15, seed=0)
    c = training_batch(tokenizer, paragraphs, 4, 4, 32, 0.15, seed=0)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert a["input_ids"].shape[0] == 4 and a["input_ids"].shape[1] <= 32
    assert not torch.equal(a["labels"], c["labels"][:, :a["labels"].shape[1]])


# -- paragraphs -------------------------------------------------------------------------------

def test_training_paragraphs_are_the_distinct_contexts_without_questions(paragraphs):
    data = load_lareqa("mlqa-r", ["en", "de", "es"])
    assert len(paragraphs) == len(set(paragraphs))
    assert set(paragraphs) == set(data.candidates["context"])
    assert not set(paragraphs) & set(data.questions["text"])
    german = training_paragraphs(data, ["de"])
    assert set(german) == set(data.candidates.loc[data.candidates["lang"] == "de", "context"])
    # every answer sentence lies in its paragraph
    sample = data.candidates.sample(50, random_state=0)
    assert all(sentence.strip() in context for sentence, context in zip(sample["text"], sample["context"]))


# -- the MLM head -----------------------------------------------------------------------------

@pytest.fixture
def tiny_mlm(tiny_model_dir):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False)
    return encoder, masked_lm_model(encoder, seed=0).eval()


def test_mlm_model_keeps_the_encoder_and_ties_the_decoder(tiny_model_dir, tiny_mlm):
    from transformers import AutoModel, BertForMaskedLM

    encoder, mlm = tiny_mlm
    assert isinstance(mlm, BertForMaskedLM) and mlm.base_model is encoder
    assert mlm.get_output_embeddings().weight is encoder.get_input_embeddings().weight
    pretrained = AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False).state_dict()
    assert all(torch.equal(value, pretrained[name]) for name, value in encoder.state_dict().items())
    transform = mlm.cls.predictions.transform.dense.weight
    again = masked_lm_model(AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False), seed=0)
    other = masked_lm_model(AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False), seed=1)
    assert torch.equal(again.cls.predictions.transform.dense.weight, transform)  # fresh, from the seed
    assert not torch.equal(other.cls.predictions.transform.dense.weight, transform)


def test_head_runs_only_at_masked_positions_and_matches_the_full_head(tokenizer, paragraphs, tiny_mlm):
    _, mlm = tiny_mlm
    batch = masked_batch(tokenizer, token_windows(tokenizer, paragraphs[:6], 48), 0.15,
                         torch.Generator().manual_seed(0))
    seen = []
    hook = masked_lm_head(mlm).register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        logits, targets = masked_lm_logits(mlm, batch["input_ids"], batch["attention_mask"], batch["labels"])
        hook.remove()
        full = mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    selected = batch["labels"] != IGNORE_INDEX
    n, hidden = int(selected.sum()), mlm.config.hidden_size
    assert seen == [(n, hidden)]  # the head saw the n masked positions, not all of them
    assert logits.shape == (n, len(mlm.get_output_embeddings().weight))
    assert torch.equal(targets, batch["labels"][selected])
    # Both paths compute the same per-row operations; only GEMM blocking may reorder the fp32
    # sums. The head chains sums of `hidden` terms (dense, LayerNorm moments, decoder), so each
    # logit may differ by ~4 * hidden * 2^-24 times the sum of the decoder's absolute summands.
    with torch.no_grad():
        transformed = mlm.cls.predictions.transform(_hidden(mlm, batch)[selected])
        summands = transformed.abs() @ mlm.get_output_embeddings().weight.abs().T + mlm.cls.predictions.bias.abs()
    assert torch.all((logits - full[selected]).abs() <= 4 * hidden * 2.0 ** -24 * summands)


def test_without_encoder_training_only_the_head_gets_gradients(tokenizer, paragraphs, tiny_mlm):
    encoder, mlm = tiny_mlm
    mlm.train()
    batch = masked_batch(tokenizer, token_windows(tokenizer, paragraphs[:4], 32), 0.15,
                         torch.Generator().manual_seed(0))
    masked_lm_loss(mlm, batch, train_encoder=False).backward()
    fresh = {id(p) for p in fresh_head_parameters(mlm)}
    # the fresh head: transform dense (weight, bias), its LayerNorm (weight, bias), the output bias
    assert len(fresh) == 5 and id(encoder.get_input_embeddings().weight) not in fresh
    assert all(p.grad is not None for p in fresh_head_parameters(mlm))
    # the encoder ran without a graph; only the word embeddings, as the tied decoder, get a gradient
    # (the loop's head phase sets their requires_grad off: test_the_head_phase_trains_only_the_fresh_head)
    word = encoder.get_input_embeddings().weight
    assert all(p.grad is None for p in encoder.parameters() if p is not word) and word.grad is not None
    masked_lm_loss(mlm, batch).backward()
    assert all(p.grad is not None for p in encoder.encoder.parameters())


def _hidden(mlm, batch):
    return mlm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def test_architectures_without_a_masked_lm_head_are_refused(tiny_model_dir, tmp_path):
    from transformers import DistilBertConfig, DistilBertModel, GPT2Config, GPT2Model

    folder = tmp_path / "gpt2"
    GPT2Model(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tiny_model_dir / name, folder / name)
    with pytest.raises(UnsupportedArchitectureError, match="GPT2Model .*no masked-LM counterpart") as error:
        continue_pretraining(str(folder), ["some text"], tmp_path / "out", steps=1, device="cpu", progress=False)
    assert "\n" not in str(error.value) and isinstance(error.value, HybridlibError)
    assert not (tmp_path / "out" / "model").exists()
    distil = DistilBertModel(DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64))
    with pytest.raises(UnsupportedArchitectureError, match="DistilBertForMaskedLM"):
        masked_lm_model(distil)


# -- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, value", [
    ("steps", 0), ("steps", -3), ("steps", 2.5), ("mask_rate", 0.0), ("mask_rate", 1.0), ("mask_rate", 1.5),
    ("mask_rate", float("nan")), ("learning_rate", 0.0), ("batch_size", 0), ("max_length", 2),
    ("warmup_ratio", 1.0), ("precision", "fp8"), ("freeze_embeddings", "yes"), ("head_steps", -1),
    ("head_steps", 1.5), ("head_learning_rate", 0.0), ("head_learning_rate", float("inf")),
])
def test_bad_settings_are_refused_in_one_line(tmp_path, setting, value):
    settings = {"steps": 5} | {setting: value}
    with pytest.raises(DaptError, match=f"dapt {setting}") as error:
        continue_pretraining("no-such-model-is-loaded", ["text"], tmp_path, progress=False, **settings)
    assert "\n" not in str(error.value)
    with pytest.raises(DaptError):
        DaptSettings(**settings)
    assert DaptSettings(steps=5).problems() == [] and DaptSettings(steps=5, head_steps=0).problems() == []


def test_no_text_is_refused(tmp_path):
    with pytest.raises(DaptError, match="paragraphs"):
        continue_pretraining("no-such-model-is-loaded", ["", "  "], tmp_path, steps=1, progress=False)


# -- the loop ---------------------------------------------------------------------------------

def tiny_run(model_dir, paragraphs, out_dir, **overrides):
    """3 head steps then 4 full steps on the tiny encoder, a checkpoint every 2 steps (and at step 3)."""
    values = dict(steps=4, head_steps=3, batch_size=4, max_length=32, learning_rate=1e-3, head_learning_rate=1e-2,
                  precision="fp32", device="cpu", eval_paragraphs=paragraphs[:8], checkpoint_every=2,
                  progress=False, seed=3)
    return continue_pretraining(str(model_dir), paragraphs[8:40], out_dir, **(values | overrides))


def interrupted_run(model_dir, paragraphs, out_dir, at: int, **overrides):
    """``tiny_run`` stopped after step ``at`` (after that step's checkpoint, if any); its ``last.pt``."""
    def interrupt(step):
        if step == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_run(model_dir, paragraphs, out_dir, on_step=interrupt, **overrides)
    return torch.load(out_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def whole_run(tiny_model_dir, paragraphs, tmp_path_factory):
    return tiny_run(tiny_model_dir, paragraphs, tmp_path_factory.mktemp("dapt") / "whole")


# at: inside the head phase (checkpoint of step 2, head optimizer), at its end (checkpoint of step 3:
# the full phase starts afresh), inside the full phase (resumed from step 4's checkpoint, full optimizer)
@pytest.mark.parametrize("at, saved_step, saved_phase", [(2, 2, "head"), (3, 3, "head"), (5, 4, "full")])
def test_interrupted_run_resumes_to_the_same_weights(tiny_model_dir, paragraphs, tmp_path, whole_run, at,
                                                      saved_step, saved_phase):
    saved = interrupted_run(tiny_model_dir, paragraphs, tmp_path / "cut", at)
    assert (saved["progress"]["step"], saved["phase"]) == (saved_step, saved_phase)
    resumed = tiny_run(tiny_model_dir, paragraphs, tmp_path / "cut")
    assert resumed.resumed and not whole_run.resumed and (resumed.head_steps, resumed.steps) == (3, 4)
    assert not (tmp_path / "cut" / "checkpoints").exists()
    # fp32 on one CPU, the same operations in the same order: bitwise equal, not merely close
    a, b = (load_file(r.model_dir / "model.safetensors") for r in (whole_run, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [pd.read_csv(r.log_path) for r in (whole_run, resumed)]
    assert logs[0]["step"].tolist() == list(range(1, 8))
    assert logs[0]["phase"].tolist() == ["head"] * 3 + ["full"] * 4
    assert np.array_equal(logs[0]["loss"], logs[1]["loss"]) and np.array_equal(logs[0]["lr"], logs[1]["lr"])
    losses = [(r.eval_loss_start, r.eval_loss_head, r.eval_loss_end) for r in (whole_run, resumed)]
    assert losses[0] == losses[1] and None not in losses[0]


def test_the_head_phase_trains_only_the_fresh_head(tiny_model_dir, paragraphs, tmp_path):
    from transformers import AutoModel

    # embeddings not frozen: the decoder tied to them must still stay fixed during the head phase
    saved = interrupted_run(tiny_model_dir, paragraphs, tmp_path / "run", 3, freeze_embeddings=False)["model"]
    original = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(saved[f"bert.{name}"], value) for name, value in original.items())
    fresh = masked_lm_model(AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False), seed=3).state_dict()
    head = [name for name in fresh if name.startswith("cls.") and not name.endswith("decoder.weight")]
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.bias",
            "cls.predictions.bias"} <= set(head)
    assert all(not torch.equal(saved[name], fresh[name]) for name in head)
    log = pd.read_csv(tmp_path / "run" / "dapt_log.csv")
    assert log["phase"].tolist() == ["head"] * 3 and log["lr"].max() == pytest.approx(1e-2)


def test_outputs_load_as_the_encoder_without_the_head(tiny_model_dir, paragraphs, tmp_path):
    from hybridlib.models import DualEncoder

    result = tiny_run(tiny_model_dir, paragraphs, tmp_path / "run")
    saved, original = load_file(result.model_dir / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert saved.keys() == original.keys()  # no MLM head
    assert not torch.equal(saved["encoder.layer.0.attention.self.query.weight"],
                           original["encoder.layer.0.attention.self.query.weight"])
    encoder = DualEncoder(str(result.model_dir), device="cpu", precision="fp32")
    assert encoder.settings() == DualEncoder(str(tiny_model_dir), device="cpu", precision="fp32").settings()
    assert encoder.encode(["a test"], kind="query", progress=False).shape == (1, 32)
    log = pd.read_csv(result.log_path)
    assert log.columns.tolist() == ["step", "phase", "loss", "lr", "masked_tokens", "seconds"]
    # each phase: round(0.1 * its steps) = 0 warm-up steps, then linear decay from its own peak rate to 0
    head, full = log[log["phase"] == "head"], log[log["phase"] == "full"]
    assert head["lr"].tolist() == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])
    assert full["lr"].tolist() == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    evals = pd.read_csv(tmp_path / "run" / "dapt_eval.csv")
    assert evals["step"].tolist() == [0, 3, 7] and evals["phase"].tolist() == ["start", "head", "full"]
    assert evals["masked_tokens"].nunique() == 1
    assert evals["eval_loss"].tolist() == [result.eval_loss_start, result.eval_loss_head, result.eval_loss_end]
    done = json.loads((tmp_path / "run" / "dapt_done.json").read_text())
    assert (done["steps"], done["head_steps"]) == (4, 3) and done["settings"]["mask_rate"] == 0.15
    again = tiny_run(tiny_model_dir, paragraphs, tmp_path / "run")  # finished: returned at once
    assert again == dataclasses.replace(result, resumed=False)
    with pytest.raises(DaptError, match="another model, settings or texts"):
        tiny_run(tiny_model_dir, paragraphs, tmp_path / "run", head_learning_rate=2e-2)


def test_frozen_embeddings_stay_fixed_while_the_body_trains(tiny_model_dir, paragraphs, tmp_path):
    result = tiny_run(tiny_model_dir, paragraphs, tmp_path / "run", steps=2, head_steps=0, freeze_embeddings=True)
    saved, original = load_file(result.model_dir / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    word, body = "embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight"
    assert torch.equal(saved[word], original[word])
    assert not torch.equal(saved[body], original[body])
    # without a head phase: full steps only, no evaluation in between
    assert pd.read_csv(result.log_path)["phase"].tolist() == ["full", "full"]
    assert pd.read_csv(tmp_path / "run" / "dapt_eval.csv")["step"].tolist() == [0, 2]
    assert result.eval_loss_head is None and result.head_steps == 0


def test_unfrozen_embeddings_train_in_the_full_phase(tiny_model_dir, paragraphs, tmp_path):
    result = tiny_run(tiny_model_dir, paragraphs, tmp_path / "run", steps=1, head_steps=1, freeze_embeddings=False)
    saved, original = load_file(result.model_dir / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    word = "embeddings.word_embeddings.weight"
    assert not torch.equal(saved[word], original[word])


def test_evaluation_masks_are_fixed(tokenizer, paragraphs):
    a = evaluation_batches(tokenizer, paragraphs[:10], 4, 32, 0.15)
    b = evaluation_batches(tokenizer, paragraphs[:10], 4, 32, 0.15)
    assert len(a) == 3 and all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))


@pytest.mark.slow
def test_dapt_lowers_the_held_out_masked_lm_loss_of_the_default_encoder(tmp_path):
    paragraphs = training_paragraphs("mlqa-r")
    every = len(paragraphs) // 32  # 32 held-out paragraphs spread over the 7 languages
    held_out = paragraphs[::every][:32]
    train = [p for i, p in enumerate(paragraphs) if i % every or i // every >= 32]
    result = continue_pretraining("default", train, tmp_path / "dapt", steps=16, batch_size=8, max_length=64,
                                  learning_rate=5e-5, head_steps=8, head_learning_rate=1e-3, precision="auto",
                                  device="cpu", seed=0, eval_paragraphs=held_out, progress=False)
    losses = (result.eval_loss_start, result.eval_loss_head, result.eval_loss_end)
    assert result.eval_loss_head < result.eval_loss_start and result.eval_loss_end < result.eval_loss_head, losses
