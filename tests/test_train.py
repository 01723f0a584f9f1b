"""The training of hybridlib.train on the tiny encoder: chunks, GradCache, bf16, validation, the loop.

Numerical tolerances come from fp32 arithmetic (unit roundoff ``U = 2^-24``): a sum of N terms
computed in any order is within ``(N - 1) * U * sum|terms|`` of the exact sum (Higham, *Accuracy
and Stability of Numerical Algorithms*, 2002, eq. 4.4), so two orders differ by at most twice
that. The bounds are computed from the terms of each test's own sums (``GradientTerms``,
``pooling_bound``), never tuned on one CPU. One test (``slow``) fine-tunes the real default
encoder for a few steps.
"""
import hashlib
import logging
import shutil
from collections import defaultdict
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from numerics import GradientTerms, U, assert_within, gradient_bound

from hybridlib.cli import main as cli_main
from hybridlib.config import params_from_dict
from hybridlib.constants import CROSS, MONO, MULTI, SETTINGS
from hybridlib.errors import HybridlibError
from hybridlib.losses import batch_loss, contrastive_loss
from hybridlib.sampling import BatchSampler, SamplingError
from hybridlib.train import (
    TrainingError,
    backward,
    batch_texts,
    build_optimizer,
    embed_in_chunks,
    grad_scaler,
    held_out_retrieval,
    length_chunks,
    load_training_data,
    optimizer_step,
    split_validation,
    train,
    validation_batches,
    validation_metrics,
)
from hybridlib.train import loop as train_loop
from hybridlib.train.step import loss_of, text_groups

TEMPERATURE = 0.05
LOSS = partial(batch_loss, temperature=TEMPERATURE, symmetric=True, parallel_query_weight=0.5)
VAL_COLUMNS = ["step", "val_score", "val_mAP_monolingual", "val_mAP_crosslingual", "val_mAP_multilingual",
               "val_R@10", "val_loss"]


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


