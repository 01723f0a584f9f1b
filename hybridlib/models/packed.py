"""The training forward of a BERT-family encoder over its real tokens only (no padding).

Padded, a batch of texts of different lengths makes every linear layer (nearly all of a training
step's arithmetic) compute padding positions too; in a default step's length-sorted chunks about
a quarter of them. ``packed_pooled`` runs the model's own modules on the texts' real tokens
packed into one ``(tokens, hidden)`` matrix:

- the embeddings and the attention run per group of texts (the ``groups`` of row indices, length
  sorted by the caller), padded to the group's longest text, because attention needs each text's
  tokens side by side;
- every other module (Q/K/V and output projections, feed-forward, LayerNorms, dropout) runs once
  on the packed matrix, so its matrix products are larger too.

The arithmetic per token is the padded forward's (``tests/test_train.py`` checks the embeddings and
gradients in float64). Dropout masks are drawn over the packed shapes, so one seed gives other
masks than the padded forward. ``benchmarks/bench_train.py`` measures the step it speeds up.
Other architectures keep the padded forward (``supports_packing``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dropout import ATTENTION, attention


def supports_packing(model: torch.nn.Module) -> bool:
    """True for the encoders ``packed_pooled`` runs: BERT, RoBERTa, XLM-R bodies with absolute
    positions and bidirectional self-attention (the layer layout it calls module by module), whose
    attention is ``hybridlib.models.dropout.attention`` or torch's sdpa (not transformers' eager).
    A wrapper (DistributedDataParallel) keeps the padded forward: it must run its own ``forward``."""
    from transformers import BertModel, RobertaModel, XLMRobertaModel

    if not isinstance(model, (BertModel, RobertaModel, XLMRobertaModel)):
        return False
    config = model.config
    return (not config.is_decoder and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
            and config._attn_implementation in (ATTENTION, "sdpa"))


def _attention_function(model: torch.nn.Module):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return attention if model.config._attn_implementation == ATTENTION else sdpa_attention_forward


@dataclass
class _Group:
    rows: torch.Tensor       # the group's texts (rows of the batch)
    width: int               # its longest text, in tokens
    gather: torch.Tensor     # (texts * width,) packed row of each padded position; padding -> the zero row
    real: torch.Tensor       # flat indices of the padded positions that are real tokens, in packed order
    key_mask: torch.Tensor   # (texts, 1, 1, width) True where a key is a real token


@dataclass
class _Packing:
    groups: list
    lengths: torch.Tensor    # tokens per text, in packed (group) order
    order: torch.Tensor      # the batch row of each text in packed order


def _packing(attention_mask: torch.Tensor, groups: list) -> _Packing:
    lengths = attention_mask.sum(dim=1)
    packed, start = [], 0
    total = int(lengths.sum())
    for rows in groups:
        group_lengths = lengths[rows]
        width = int(group_lengths.max())
        positions = torch.arange(width, device=lengths.device)
        is_real = positions < group_lengths[:, None]
        starts = start + torch.cumsum(group_lengths, 0) - group_lengths
        gather = torch.where(is_real, starts[:, None] + positions, total).reshape(-1)
        packed.append(_Group(rows, width, gather, is_real.reshape(-1).nonzero().squeeze(1), is_real[:, None, None, :]))
        start += int(group_lengths.sum())
    order = torch.cat(list(groups))
    return _Packing(packed, lengths[order], order)


def _embeddings(model: torch.nn.Module, input_ids: torch.Tensor, packing: _Packing) -> torch.Tensor:
    hidden = model.config.hidden_size
    return torch.cat([model.embeddings(input_ids=input_ids[group.rows, :group.width]).reshape(-1, hidden)
                      .index_select(0, group.real) for group in packing.groups])


def _self_attention(module: torch.nn.Module, hidden: torch.Tensor, packing: _Packing, attend) -> torch.Tensor:
    """A BERT self-attention module on packed tokens: projections packed, ``attend`` per group."""
    heads, size = module.num_attention_heads, module.attention_head_size
    with_zero_row = [torch.nn.functional.pad(projection(hidden), (0, 0, 0, 1))  # in the projection's dtype
                     for projection in (module.query, module.key, module.value)]
    dropout = module.dropout.p if module.training else 0.0
    outputs = []
    for group in packing.groups:
        count = len(group.rows)
        query, key, value = (states.index_select(0, group.gather).view(count, group.width, heads, size).transpose(1, 2)
                             for states in with_zero_row)
        output, _ = attend(module, query, key, value, group.key_mask, dropout=dropout, scaling=module.scaling)
        outputs.append(output.reshape(count * group.width, heads * size).index_select(0, group.real))
    return torch.cat(outputs)


def _feed_forward(layer: torch.nn.Module, context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The rest of a BERT layer on packed tokens, after the attention's ``context``: its output
    projection, dropout, residual and LayerNorm, then the feed-forward block's."""
    attended = layer.attention.output(context, hidden)
    return layer.output(layer.intermediate(attended), attended)


def packed_pooled(model: torch.nn.Module, tokens: dict, groups: list, pooling: str) -> torch.Tensor:
    """Pooled float32 states (``mean`` over each text's tokens, or ``cls``: its first) of a tokenized
    batch, in the batch's row order, computed over real tokens only (see the module docstring).

    ``tokens``: ``input_ids`` / ``attention_mask`` (right-padded); ``groups``: tensors of row
    indices covering every row once, each group padded for attention to its longest text
    (``hybridlib.train.length_chunks`` sorts them by length). The model must ``supports_packing``.
    """
    packing = _packing(tokens["attention_mask"], groups)
    hidden, attend = _embeddings(model, tokens["input_ids"], packing), _attention_function(model)
    for layer in model.encoder.layer:
        hidden = _feed_forward(layer, _self_attention(layer.attention.self, hidden, packing, attend), hidden)
    hidden = hidden.float()
    starts = torch.cumsum(packing.lengths, 0) - packing.lengths
    if pooling == "cls":
        pooled = hidden.index_select(0, starts)
    else:
        text_of_token = torch.repeat_interleave(torch.arange(len(packing.order), device=hidden.device), packing.lengths)
        sums = hidden.new_zeros(len(packing.order), hidden.shape[1]).index_add_(0, text_of_token, hidden)
        pooled = sums / packing.lengths[:, None].to(hidden.dtype)
    return pooled.index_select(0, torch.argsort(packing.order))
