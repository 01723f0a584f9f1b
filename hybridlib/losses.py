"""The contrastive loss: InfoNCE with in-batch and hard negatives, single-process or gathered.

For query i the candidates are every positive and every hard negative of the batch
(B positives + the hard negatives, about B*h), scored by cosine / temperature
(paper.md "Model and loss"; sentence-transformers' ``MultipleNegativesRankingLoss`` with
``scale = 1 / temperature``; Karpukhin et al. 2020, DPR). Embeddings are expected L2-normalised,
so the dot product is the cosine.

Options:
- ``symmetric``: average with the passage->query term (each positive must pick out its query
  among the batch's queries), as sentence-transformers' ``MultipleNegativesRankingLoss`` with
  ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``;
- parallel queries (issue 7, ``parallel_query_weight``): ``weight * InfoNCE(q, q')`` where
  ``q'_i`` is a translation of query i (same id, another language) and the candidates are
  the batch's translations ``q'_j``; pairs whose id has no other language are left out.

Distributed: ``batch_loss`` gathers every tensor across ranks with the autograd-aware
``torch.distributed.nn.functional.all_gather``, so every query sees the whole global batch and
the loss equals the single-process ``contrastive_loss`` on that global batch (identical on every
rank). With DDP-style gradient averaging over ranks the gradients also equal the
single-process ones: each rank's gathered gradient is ``world_size`` times its share.

    q, p, n = embed(queries), embed(positives), embed(hard_negatives)  # L2-normalised
    loss = contrastive_loss(q, p, n, temperature=0.05)
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_TEMPERATURE = 0.05
_HALF = (torch.float16, torch.bfloat16)


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Mean InfoNCE: anchor i's positive is candidate i; every other candidate is a negative."""
    if anchors.dtype in _HALF:  # scores of 1/temperature scale lose too much in 16 bits
        anchors, candidates = anchors.float(), candidates.float()
    scores = anchors @ candidates.T / temperature
    labels = torch.arange(len(anchors), device=anchors.device)
    return F.cross_entropy(scores, labels)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, n: Optional[torch.Tensor] = None,
                     temperature: float = DEFAULT_TEMPERATURE, symmetric: bool = False) -> torch.Tensor:
    """InfoNCE of queries ``q`` [B, d] over positives ``p`` [B, d] plus hard negatives ``n`` [m, d].

    Pure (no communication): call it on the global batch to get the reference loss.
    ``symmetric`` averages with ``info_nce(p, q)`` (passages pick their query).
    """
    if len(q) != len(p):
        raise ValueError(f"{len(q)} queries but {len(p)} positives")
    candidates = p if n is None or len(n) == 0 else torch.cat([p, n])
    loss = info_nce(q, candidates, temperature)
    if symmetric:
        loss = (loss + info_nce(p, q, temperature)) / 2
    return loss


def parallel_query_loss(q: torch.Tensor, q_parallel: torch.Tensor,
                        temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """InfoNCE pulling each query towards its translation ``q_parallel[i]`` (in-batch negatives)."""
    return info_nce(q, q_parallel, temperature)


def is_distributed() -> bool:
    """True when a torch.distributed process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order, keeping gradients (first dims may differ)."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    size = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = torch.cat([x, x.new_zeros((max(sizes) - len(x),) + x.shape[1:])])
    with warnings.catch_warnings():  # deprecated in torch 2.13 for a private API; still the documented one
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*all_gather is deprecated")
        parts = all_gather(padded)
    return torch.cat([part[:s] for part, s in zip(parts, sizes)])


def batch_loss(q: torch.Tensor, p: torch.Tensor, n: Optional[torch.Tensor] = None,
               q_parallel: Optional[torch.Tensor] = None, parallel_mask: Optional[torch.Tensor] = None,
               temperature: float = DEFAULT_TEMPERATURE, symmetric: bool = False,
               parallel_query_weight: float = 0.0) -> torch.Tensor:
    """The training loss of one (shard of a) batch, over the global batch when distributed.

    ``q_parallel`` [k, d] are translations of the queries selected by the boolean
    ``parallel_mask`` [B] (used when ``parallel_query_weight > 0``).
    """
    n = n if n is not None else q.new_zeros((0, q.shape[1]))
    q_all, p_all, n_all = gather(q), gather(p), gather(n)
    loss = contrastive_loss(q_all, p_all, n_all, temperature, symmetric)
    if parallel_query_weight > 0 and q_parallel is not None:
        anchors = gather(q[parallel_mask])
        translations = gather(q_parallel)
        if len(anchors) >= 2:  # with one pair there is no negative to contrast with
            loss = loss + parallel_query_weight * parallel_query_loss(anchors, translations, temperature)
    return loss