def pooling_bound(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Largest difference of a mean-pooled, L2-normalised fp32 embedding computed in two orders.

    A coordinate's pooled sum adds L token values (error <= (L - 1) U sum_t |h_t| each way); the
    division by L adds U; the norm sums d positive squares (relative error <= (d + 1) U) and
    the division U, so a unit-vector coordinate moves by <= (d + 3) U. Two computations:
    ``2 (L U sum_t |h_t| / L / |pooled| + (d + 3) U)`` per coordinate.
    """
    mask = mask[..., None].to(hidden.dtype)
    length = mask.sum(dim=1)
    magnitude = (hidden.abs() * mask).sum(dim=1) / length
    norm = ((hidden * mask).sum(dim=1) / length).norm(dim=1, keepdim=True)
    return 2 * U * (length * magnitude / norm + hidden.shape[-1] + 3)


# ---------------------------------------------------------------------------------------------
# The step: chunks, GradCache, bf16
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("size", [1, 3, 16])
def test_length_sorted_chunks_embed_like_one_padded_batch(tiny_encoder, pairs, size, packed, monkeypatch):
    # In float64 the network's sums differ by ~2^-53 between chunk shapes and between the packed
    # and the padded forward (padding adds exact zeros, masked attention weights are exactly 0);
    # what is left is the fp32 pooling.
    from hybridlib.models import encoder, supports_packing

    assert supports_packing(tiny_encoder.model)  # a BERT body: packed unless told otherwise
    if not packed:
        monkeypatch.setattr(encoder, "supports_packing", lambda model: False)
    tiny_encoder.model.double().eval()
    texts = a_batch(pairs, "x-y", size=8)
    tokens = tiny_encoder.tokenize(texts.positives + texts.negatives, "passage")
    assert len(set(tokens["attention_mask"].sum(dim=1).tolist())) > 1  # lengths differ
    with torch.no_grad():
        hidden = tiny_encoder.model(**tokens).last_hidden_state.float()
        chunked, padded = embed_in_chunks(tiny_encoder, tokens, size), tiny_encoder.embed_tokens(tokens)
    assert_within(chunked, padded, pooling_bound(hidden, tokens["attention_mask"]), "embeddings")


def padded_and_packed(encoder, tokens: dict, size: int = 3):
    """Embeddings of one padded batch through transformers' forward, and of ``embed_in_chunks``."""
    return encoder.embed_tokens(tokens), embed_in_chunks(encoder, tokens, size)


def test_packed_forward_gives_the_gradients_of_the_padded_forward(tiny_encoder, pairs):
    texts = a_batch(pairs, "x-y")
    tiny_encoder.model.eval()  # no dropout: both forwards compute the same network
    tokens = {kind: tiny_encoder.tokenize(texts_, kind) for kind, texts_ in text_groups(texts).items()}
    grads, losses, terms = [], [], GradientTerms(tiny_encoder.model)
    for forward in (0, 1):  # 0: padded (with the terms of the bound), 1: packed
        embeddings = {kind: padded_and_packed(tiny_encoder, tokens_)[forward] for kind, tokens_ in tokens.items()}
        terms.remove()
        losses.append(loss_of(embeddings, texts, LOSS))
        losses[-1].backward()
        grads.append(parameter_grads(tiny_encoder.model))
        tiny_encoder.model.zero_grad(set_to_none=True)
    assert abs(losses[1].item() - losses[0].item()) <= 4 * terms.positions * U * (2 / TEMPERATURE + losses[0].item())
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        assert_within(grads[1][name], grads[0][name], gradient_bound(terms, name), name)


@pytest.mark.parametrize("attention", ["hybridlib_sdpa", "sdpa"])
def test_packed_forward_of_cls_pooling_and_of_xlm_roberta(tiny_encoder, pairs, attention):
    # XLM-R numbers positions from its padding index (a padding token must not shift them);
    # hybridlib's attention function or torch's sdpa (transformers' eager keeps the padded forward).
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from hybridlib.models import supports_packing, use_fast_dropout

    config = XLMRobertaConfig(vocab_size=len(tiny_encoder.tokenizer), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64,
                              max_position_embeddings=tiny_encoder.max_length + 2,
                              pad_token_id=tiny_encoder.tokenizer.pad_token_id)
    torch.manual_seed(0)
    tiny_encoder.model = use_fast_dropout(XLMRobertaModel(config, add_pooling_layer=False)).double().eval()
    tiny_encoder.model.set_attn_implementation("eager")
    assert not supports_packing(tiny_encoder.model)
    tiny_encoder.model.set_attn_implementation(attention)
    assert supports_packing(tiny_encoder.model)
    texts = a_batch(pairs, "x-y", size=8)
    tokens = tiny_encoder.tokenize(texts.positives + texts.negatives, "passage")
    with torch.no_grad():
        hidden = tiny_encoder.model(**tokens).last_hidden_state.float()
        padded, packed = padded_and_packed(tiny_encoder, tokens)
        assert_within(packed, padded, pooling_bound(hidden, tokens["attention_mask"]), "mean pooling")
        tiny_encoder.pooling = "cls"
        padded, packed = padded_and_packed(tiny_encoder, tokens)
    # the first token's state in float64, then the fp32 normalisation: (d + 3) U each way
    assert_within(packed, padded, 2 * U * (config.hidden_size + 3), "cls pooling")


def test_packed_forward_in_training_draws_dropout_and_only_dropout(tiny_encoder, pairs, monkeypatch):
    from hybridlib.models import dropout

    tiny_encoder.model.double()
    tokens = tiny_encoder.tokenize(a_batch(pairs, "x-y", size=8).positives, "passage")
    with torch.no_grad():
        tiny_encoder.model.eval()
        reference = tiny_encoder.embed_tokens(tokens)
        tiny_encoder.model.train()
        draws = []
        for seed in (5, 5, 6):
            torch.manual_seed(seed)
            draws.append(embed_in_chunks(tiny_encoder, tokens, 3))
        monkeypatch.setattr(dropout, "fast_dropout", lambda x, p, training=True: x)
        undropped = embed_in_chunks(tiny_encoder, tokens, 3)  # training's attention path, no masks
    assert torch.equal(draws[0], draws[1]) and not torch.allclose(draws[0], draws[2])
    assert (draws[0] - reference).abs().max() > 1e-3  # dropout changes the embeddings
    hidden = tiny_encoder.model.eval()(**tokens).last_hidden_state.float()
    assert_within(undropped, reference, pooling_bound(hidden, tokens["attention_mask"]), "training path")


@pytest.mark.parametrize("chunk", [1, 4])
def test_grad_cache_gives_the_gradients_of_plain_backward(tiny_encoder, pairs, chunk):
    texts = a_batch(pairs, "x-y")
    assert texts.negatives and texts.parallel_queries
    tiny_encoder.model.eval()  # no dropout: plain (one pass) and chunked passes see the same network
    terms = GradientTerms(tiny_encoder.model)
    plain_loss = backward(tiny_encoder, texts, LOSS)
    terms.remove()
    plain = parameter_grads(tiny_encoder.model)
    tiny_encoder.model.zero_grad(set_to_none=True)
    cached_loss = backward(tiny_encoder, texts, LOSS, grad_cache_chunk=chunk)
    cached = parameter_grads(tiny_encoder.model)
    # The loss sums, per anchor, a log-sum-exp of logits |s| <= 1/t and its own logit; its inputs
    # come from reductions of <= N terms each way, as the gradients (see gradient_bound).
    assert abs(cached_loss.item() - plain_loss.item()) <= 4 * terms.positions * U * (2 / TEMPERATURE + plain_loss)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        assert_within(cached[name], plain[name], gradient_bound(terms, name), name)


def test_grad_cache_replays_the_dropout_masks_of_its_first_pass(tiny_encoder, pairs):
    texts = a_batch(pairs, "x-x-mono")
    tiny_encoder.model.train()
    torch.manual_seed(3)
    backward(tiny_encoder, texts, LOSS, grad_cache_chunk=2)
    cached = parameter_grads(tiny_encoder.model)
    tiny_encoder.model.zero_grad(set_to_none=True)
    # reference: the same chunks, each embedded as a batch of its own, once, with a graph, from
    # the same RNG state
    torch.manual_seed(3)
    terms = GradientTerms(tiny_encoder.model)
    embeddings = {}
    for kind, texts_ in text_groups(texts).items():
        tokens = tiny_encoder.tokenize(texts_, kind)
        chunks = length_chunks(tokens, 2)
        embedded = torch.cat([embed_in_chunks(tiny_encoder, {key: value[rows] for key, value in tokens.items()})
                              for rows in chunks])
        embeddings[kind] = embedded[torch.argsort(torch.cat(chunks))]
    loss_of(embeddings, texts, LOSS).backward()
    terms.remove()
    reference = parameter_grads(tiny_encoder.model)
    for name in reference:  # other dropout masks would change the terms themselves, far beyond the bound
        assert_within(cached[name], reference[name], gradient_bound(terms, name), name)


def test_training_under_bf16_autocast_with_the_grad_scaler_path(tiny_encoder, tiny_model_dir, pairs, tmp_path,
                                                                monkeypatch):
    """The README's models were trained in bf16 (``precision: auto`` on a CPU with AVX-512 BF16):
    forward passes under bf16 autocast, the loss and the weights in fp32, the update through the
    run's GradScaler (a pass-through for bf16). Without native bf16 the CPU is only slower."""
    from hybridlib.models import DualEncoder, packed

    attended = []  # the dtypes of Q, K and V as the packed forward's attention receives them
    attention_function = packed._attention_function

    def recording(model):
        attend = attention_function(model)

        def record(module, query, key, value, *args, **kwargs):
            attended.extend(states.dtype for states in (query, key, value))
            return attend(module, query, key, value, *args, **kwargs)
        return record
    monkeypatch.setattr(packed, "_attention_function", recording)

    tiny_encoder.precision = "bf16"
    tiny_encoder.model.eval()  # no dropout: one repeated batch, so the loss must fall
    params = tiny_params(tiny_model_dir, learning_rate=1e-3, warmup_ratio=0.0, max_steps=1000)
    optimizer, _ = build_optimizer(tiny_encoder.model, params)
    scaler = grad_scaler(tiny_encoder)
    assert not scaler.is_enabled()  # loss scaling is for fp16 only
    dtypes = []
    hook = tiny_encoder.model.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda module, inputs, output: dtypes.append(output.dtype))
    before = {name: p.detach().clone() for name, p in tiny_encoder.model.named_parameters()}
    texts = a_batch(pairs, "hybrid")
    losses = [optimizer_step(tiny_encoder, texts, LOSS, optimizer, scaler).item() for _ in range(4)]
    hook.remove()
    assert set(dtypes) == {torch.bfloat16}
    assert attended and set(attended) == {torch.bfloat16}  # not promoted to fp32 by the packing's padding row
    assert np.isfinite(losses).all() and all(b < a for a, b in zip(losses, losses[1:])), losses
    trained = dict(tiny_encoder.model.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trained.values())
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           trained["encoder.layer.0.attention.self.query.weight"])
    reloaded = DualEncoder(str(tiny_encoder.save(tmp_path / "model")), device="cpu", precision="bf16")
    assert_same_weights({k: v.detach() for k, v in trained.items()}, dict(reloaded.model.named_parameters()))


