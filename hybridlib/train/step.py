"""One optimisation step: the texts of a batch, their embeddings, the loss's gradients, AdamW.

- Texts are embedded with little padding (``embed_in_chunks``): a BERT-family encoder runs its
  linear layers on the real tokens only and pads length-sorted chunks of ``LENGTH_CHUNK`` texts
  for attention alone (``hybridlib.models.packed``); other encoders run chunk by chunk.
- GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
  Limited Setup") when ``grad_cache_chunk`` is set: all texts are embedded in chunks without a
  graph, the loss and its gradient w.r.t. the embeddings are computed, then each chunk is
  embedded again with a graph (same dropout masks: the RNG state of its first pass is replayed)
  and back-propagated with the cached gradient, so a batch of 100 pairs trains in the memory of
  one chunk with the gradients of plain back-propagation.
- Mixed precision from the encoder's ``precision``: the forward passes run under its autocast
  (bf16 or fp16; the weights and the optimizer stay fp32), the loss in fp32; a ``GradScaler``
  scales the loss for fp16 and is a pass-through otherwise (``grad_scaler``).
- AdamW without weight decay on biases and LayerNorm weights, linear warm-up over
  ``warmup_ratio * max_steps`` steps then linear decay to 0 at ``max_steps`` (``build_optimizer``).
- Distributed (a process group of several ranks): each rank embeds its shard of the global
  batch, ``hybridlib.losses.batch_loss`` gathers the embeddings (every rank holds the loss of
  the global batch), and ``average_gradients`` makes the gradients those of one process.

    optimizer, scheduler = build_optimizer(encoder.model, params)
    loss = optimizer_step(encoder, batch_texts(table, batch), loss_fn, optimizer, grad_scaler(encoder))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from ..config import StudyParams
from ..losses import false_negative_mask, is_distributed
from ..sampling import NO_ROW, Batch

# Texts padded together for attention (length sorted, see length_chunks). A BERT-family encoder's
# linear layers see only real tokens whatever the size; 8-16 timed alike on a default step (12 best).
LENGTH_CHUNK = 12


@dataclass
class BatchTexts:
    """The texts of one batch: queries, positives, hard negatives (of the passage rows) and the
    translations of the queries selected by ``parallel_mask`` (parallel-query loss term).

    ``false_negatives``: the loss's mask of candidates that are copies of a query's positive
    (``losses.false_negative_mask``), built over the GLOBAL batch (``with_false_negatives``).
    """

    queries: list
    positives: list
    negatives: list
    parallel_queries: list = field(default_factory=list)
    parallel_mask: Optional[torch.Tensor] = None
    false_negatives: Optional[torch.Tensor] = None


def batch_texts(table: pd.DataFrame, batch: Batch) -> BatchTexts:
    """Look up the texts of a batch's rows in its pairs table."""
    queries = table["query"].to_numpy()
    q_rows, p_rows = list(batch.query_rows), list(batch.passage_rows)
    negatives = [text for negs in table["negatives"].to_numpy()[p_rows] for text in negs]
    texts = BatchTexts(queries[q_rows].tolist(), table["positive"].to_numpy()[p_rows].tolist(), negatives)
    if batch.parallel_rows is not None:
        rows = np.asarray(batch.parallel_rows)
        texts.parallel_mask = torch.from_numpy(rows != NO_ROW)
        texts.parallel_queries = queries[rows[rows != NO_ROW]].tolist()
    return texts


def with_false_negatives(texts: BatchTexts, global_texts: BatchTexts) -> BatchTexts:
    """``texts`` (one rank's shard) with the false-negative mask of the global batch.

    The loss gathers every rank's positives, then every rank's negatives, in the global batch's
    order, so the mask over the global batch's texts is the mask of the gathered candidates.
    """
    candidates = global_texts.positives + global_texts.negatives
    texts.false_negatives = false_negative_mask(global_texts.positives, candidates)
    return texts


def text_groups(texts: BatchTexts) -> dict:
    """Texts to embed, by kind: queries (+ their translations), passages (positives + negatives)."""
    return {"query": texts.queries + texts.parallel_queries, "passage": texts.positives + texts.negatives}


def loss_of(embeddings: dict, texts: BatchTexts, loss_fn: Callable) -> torch.Tensor:
    """``loss_fn(q, p, n, q_parallel, parallel_mask)`` on the embeddings of ``text_groups(texts)``,
    with ``false_negatives=`` when the batch has that mask."""
    b = len(texts.queries)
    q, p = embeddings["query"], embeddings["passage"]
    masked = {} if texts.false_negatives is None else {"false_negatives": texts.false_negatives}
    return loss_fn(q[:b], p[:b], p[b:], q[b:], texts.parallel_mask, **masked)


def length_chunks(tokens: dict, size: int) -> list:
    """Row indices of a tokenized batch sorted by length, cut into chunks of ``size`` rows.

    Padding each chunk only to its own longest text spares most padding: in MLQA-R batches of
    32 pairs, 38% of the positions of one padded passage batch are real tokens, 74% with 4
    length-sorted chunks.
    """
    order = torch.argsort(tokens["attention_mask"].sum(dim=1), stable=True)
    return list(torch.split(order, size))


