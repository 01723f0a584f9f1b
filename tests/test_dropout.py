"""hybridlib.models.dropout: the mask against its definition, the module against torch's in eval
mode, the attention function against the explicit softmax with the same mask."""
import math

import pytest
import torch
from torch import nn

from hybridlib.models.dropout import (
    ATTENTION,
    FastDropout,
    attention,
    effective_rate,
    fast_dropout,
    keep_mask,
    use_fast_dropout,
)

CPU = torch.device("cpu")


def tiny_bert(attention_dropout: float = 0.1, hidden_dropout: float = 0.1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, attention_probs_dropout_prob=attention_dropout,
                        hidden_dropout_prob=hidden_dropout)
    return BertModel(config, add_pooling_layer=False)


def test_effective_rate_is_p_rounded_to_a_multiple_of_2_to_the_minus_15():
    assert effective_rate(0.1) == 3277 / 2**15
    assert abs(effective_rate(0.1) - 0.1) <= 2**-16
    assert effective_rate(0.0) == 0.0 and effective_rate(1.0) == 1.0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_rate_in_every_lane_of_the_random_words(p):
    # each element is an independent Bernoulli(1 - rate): 250k per lane, 6 binomial sigmas
    torch.manual_seed(1)
    mask = keep_mask((4, 250_000), p, CPU)
    per_lane = mask.view(-1, 4).float().mean(dim=0)  # element i uses the 16-bit lane i % 4 of a word
    n = mask.numel() // 4
    rate = effective_rate(p)
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert torch.all((per_lane - (1 - rate)).abs() < 6 * sigma), per_lane


def test_keep_mask_neighbours_are_independent():
    # P(both kept) = (1 - rate)^2 for adjacent elements (lanes of one word, and across words)
    torch.manual_seed(2)
    mask = keep_mask((1_000_000,), 0.5, CPU).float()
    both = (mask[:-1] * mask[1:]).mean().item()
    sigma = math.sqrt(0.25 * 0.75 / (mask.numel() - 1))
    assert abs(both - 0.25) < 6 * sigma


def test_fast_dropout_zeroes_the_dropped_and_scales_the_kept_and_its_gradient_is_the_mask():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    mask = keep_mask(x.shape, 0.1, CPU)
    torch.manual_seed(3)
    y = fast_dropout(x, 0.1)
    scale = torch.tensor(1 / (1 - effective_rate(0.1)))
    assert torch.equal(y, torch.where(mask, x * scale, torch.zeros(())))
    y.sum().backward()
    assert torch.equal(x.grad, mask.float() * scale)


def test_fast_dropout_is_the_identity_in_eval_and_at_p_zero():
    x = torch.randn(5, 7)
    assert fast_dropout(x, 0.3, training=False) is x
    assert fast_dropout(x, 0.0) is x
    module = FastDropout(0.3).eval()
    assert torch.equal(module(x), x)


def test_same_seed_same_mask():
    x = torch.ones(100, 100)
    torch.manual_seed(4)
    first = fast_dropout(x, 0.2)
    torch.manual_seed(4)
    assert torch.equal(fast_dropout(x, 0.2), first)


def reference_attention(query, key, value, keep, additive_mask, p):
    """softmax(q k^T / sqrt(d) + mask), dropped with ``keep`` (inverted), @ v, heads back to dim 2."""
    scores = query @ key.transpose(2, 3) * query.size(-1) ** -0.5 + additive_mask
    probabilities = torch.softmax(scores, dim=-1) * keep / (1 - effective_rate(p))
    return (probabilities @ value).transpose(1, 2)


@pytest.mark.parametrize("boolean_mask", [True, False])
def test_attention_with_dropout_is_the_explicit_softmax_with_the_same_mask(boolean_mask):
    torch.manual_seed(5)
    query, key, value = (torch.randn(2, 3, 6, 4, dtype=torch.float64) for _ in range(3))
    attend = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    attend[0, ..., 4:] = False  # the first text's last two tokens are padding
    additive = torch.zeros(attend.shape, dtype=torch.float64).masked_fill(~attend, torch.finfo(torch.float64).min)
    module = nn.Module()
    torch.manual_seed(6)
    keep = keep_mask((2, 3, 6, 6), 0.1, CPU)
    torch.manual_seed(6)
    output, weights = attention(module, query, key, value, attend if boolean_mask else additive, dropout=0.1)
    expected = reference_attention(query, key, value, keep, additive, 0.1)
    assert weights is None
    # float64 throughout; both sides sum the same <= 6 terms: agreement to a few ulps of 1
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)


def test_attention_without_dropout_is_torch_sdpa():
    torch.manual_seed(7)
    query, key, value = (torch.randn(2, 3, 5, 4) for _ in range(3))
    module = nn.Module()
    module.is_causal = False  # as BERT's self-attention says; transformers' sdpa defaults to causal
    output, _ = attention(module, query, key, value, None, dropout=0.0)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value).transpose(1, 2)
    assert torch.equal(output, expected)


def test_use_fast_dropout_keeps_eval_outputs_and_replaces_every_dropout():
    stock, fast = tiny_bert(), use_fast_dropout(tiny_bert())
    assert fast.config._attn_implementation == ATTENTION
    assert not any(type(m) is nn.Dropout for m in fast.modules())
    assert sum(isinstance(m, FastDropout) for m in fast.modules()) == sum(
        type(m) is nn.Dropout for m in stock.modules())
    ids = torch.randint(0, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    stock.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids, attention_mask=mask).last_hidden_state,
                           stock(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_without_dropout_training_outputs_and_gradients_match_torch():
    # p = 0: no mask is drawn, so the two models compute the same function in train mode; the
    # explicit softmax and torch's fused kernel differ by fp32 rounding of a 9-term softmax
    # and a 16-wide dot product, a few 2**-24 relative per layer
    stock, fast = tiny_bert(0.0, 0.0), use_fast_dropout(tiny_bert(0.0, 0.0))
    ids = torch.randint(0, 50, (3, 9))
    stock.train(), fast.train()
    out_stock, out_fast = stock(input_ids=ids).last_hidden_state, fast(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out_fast, out_stock, rtol=1e-5, atol=1e-5)


def test_training_with_dropout_replays_under_the_same_seed():
    model = use_fast_dropout(tiny_bert()).train()
    ids = torch.randint(0, 50, (2, 8))
    torch.manual_seed(8)
    first = model(input_ids=ids).last_hidden_state
    torch.manual_seed(8)
    assert torch.equal(model(input_ids=ids).last_hidden_state, first)
    torch.manual_seed(9)
    assert not torch.equal(model(input_ids=ids).last_hidden_state, first)


def test_a_model_unpickled_in_a_fresh_process_still_finds_its_attention(tmp_path):
    # torch.multiprocessing's spawn unpickles the encoder in a new interpreter, whose transformers
    # registry lacks the attention function until use_fast_dropout registers it again
    import pickle
    import subprocess
    import sys

    model = use_fast_dropout(tiny_bert())
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    script = ("import pickle, sys, torch; from hybridlib.models.dropout import use_fast_dropout; "
              "model = use_fast_dropout(pickle.loads(open(sys.argv[1], 'rb').read())).train(); "
              "print(model(input_ids=torch.ones(1, 4, dtype=torch.long)).last_hidden_state.shape)")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    assert "torch.Size([1, 4, 16])" in out.stdout