def test_train_in_bf16_runs_to_a_model_that_loads(tiny_model_dir, tmp_path):
    from hybridlib.models import DualEncoder

    result = train(tiny_params(tiny_model_dir, precision="bf16", max_steps=2), "x-y", 0, tmp_path, progress=False)
    assert np.isfinite(pd.read_csv(result.log_path)["loss"]).all()
    val = pd.read_csv(tmp_path / "val_log.csv")
    assert np.isfinite(val[VAL_COLUMNS]).all().all()
    embeddings = DualEncoder(str(result.model_dir), device="cpu", precision="bf16").encode(["hallo"], "query")
    assert np.isfinite(embeddings).all() and embeddings.shape == (1, 32)


# ---------------------------------------------------------------------------------------------
# Validation: the held-out split, the selection score, the per-kind losses
# ---------------------------------------------------------------------------------------------

def test_validation_ids_are_held_out_in_every_language(pairs):
    train_tables, val = split_validation([pairs], 16)
    assert val["id"].str.removeprefix("0:").nunique() == 16
    held_out = set(val["id"].str.removeprefix("0:"))
    assert not held_out & set(train_tables[0]["id"])
    assert len(val) + len(train_tables[0]) == len(pairs)  # every language of a held-out id goes
    again = split_validation([pairs], 16)[1]
    assert again.equals(val)  # independent of the training seed


