"""The training loop on the tiny encoder: GradCache, determinism, resumption, outputs, errors.

One test (``slow``) fine-tunes the real default encoder for a few steps and checks that the
validation loss goes down.
"""
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hybridlib.cli import main as cli_main
from hybridlib.config import params_from_dict
from hybridlib.errors import HybridlibError
from hybridlib.losses import batch_loss
from hybridlib.sampling import BatchSampler, SamplingError
from hybridlib import train as train_module
from hybridlib.train import TrainingError, backward, batch_texts, embed_in_chunks, split_validation, train


@pytest.fixture(autouse=True, scope="module")
def fast_tiny_runs():
    """One torch thread (tiny matrices gain nothing from more, and lose a lot on a busy machine)
    and one tokenizer load per folder (parsing the 17 MB tokenizer.json takes seconds)."""
    from transformers import AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    original, loaded = AutoTokenizer.from_pretrained, {}

    def cached(name, *args, **kwargs):
        key = (str(name), args, tuple(sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = original(name, *args, **kwargs)
        return loaded[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoTokenizer, "from_pretrained", cached)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs():
    from hybridlib.sources import load_pairs

    return load_pairs("mlqa-r", ["en", "de", "es"], max_ids=80)


def tiny_params(model_dir, **overrides):
    values = dict(model=str(model_dir), train_dataset="mlqa-r", train_languages=["en", "de", "es"],
                  train_max_ids=80, validation_ids=16, batch_size=4, hard_negatives=1, max_length=32,
                  learning_rate=1e-3, max_steps=6, eval_every=2, device="cpu", precision="fp32",
                  strategies=["x-x-mono", "x-y", "hybrid"])
    return params_from_dict(values | overrides)


def model_weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def parameter_grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def a_batch(pairs, strategy="hybrid", size=6):
    sampler = BatchSampler(pairs, strategy, size, seed=1, parallel_queries=True)
    return batch_texts(pairs, sampler.next_batch())


LOSS = partial(batch_loss, temperature=0.05, symmetric=True, parallel_query_weight=0.5)


@pytest.mark.parametrize("size", [1, 3, 16])
def test_length_sorted_chunks_embed_like_one_padded_batch(tiny_encoder, pairs, size):
    tiny_encoder.model.eval()
    texts = a_batch(pairs, "x-y", size=8)
    tokens = tiny_encoder.tokenize(texts.positives + texts.negatives, "passage")
    assert len(set(tokens["attention_mask"].sum(dim=1).tolist())) > 1  # lengths differ
    with torch.no_grad():
        torch.testing.assert_close(embed_in_chunks(tiny_encoder, tokens, size), tiny_encoder.embed_tokens(tokens),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4])
def test_grad_cache_gives_the_gradients_of_plain_backward(tiny_encoder, pairs, chunk):
    texts = a_batch(pairs, "x-y")
    assert texts.negatives and texts.parallel_queries
    tiny_encoder.model.eval()  # no dropout: plain (one pass) and chunked passes see the same network
    plain_loss = backward(tiny_encoder, texts, LOSS)
    plain = parameter_grads(tiny_encoder.model)
    tiny_encoder.model.zero_grad(set_to_none=True)
    cached_loss = backward(tiny_encoder, texts, LOSS, grad_cache_chunk=chunk)
    cached = parameter_grads(tiny_encoder.model)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_grad_cache_replays_the_dropout_masks_of_its_first_pass(tiny_encoder, pairs):
    texts = a_batch(pairs, "x-x-mono")
    tiny_encoder.model.train()
    torch.manual_seed(3)
    backward(tiny_encoder, texts, LOSS, grad_cache_chunk=2)
    cached = parameter_grads(tiny_encoder.model)
    tiny_encoder.model.zero_grad(set_to_none=True)
    # reference: the same chunks embedded once, with a graph, from the same RNG state
    torch.manual_seed(3)
    embeddings = {kind: embed_in_chunks(tiny_encoder, tiny_encoder.tokenize(texts_, kind), 2)
                  for kind, texts_ in train_module._groups(texts).items()}
    train_module._loss_of(embeddings, texts, LOSS).backward()
    reference = parameter_grads(tiny_encoder.model)
    for name in reference:
        torch.testing.assert_close(cached[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_validation_ids_are_held_out_in_every_language(pairs):
    train_tables, val = split_validation([pairs], 16)
    assert val["id"].str.removeprefix("0:").nunique() == 16
    held_out = set(val["id"].str.removeprefix("0:"))
    assert not held_out & set(train_tables[0]["id"])
    assert len(val) + len(train_tables[0]) == len(pairs)  # every language of a held-out id goes
    again = split_validation([pairs], 16)[1]
    assert again.equals(val)  # independent of the training seed


def test_same_seed_same_weights_other_seed_other_weights(tiny_model_dir, tmp_path):
    params = tiny_params(tiny_model_dir, max_steps=3, validation_ids=0)
    runs = {name: train(params, "hybrid", seed, tmp_path / name, progress=False)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))}
    a, b, c = (model_weights(runs[name].model_dir) for name in "abc")
    assert_same_weights(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_run(tiny_model_dir, tmp_path, capsys):
    params = tiny_params(tiny_model_dir, grad_cache_chunk=3)
    whole = train(params, "hybrid", 0, tmp_path / "whole", progress=False)

    def crash_at_step_3(step):
        if step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(params, "hybrid", 0, tmp_path / "crashed", progress=False, on_step=crash_at_step_3)
    assert (tmp_path / "crashed" / "checkpoints" / "last.pt").is_file()
    resumed = train(params, "hybrid", 0, tmp_path / "crashed", progress=False)
    assert "resumed hybrid seed 0 from step 2" in capsys.readouterr().out
    assert resumed.resumed and not whole.resumed and resumed.steps == whole.steps == 6
    assert_same_weights(model_weights(whole.model_dir), model_weights(resumed.model_dir))
    logs = [pd.read_csv(r.log_path).drop(columns="seconds") for r in (whole, resumed)]
    pd.testing.assert_frame_equal(*logs)
    vals = [pd.read_csv(r.model_dir.parent / "val_log.csv") for r in (whole, resumed)]
    pd.testing.assert_frame_equal(*vals)
    assert resumed.best_val_loss == whole.best_val_loss == vals[0]["val_loss"].min()


@pytest.mark.parametrize("strategy", ["x-x-mono", "x-y", "hybrid", "x-x", "en-en"])
def test_outputs_logs_and_model_folder(tiny_model_dir, tmp_path, strategy):
    params = tiny_params(tiny_model_dir, max_steps=4, warmup_ratio=0.5, symmetric_loss=True,
                         parallel_query_weight=0.3)
    result = train(params, strategy, 0, tmp_path, progress=False)
    log = pd.read_csv(result.log_path, keep_default_na=False)
    assert list(log.columns) == ["step", "batch_kind", "n_pairs", "n_cross_pairs", "query_langs",
                                 "passage_langs", "loss", "lr", "seconds"]
    assert log["step"].tolist() == [1, 2, 3, 4] and (log["n_pairs"] == 4).all()
    for row in log.itertuples():
        if row.batch_kind in ("x-x-mono", "en-en"):
            assert row.n_cross_pairs == 0 and row.query_langs == row.passage_langs and ";" not in row.query_langs
        elif row.batch_kind == "x-y":
            assert row.n_cross_pairs == row.n_pairs
        else:
            assert row.batch_kind == "x-x" and row.n_cross_pairs == 0
    assert set(log["batch_kind"]) <= ({"x-x-mono", "x-y"} if strategy == "hybrid" else {strategy})
    assert np.allclose(log["lr"], [0.0, 5e-4, 1e-3, 5e-4])  # warm-up over 2 steps, then linear decay
    assert np.isfinite(log["loss"]).all()
    val = pd.read_csv(tmp_path / "val_log.csv")
    assert val["step"].tolist() == [0, 2, 4]
    assert result.best_val_loss == pytest.approx(val["val_loss"].min())
    assert not (tmp_path / "checkpoints").exists()
    assert (result.model_dir / "model.safetensors").is_file()


def test_the_final_model_loads_with_transformers_and_sentence_transformers(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from hybridlib.models import DualEncoder

    result = train(tiny_params(tiny_model_dir, max_steps=2, validation_ids=0), "x-y", 0, tmp_path, progress=False)
    assert AutoModel.from_pretrained(result.model_dir).config.num_hidden_layers == 2
    ours = DualEncoder(str(result.model_dir), device="cpu", precision="fp32").encode(["hallo welt"], "query", progress=False)
    st = SentenceTransformer(str(result.model_dir), device="cpu")
    theirs = st.encode(["query: hallo welt"], normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)  # same pooling and prefix; float noise only


def test_hybrid_validates_both_kinds(tiny_model_dir, tmp_path):
    result = train(tiny_params(tiny_model_dir, max_steps=2), "hybrid", 0, tmp_path, progress=False)
    val = pd.read_csv(tmp_path / "val_log.csv")
    assert list(val.columns) == ["step", "val_loss", "val_loss_x-x-mono", "val_loss_x-y", "val_mAP", "val_R@10"]
    assert np.allclose(val["val_loss"], (val["val_loss_x-x-mono"] + val["val_loss_x-y"]) / 2)
    assert result.steps == 2


def test_validation_loss_equals_embedding_each_batch_on_its_own(tiny_model_dir):
    """Embedding each distinct text once gives the loss of embedding every batch separately."""
    from hybridlib.losses import contrastive_loss
    from hybridlib.models import DualEncoder
    from hybridlib.train import load_training_data, validation_batches, validation_metrics

    params = tiny_params(tiny_model_dir)
    _, table = split_validation(load_training_data(params), params.validation_ids)
    batches = validation_batches(table, "hybrid", params.batch_size)
    encoder = DualEncoder.from_params(params)
    encoder.model.eval()
    ours = validation_metrics(encoder, table, batches, params.temperature, symmetric=False)
    with torch.no_grad():
        for kind, kind_batches in batches.items():
            losses = []
            for batch in kind_batches:
                texts = batch_texts(table, batch)
                q = embed_in_chunks(encoder, encoder.tokenize(texts.queries, "query"))
                p = embed_in_chunks(encoder, encoder.tokenize(texts.positives + texts.negatives, "passage"))
                losses.append(contrastive_loss(q, p[:len(q)], p[len(q):], params.temperature).item())
            assert ours[f"val_loss_{kind}"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_held_out_retrieval_matches_sklearn_and_a_hand_count():
    from sklearn.metrics import average_precision_score

    from hybridlib.train import held_out_retrieval

    rng = np.random.default_rng(0)
    queries, answers = torch.from_numpy(rng.normal(size=(30, 8))), torch.from_numpy(rng.normal(size=(25, 8)))
    query_ids = [f"q{i % 12}" for i in range(30)]
    answer_ids = [{f"q{i % 12}"} | ({"q0"} if i == 24 else set()) for i in range(25)]  # answer 24 answers two ids
    result = held_out_retrieval(queries, answers, query_ids, answer_ids, k=10)
    scores = (queries @ answers.T).numpy()
    relevant = np.array([[q in ids for ids in answer_ids] for q in query_ids])
    expected_ap = np.mean([average_precision_score(r, s) for r, s in zip(relevant, scores)])
    top10 = np.argsort(-scores, axis=1)[:, :10]
    expected_recall = np.mean([relevant[i, top10[i]].sum() / relevant[i].sum() for i in range(30)])
    assert result["val_mAP"] == pytest.approx(expected_ap)
    assert result["val_R@10"] == pytest.approx(expected_recall)


def test_early_stopping_keeps_the_best_weights(tiny_model_dir, tmp_path, monkeypatch):
    scripted = iter([2.0, 1.0, 1.5, 1.7, 0.5])  # steps 0, 2, 4, 6 (stop: 2 without progress), never 8
    snapshots = {}
    real = train_module.validation_metrics

    def scripted_validation(encoder, *args):
        real(encoder, *args)
        snapshots[len(snapshots)] = {k: v.clone() for k, v in encoder.model.state_dict().items()}
        return {"val_loss": next(scripted), "val_loss_x-y": 0.0}

    monkeypatch.setattr(train_module, "validation_metrics", scripted_validation)
    params = tiny_params(tiny_model_dir, max_steps=10, early_stopping_patience=2)
    result = train(params, "x-y", 0, tmp_path, progress=False)
    assert result.steps == 6 and result.best_val_loss == 1.0
    assert_same_weights(model_weights(result.model_dir), snapshots[1])  # the step-2 weights
    assert pd.read_csv(result.log_path)["step"].max() == 6


def test_frozen_word_embeddings_do_not_change(tiny_model_dir, tmp_path):
    before = model_weights(tiny_model_dir)
    result = train(tiny_params(tiny_model_dir, max_steps=2, validation_ids=0), "x-y", 0, tmp_path, progress=False)
    after = model_weights(result.model_dir)
    name = "embeddings.word_embeddings.weight"
    assert torch.equal(before[name], after[name])
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           after["encoder.layer.0.attention.self.query.weight"])


def test_a_finished_run_is_not_trained_again(tiny_model_dir, tmp_path, capsys):
    params = tiny_params(tiny_model_dir, max_steps=2, validation_ids=0)
    first = train(params, "x-y", 0, tmp_path, progress=False)
    again = train(params, "x-y", 0, tmp_path, progress=False)
    assert "already trained" in capsys.readouterr().out
    assert again.model_dir == first.model_dir and again.steps == 2
    with pytest.raises(TrainingError, match="holds a finished run with other parameters"):
        train(params, "x-y", 1, tmp_path, progress=False)


@pytest.mark.parametrize("overrides, strategy, error, message", [
    ({}, "zero-shot", TrainingError, "unknown strategy 'zero-shot' to train"),
    ({"batch_size": 60}, "x-x-mono", SamplingError, "batch_size 60 is larger than the"),
    ({"validation_ids": 80}, "x-y", TrainingError, "leaves no training ids"),
])
def test_bad_settings_fail_before_training(tiny_model_dir, tmp_path, overrides, strategy, error, message):
    with pytest.raises(error, match=message) as raised:
        train(tiny_params(tiny_model_dir, **overrides), strategy, 0, tmp_path, progress=False)
    assert isinstance(raised.value, HybridlibError)
    assert not (tmp_path / "train_log.csv").exists()


def test_cli_trains_and_reports_errors_in_one_line(tiny_model_dir, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params(tiny_model_dir, max_steps=2).model_dump()))
    assert cli_main(["train", str(params_file), "--strategy", "x-y", "--seed", "1", "--out", str(tmp_path / "o")]) == 0
    assert "model saved to" in capsys.readouterr().out
    assert cli_main(["train", str(params_file), "--strategy", "x-q", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "'x-q'" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_short_real_run_lowers_the_validation_loss(tmp_path):
    torch.set_num_threads(2)
    params = params_from_dict(dict(
        model="default", train_dataset="mlqa-r", train_languages=["en", "de"], train_max_ids=200,
        validation_ids=16, batch_size=8, max_length=32, learning_rate=5e-5, warmup_ratio=0.0,
        max_steps=6, eval_every=6, device="cpu", precision="fp32"))
    result = train(params, "hybrid", 0, tmp_path, progress=False)
    val = pd.read_csv(tmp_path / "val_log.csv")
    assert val["step"].tolist() == [0, 6]
    assert val["val_loss"].iloc[1] < val["val_loss"].iloc[0]
    assert result.best_val_loss == val["val_loss"].iloc[1]
    assert val["val_R@10"].iloc[0] > 0.9  # the pretrained encoder finds most of 32 held-out answers