def _subset(tokens: dict, rows: torch.Tensor) -> dict:
    """Rows of a tokenized batch (a GradCache chunk)."""
    return {key: value[rows] for key, value in tokens.items()}


def embed_in_chunks(encoder, tokens: dict, size: int = LENGTH_CHUNK) -> torch.Tensor:
    """Embeddings of a tokenized batch in input order, with little padding: ``encoder.embed_groups``
    over its length-sorted chunks (``length_chunks``). A BERT-family encoder runs on the real
    tokens only and pads the chunks for attention alone; others embed chunk by chunk."""
    return encoder.embed_groups(tokens, length_chunks(tokens, size))


def backward(encoder, texts: BatchTexts, loss_fn: Callable, grad_cache_chunk: Optional[int] = None,
             scale: Callable = lambda loss: loss) -> torch.Tensor:
    """Embed a batch, compute ``loss_fn`` and accumulate its gradients into the encoder.

    ``loss_fn(q, p, n, q_parallel, parallel_mask)``; ``scale`` (a GradScaler's ``scale``) is
    applied before back-propagation. Texts are embedded by ``embed_in_chunks`` under the
    encoder's autocast. With ``grad_cache_chunk`` the gradients are those of plain
    back-propagation, computed with at most that many texts in memory at once (GradCache: each
    chunk embedded as a batch of its own). Returns the loss (detached).
    """
    tokens = {kind: encoder.tokenize(texts_, kind) for kind, texts_ in text_groups(texts).items() if texts_}
    if grad_cache_chunk is None:
        with encoder.autocast():
            embeddings = {kind: embed_in_chunks(encoder, tokens_) for kind, tokens_ in tokens.items()}
        loss = loss_of(embeddings, texts, loss_fn)
        scale(loss).backward()
        return loss.detach()
    return _grad_cache_backward(encoder, tokens, texts, loss_fn, grad_cache_chunk, scale)


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _grad_cache_backward(encoder, tokens: dict, texts: BatchTexts, loss_fn: Callable, chunk: int,
                         scale: Callable) -> torch.Tensor:
    device = encoder.device
    chunks = {kind: length_chunks(tokens_, chunk) for kind, tokens_ in tokens.items()}
    rng_states, cached = [], {}
    with torch.no_grad(), encoder.autocast():  # 1. embeddings without a graph
        for kind, kind_chunks in chunks.items():
            cached[kind] = torch.empty((len(tokens[kind]["input_ids"]), encoder.dim), device=device)
            for rows in kind_chunks:
                rng_states.append(_rng_state(device))
                cached[kind][rows] = embed_in_chunks(encoder, _subset(tokens[kind], rows))
            cached[kind].requires_grad_(True)
    state_after = _rng_state(device)
    loss = loss_of(cached, texts, loss_fn)  # 2. loss and its gradient w.r.t. the embeddings
    scale(loss).backward()
    states = iter(rng_states)
    for kind, kind_chunks in chunks.items():  # 3. each chunk again, with a graph and the same dropout
        for rows in kind_chunks:
            _set_rng_state(next(states), device)
            with encoder.autocast():
                embedded = embed_in_chunks(encoder, _subset(tokens[kind], rows))
            embedded.backward(cached[kind].grad[rows])
    _set_rng_state(state_after, device)
    return loss.detach()


def average_gradients(model: torch.nn.Module) -> None:
    """Average the gradients over the ranks of the process group (what DDP does after backward)."""
    world = dist.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world


def build_optimizer(model: torch.nn.Module, params: StudyParams):
    """AdamW over the trainable weights (no decay on 1-d ones: biases, LayerNorm) + linear schedule.

    Returns ``(optimizer, scheduler)``: warm-up over ``warmup_ratio * max_steps`` steps, then a
    linear decay to 0 at ``max_steps`` (transformers' ``get_linear_schedule_with_warmup``).
    """
    from transformers import get_linear_schedule_with_warmup

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": params.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=params.learning_rate)
    warmup = round(params.warmup_ratio * params.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, params.max_steps)
    return optimizer, scheduler


def grad_scaler(encoder) -> torch.amp.GradScaler:
    """The loss scaler of the encoder's precision: active for fp16 only (bf16 has fp32's range)."""
    return torch.amp.GradScaler(encoder.device.type, enabled=encoder.precision == "fp16")


def optimizer_step(encoder, texts: BatchTexts, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, grad_cache_chunk: Optional[int] = None) -> torch.Tensor:
    """One update of the encoder on a batch: gradients (``backward``), averaged over ranks when
    distributed, then ``scaler.step(optimizer)`` (skipped by an fp16 scaler on inf/NaN gradients).

    The learning-rate schedule is the caller's. Returns the loss (detached).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = backward(encoder, texts, loss_fn, grad_cache_chunk, scaler.scale)
    if is_distributed():
        average_gradients(encoder.model)
    scaler.step(optimizer)
    scaler.update()
    return loss