def sklearn_settings(scores, relevant, query_langs, answer_langs, k=10):
    """The held-out score by its definition, one query and one pool at a time with sklearn."""
    from sklearn.metrics import average_precision_score

    aps, recalls = defaultdict(list), defaultdict(list)
    for i, x in enumerate(query_langs):
        aps[MULTI, x].append(average_precision_score(relevant[i], scores[i]))
        order = np.lexsort((relevant[i], -scores[i]))  # ties: non-relevant first (pessimistic)
        recalls[x].append(relevant[i, order[:k]].sum() / relevant[i].sum())
        for y in sorted(set(answer_langs)):
            pool = np.asarray(answer_langs) == y
            if relevant[i, pool].any():
                aps[MONO if x == y else CROSS, x, y].append(average_precision_score(relevant[i, pool],
                                                                                    scores[i, pool]))
    maps = {s: np.mean([np.mean(v) for key, v in aps.items() if key[0] == s]) for s in SETTINGS
            if any(key[0] == s for key in aps)}
    return maps, np.mean(list(maps.values())), np.mean([np.mean(v) for v in recalls.values()])


def test_the_held_out_score_is_the_mean_of_the_settings_map_computed_by_sklearn():
    rng = np.random.default_rng(0)
    langs = ["en", "de", "es"]
    # ids q0..q9; q9 has no Spanish (MLQA-R style: some ids lack a language)
    queries = [(f"q{i}", lang) for i in range(10) for lang in langs if (i, lang) != (9, "es")]
    answers = [({qid}, lang) for qid, lang in queries]
    answers[4] = ({"q1", "q2"}, answers[4][1])  # one answer sentence shared by two ids
    # small integer coordinates: every score is an integer, exact in any summation order, and
    # many scores tie (sklearn gives each relevant answer the precision at its score threshold)
    q = rng.integers(-3, 4, size=(len(queries), 8)).astype(np.float32)
    a = rng.integers(-3, 4, size=(len(answers), 8)).astype(np.float32)
    result = held_out_retrieval(q, a, [i for i, _ in queries], [x for _, x in queries], [ids for ids, _ in answers],
                                [y for _, y in answers], k=10)
    scores = (q @ a.T).astype(np.float64)
    relevant = np.array([[qid in ids for ids, _ in answers] for qid, _ in queries])
    assert (np.diff(np.sort(scores, axis=1), axis=1) == 0).any()  # ties
    maps, score, recall = sklearn_settings(scores, relevant, [x for _, x in queries], [y for _, y in answers])
    assert list(result) == VAL_COLUMNS[1:6]
    # the same ranks on both sides; AP and the means are float64 sums of < 100 terms: rel. error < 1e-13
    for setting in SETTINGS:
        assert result[f"val_mAP_{setting}"] == pytest.approx(maps[setting], rel=1e-12)
    assert result["val_score"] == pytest.approx(score, rel=1e-12)
    assert result["val_R@10"] == pytest.approx(recall, rel=1e-12)


