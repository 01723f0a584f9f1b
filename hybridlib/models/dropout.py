"""Dropout with a cheaper random mask, for training on the CPU.

torch's CPU dropout draws a Bernoulli sample per element (``bernoulli_``); in a default training
step (32 pairs + 32 hard negatives, bf16, 2 cores) that took ~0.7 s of 3.7 s, mostly the attention
probabilities' dropout. ``fast_dropout`` fills the same mask from the bits of 64-bit random words, one
15-bit lane per element (~10x faster), and keeps an element unless its lane is below
``round(p * 2**15)``: the drop rate is ``p`` rounded to a multiple of 2**-15 (0.1 -> 0.100006).

``use_fast_dropout(model)`` puts it in a transformers model: its ``nn.Dropout`` modules become
``FastDropout`` and its attention runs ``attention`` (torch's fused kernel when there is no
dropout, as in evaluation; the explicit softmax with ``fast_dropout`` on the probabilities in training,
which is what torch's own kernel falls back to on the CPU when it has to drop). The masks come from
torch's default generator, so ``torch.manual_seed`` and saved RNG states (GradCache) replay them.
"""
from __future__ import annotations

import torch
from torch import nn

LANE_BITS = 15  # the top bit of a random int64 word is always 0: four 16-bit lanes, 15 random bits each
LANE_VALUES = 1 << LANE_BITS
ATTENTION = "hybridlib_sdpa"  # the attention implementation's registered name


def drop_threshold(p: float) -> int:
    """The lane value below which an element is dropped: ``p`` in units of 2**-15."""
    return round(p * LANE_VALUES)


def effective_rate(p: float) -> float:
    """The drop rate ``fast_dropout`` actually applies for ``p``."""
    return drop_threshold(p) / LANE_VALUES


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Boolean mask of ``shape``: True with probability ``1 - effective_rate(p)``, independently."""
    count = int(torch.Size(shape).numel())
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = words.view(torch.int16)[:count].bitwise_and(LANE_VALUES - 1)
    return (lanes >= drop_threshold(p)).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``nn.functional.dropout`` with ``keep_mask``: zero elements at rate ``effective_rate(p)`` and
    scale the others by ``1 / (1 - effective_rate(p))`` (inverted dropout, identity in eval)."""
    if not training or p == 0.0:
        return x
    rate = effective_rate(p)
    if rate >= 1.0:
        return torch.zeros_like(x)
    scale = torch.tensor(1.0 / (1.0 - rate), dtype=x.dtype, device=x.device)
    return x * keep_mask(x.shape, p, x.device).to(x.dtype) * scale


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose mask comes from ``keep_mask`` (same ``p``, same train / eval behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """A transformers attention function: torch's ``scaled_dot_product_attention`` without dropout;
    with dropout, softmax(q k^T * scaling + mask) with ``fast_dropout`` on the probabilities, then @ v.

    Same signature and return value as transformers' ``sdpa_attention_forward`` (whose masks it
    takes: boolean, True where a key may be attended, or additive floats). Bidirectional attention
    only: a causal module keeps ``sdpa_attention_forward``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not dropout or getattr(module, "is_causal", False):  # a decoder keeps torch's own kernel
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probabilities = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    output = torch.matmul(probabilities.to(value.dtype), value)
    return output.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Give a transformers model ``FastDropout`` modules and, where it uses torch's sdpa attention,
    the ``attention`` function above. Weights and outputs in eval mode are unchanged; calling it
    again is harmless (and needed in a process that unpickled such a model). Returns ``model``."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) in ("sdpa", ATTENTION):
        _register_attention()  # again in a process that unpickled the model (the registry is per process)
        model.set_attn_implementation(ATTENTION)
    return model