def test_with_one_language_the_score_leaves_the_missing_crosslingual_setting_out():
    q, a = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[[1, 0, 2]]
    result = held_out_retrieval(q, a, ["a", "b", "c"], ["en"] * 3, [{"b"}, {"a"}, {"c"}], ["en"] * 3)
    assert np.isnan(result["val_mAP_crosslingual"])
    assert result["val_mAP_monolingual"] == result["val_mAP_multilingual"] == result["val_score"] == 1.0


class TextHashEncoder:
    """Embeds a text as a fixed random unit vector seeded by (kind, text): independent of batching,
    so that validation's each-text-once embedding can be checked against batch-by-batch embedding."""

    dim = 8

    @staticmethod
    def vector(text, kind):
        seed = int.from_bytes(hashlib.sha256(f"{kind}\0{text}".encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=TextHashEncoder.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts, kind, batch_size=64, progress=True):
        self.calls.append(list(texts))
        return np.stack([self.vector(t, kind) for t in texts])

    def __init__(self):
        self.calls = []


@pytest.fixture(scope="module")
def held_out(tiny_model_dir):
    params = tiny_params(tiny_model_dir)
    return split_validation(load_training_data(params), params.validation_ids)[1]


def test_validation_through_the_cache_embeds_the_same_weights_once(held_out, tmp_path, monkeypatch):
    # every run of a study validates the same starting weights before its first step
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path))
    encoder = TextHashEncoder()
    encoder.fingerprint = "starting-weights"
    batches = validation_batches(held_out, "hybrid", 4)
    first = validation_metrics(encoder, held_out, batches, TEMPERATURE, symmetric=False, cache=True)
    calls = len(encoder.calls)
    assert calls == 2  # queries, passages
    assert validation_metrics(encoder, held_out, batches, TEMPERATURE, symmetric=False, cache=True) == first
    assert len(encoder.calls) == calls
    encoder.fingerprint = "trained-weights"  # other weights: embedded again
    validation_metrics(encoder, held_out, batches, TEMPERATURE, symmetric=False, cache=True)
    assert len(encoder.calls) == 2 * calls


def test_validation_equals_its_definition_batch_by_batch(held_out):
    """Each distinct text embedded once gives the losses of embedding every batch on its own, and
    the score of the held-out queries against the distinct held-out answers."""
    encoder = TextHashEncoder()
    batches = validation_batches(held_out, "hybrid", 4)
    ours = validation_metrics(encoder, held_out, batches, TEMPERATURE, symmetric=False)
    assert list(ours) == VAL_COLUMNS[1:] + ["val_loss_x-x-mono", "val_loss_x-y"]
    for texts in encoder.calls:
        assert len(texts) == len(set(texts))  # each distinct text once
    for kind, kind_batches in batches.items():
        losses = []
        for batch in kind_batches:
            texts = batch_texts(held_out, batch)
            q, p, n = ([encoder.vector(t, text_kind) for t in group] for text_kind, group in
                       (("query", texts.queries), ("passage", texts.positives), ("passage", texts.negatives)))
            losses.append(contrastive_loss(torch.tensor(np.array(q)), torch.tensor(np.array(p)),
                                           torch.tensor(np.array(n)).reshape(-1, 8), TEMPERATURE).item())
        # same fp32 vectors and operations; only another BLAS path: logits of d = 8 products
        # differ by <= 2 d U / t, the loss (a log-sum-exp minus a logit) by twice that
        assert ours[f"val_loss_{kind}"] == pytest.approx(np.mean(losses), abs=4 * 8 * U / TEMPERATURE)
    assert ours["val_loss"] == pytest.approx((ours["val_loss_x-x-mono"] + ours["val_loss_x-y"]) / 2)
    answers = held_out.drop_duplicates(["lang", "positive"])
    scores = np.array([[encoder.vector(t, "query") @ encoder.vector(p, "passage") for p in answers["positive"]]
                       for t in held_out["query"]], dtype=np.float64)
    answer_ids = [set(held_out["id"][(held_out["lang"] == lang) & (held_out["positive"] == text)])
                  for lang, text in zip(answers["lang"], answers["positive"])]
    relevant = np.array([[qid in ids for ids in answer_ids] for qid in held_out["id"]])
    maps, score, recall = sklearn_settings(scores, relevant, held_out["lang"].tolist(), answers["lang"].tolist())
    # fp32 dot products of d = 8 (ours) against float64 ones differ by <= 8 U: ranks agree when no two
    # scores of a query lie within 2 * 8 U of each other
    assert np.diff(np.sort(scores, axis=1), axis=1).min() > 2 * 8 * U
    assert ours["val_score"] == pytest.approx(score, rel=1e-12)
    assert ours["val_R@10"] == pytest.approx(recall, rel=1e-12)


def test_the_score_is_the_same_yardstick_for_every_strategy(tiny_model_dir, held_out):
    from hybridlib.models import DualEncoder

    encoder = DualEncoder.from_params(tiny_params(tiny_model_dir))
    values = {strategy: validation_metrics(encoder, held_out, validation_batches(held_out, strategy, 4),
                                           TEMPERATURE, symmetric=False)
              for strategy in ("x-x-mono", "x-y", "hybrid")}
    assert len({v["val_score"] for v in values.values()}) == 1  # one model, one score, whatever its batches
    assert len({v["val_loss"] for v in values.values()}) == 3  # each strategy's own loss differs


# ---------------------------------------------------------------------------------------------
# The loop: determinism, resumption, outputs, selection, errors
# ---------------------------------------------------------------------------------------------

def test_same_seed_same_weights_other_seed_other_weights(tiny_model_dir, tmp_path):
    params = tiny_params(tiny_model_dir, max_steps=3, validation_ids=0)
    runs = {name: train(params, "hybrid", seed, tmp_path / name, progress=False)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))}
    a, b, c = (model_weights(runs[name].model_dir) for name in "abc")
    assert_same_weights(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_run(tiny_model_dir, tmp_path, caplog):
    params = tiny_params(tiny_model_dir, grad_cache_chunk=3)
    whole = train(params, "hybrid", 0, tmp_path / "whole", progress=False)

    def crash_at_step_3(step):
        if step == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(params, "hybrid", 0, tmp_path / "crashed", progress=False, on_step=crash_at_step_3)
    assert (tmp_path / "crashed" / "checkpoints" / "last.pt").is_file()
    with caplog.at_level(logging.INFO, logger="hybridlib.train"):
        resumed = train(params, "hybrid", 0, tmp_path / "crashed", progress=False)
    assert "resumed hybrid seed 0 from step 2" in caplog.text
    assert resumed.resumed and not whole.resumed and resumed.steps == whole.steps == 6
    assert_same_weights(model_weights(whole.model_dir), model_weights(resumed.model_dir))
    logs = [pd.read_csv(r.log_path).drop(columns="seconds") for r in (whole, resumed)]
    pd.testing.assert_frame_equal(*logs)
    vals = [pd.read_csv(r.model_dir.parent / "val_log.csv") for r in (whole, resumed)]
    pd.testing.assert_frame_equal(*vals)
    assert resumed.best_val_score == whole.best_val_score == vals[0]["val_score"].max()


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
    kinds = ["x-x-mono", "x-y"] if strategy == "hybrid" else [strategy]
    assert list(val.columns) == VAL_COLUMNS + [f"val_loss_{kind}" for kind in kinds]
    assert val["step"].tolist() == [0, 2, 4]
    assert result.best_val_score == val["val_score"].max()
    done = pd.read_json(tmp_path / "train_done.json", typ="series")
    assert done["best_step"] == val["step"][val["val_score"].idxmax()]
    assert not (tmp_path / "checkpoints").exists()
    assert (result.model_dir / "model.safetensors").is_file()


def test_the_final_model_loads_with_transformers_and_sentence_transformers(trained_tiny_model):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from hybridlib.models import DualEncoder

    _, result = trained_tiny_model
    assert AutoModel.from_pretrained(result.model_dir).config.num_hidden_layers == 2
    ours = DualEncoder(str(result.model_dir), device="cpu", precision="fp32")
    embedding = ours.encode(["hallo welt"], "query", progress=False)
    theirs = SentenceTransformer(str(result.model_dir), device="cpu").encode(["query: hallo welt"],
                                                                            normalize_embeddings=True)
    # the same network on the same unpadded text; mean pooling and normalisation may sum in another order
    tokens = ours.tokenize(["hallo welt"], "query")
    with torch.no_grad():
        hidden = ours.model(**tokens).last_hidden_state
    assert_within(torch.from_numpy(theirs), torch.from_numpy(embedding),
                  pooling_bound(hidden, tokens["attention_mask"]), "embedding")


class ScriptedScores:
    """Replaces ``validation_metrics`` in the loop: real validation, then scripted ``val_score``s;
    keeps the weights of every validation."""

    def __init__(self, monkeypatch, scores):
        self.scores, self.snapshots, self.real = iter(scores), [], train_loop.validation_metrics
        self.cached = []  # the loop's cache= of each validation
        monkeypatch.setattr(train_loop, "validation_metrics", self)

    def __call__(self, encoder, *args, **kwargs):
        self.cached.append(kwargs.get("cache"))
        values = self.real(encoder, *args, **kwargs)
        self.snapshots.append({k: v.clone() for k, v in encoder.model.state_dict().items()})
        return values | {"val_score": next(self.scores)}


def test_early_stopping_keeps_the_highest_score(tiny_model_dir, tmp_path, monkeypatch):
    # steps 0, 2, 4, 6; the tie at step 4 is no progress, so 2 validations without one stop at 6
    scripted = ScriptedScores(monkeypatch, [0.2, 0.5, 0.5, 0.45, 0.9])
    params = tiny_params(tiny_model_dir, max_steps=10, early_stopping_patience=2)
    result = train(params, "x-y", 0, tmp_path, progress=False)
    assert result.steps == 6 and result.best_val_score == 0.5
    assert_same_weights(model_weights(result.model_dir), scripted.snapshots[1])  # the step-2 weights
    assert pd.read_csv(result.log_path)["step"].max() == 6
    assert pd.read_csv(tmp_path / "val_log.csv")["val_score"].tolist() == [0.2, 0.5, 0.5, 0.45]
    assert scripted.cached == [True, False, False, False]  # only the starting weights go through the cache


def test_restore_best_gives_back_the_untrained_model_when_step_0_wins(tiny_model_dir, tmp_path, monkeypatch):
    ScriptedScores(monkeypatch, [0.9, 0.5, 0.6])
    result = train(tiny_params(tiny_model_dir, max_steps=4, freeze_embeddings=False), "x-y", 0, tmp_path,
                   progress=False)
    assert result.steps == 4 and result.best_val_score == 0.9
    assert_same_weights(model_weights(result.model_dir), model_weights(tiny_model_dir))


def test_frozen_word_embeddings_do_not_change(tiny_model_dir, trained_tiny_model):
    params, result = trained_tiny_model
    assert params.freeze_embeddings
    before, after = model_weights(tiny_model_dir), model_weights(result.model_dir)
    name = "embeddings.word_embeddings.weight"
    assert torch.equal(before[name], after[name])
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           after["encoder.layer.0.attention.self.query.weight"])


def test_a_finished_run_is_not_trained_again(trained_tiny_model, tmp_path, caplog):
    params, first = trained_tiny_model
    folder = shutil.copytree(first.model_dir.parent, tmp_path / "run")  # the shared run stays as it is
    stamp = (folder / "model" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="hybridlib.train"):
        again = train(params, "x-y", 0, folder, progress=False)
    assert "already trained" in caplog.text
    assert again.model_dir == folder / "model" and again.steps == first.steps == 2
    assert (folder / "model" / "model.safetensors").stat().st_mtime_ns == stamp  # not written again
    with pytest.raises(TrainingError, match="holds a finished run with other parameters"):
        train(params, "x-y", 1, folder, progress=False)


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
    # 3 steps lower the validation loss by ~0.35 (1.49 -> 1.14; 6 steps: 0.95), far beyond any rounding
    params = params_from_dict(dict(
        model="default", train_dataset="mlqa-r", train_languages=["en", "de"], train_max_ids=200,
        validation_ids=16, batch_size=8, max_length=32, learning_rate=5e-5, warmup_ratio=0.0,
        max_steps=3, eval_every=3, device="cpu", precision="fp32"))
    result = train(params, "hybrid", 0, tmp_path, progress=False)
    val = pd.read_csv(tmp_path / "val_log.csv")
    assert val["step"].tolist() == [0, 3]
    assert val["val_loss"].iloc[1] < val["val_loss"].iloc[0]
    assert result.best_val_score == val["val_score"].max()
    assert val["val_R@10"].iloc[0] > 0.9  # the pretrained encoder finds most of 32 held-out answers


def test_the_step_leaves_copies_of_a_positive_out_of_the_denominator():
    from hybridlib.train.step import BatchTexts, with_false_negatives

    # ids 0 and 1 share their answer sentence "A"; id 1's hard negative is "A" too; "B" is id 2's answer
    texts = BatchTexts(["q0", "q1", "q2"], ["A", "A", "B"], ["C", "A", "A"])
    texts = with_false_negatives(texts, texts)
    expected = torch.zeros(3, 6, dtype=torch.bool)
    expected[0, [1, 4, 5]] = expected[1, [0, 4, 5]] = True
    assert torch.equal(texts.false_negatives, expected)
    torch.manual_seed(0)
    q, p = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    received = loss_of({"query": q, "passage": p}, texts, partial(batch_loss, temperature=TEMPERATURE))
    reference = contrastive_loss(q, p[:3], p[3:], TEMPERATURE, false_negatives=expected)
    assert torch.equal(received, reference)
    assert not torch.equal(received, contrastive_loss(q, p[:3], p[3:], TEMPERATURE))
