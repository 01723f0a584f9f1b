"""The contrastive loss: InfoNCE with in-batch and hard negatives, single-process or gathered.

For query i the candidates are every positive and every hard negative of the batch
(B positives + the hard negatives, about B*h), scored by cosine / temperature
(docs/paper.md "Model and loss"; sentence-transformers' ``MultipleNegativesRankingLoss`` with
``scale = 1 / temperature``; Karpukhin et al. 2020, DPR). Embeddings are expected L2-normalised,
so the dot product is the cosine.

Options:
- ``symmetric``: average with the passage->query term (each positive must pick out its query
  among the batch's queries), as sentence-transformers' ``MultipleNegativesRankingLoss`` with
  ``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``;
- parallel queries (issue 7, ``parallel_query_weight``): ``weight * InfoNCE(q, q')`` where
  ``q'_i`` is a translation of query i (same id, another language) and the candidates are
  the batch's translations ``q'_j``; pairs whose id has no other language are left out;
- ``false_negatives`` (issue 14): candidates whose text equals query i's positive (another id
  with the same answer sentence, a hard negative equal to an in-batch positive) are correct
  answers, not negatives: they are left out of query i's denominator (``false_negative_mask``),
  as sentence-transformers' ``GISTEmbedLoss`` leaves out its guide's false negatives.

Distributed: ``batch_loss`` gathers every tensor across ranks with the autograd-aware
``torch.distributed.nn.functional.all_gather``, so every query sees the whole global batch and
the loss equals the single-process ``contrastive_loss`` on that global batch (identical on every
rank). With DDP-style gradient averaging over ranks the gradients also equal the
single-process ones: each rank's gathered gradient is ``world_size`` times its share.

    q, p, n = embed(queries), embed(positives), embed(hard_negatives)  # L2-normalised
    mask = false_negative_mask(positives, positives + hard_negatives)
    loss = contrastive_loss(q, p, n, temperature=0.05, false_negatives=mask)
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

DEFAULT_TEMPERATURE = 0.05
_HALF = (torch.float16, torch.bfloat16)


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE,
             excluded: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean InfoNCE: anchor i's positive is candidate i; every other candidate is a negative.

    ``excluded`` [anchors, candidates] (bool, optional): candidates left out of an anchor's
    softmax (their score becomes -inf, in fp32 or wider); an anchor's own positive cannot be.
    """
    if anchors.dtype in _HALF:  # scores of 1/temperature scale lose too much in 16 bits
        anchors, candidates = anchors.float(), candidates.float()
    scores = anchors @ candidates.T / temperature
    labels = torch.arange(len(anchors), device=anchors.device)
    if excluded is not None:
        excluded = _checked_exclusion(excluded, scores.shape)
        scores = scores.masked_fill(excluded.to(scores.device), float("-inf"))
    return F.cross_entropy(scores, labels)


def _checked_exclusion(excluded: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if excluded.shape != shape:
        raise ValueError(f"the false-negative mask has shape {tuple(excluded.shape)}, the scores {tuple(shape)} "
                         f"(queries x (positives + hard negatives), over the global batch)")
    if excluded.dtype != torch.bool:
        raise ValueError(f"the false-negative mask must be boolean, not {excluded.dtype}")
    if excluded.diagonal().any():
        raise ValueError("the false-negative mask leaves out an anchor's own positive")
    return excluded


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, n: Optional[torch.Tensor] = None,
                     temperature: float = DEFAULT_TEMPERATURE, symmetric: bool = False,
                     false_negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """InfoNCE of queries ``q`` [B, d] over positives ``p`` [B, d] plus hard negatives ``n`` [m, d].

    Pure (no communication): call it on the global batch to get the reference loss.
    ``symmetric`` averages with ``info_nce(p, q)`` (passages pick their query).
    ``false_negatives`` [B, B + m] (bool, optional; ``false_negative_mask``): ``[i, j]`` leaves
    candidate j (positives, then hard negatives) out of query i's denominator. The symmetric
    term applies the transposed rule: query j is left out of passage i's denominator when
    ``false_negatives[j, i]`` (query j's positive has passage i's text).
    """
    if len(q) != len(p):
        raise ValueError(f"{len(q)} queries but {len(p)} positives")
    candidates = p if n is None or len(n) == 0 else torch.cat([p, n])
    loss = info_nce(q, candidates, temperature, false_negatives)
    if symmetric:
        transposed = None if false_negatives is None else false_negatives[:, :len(p)].T
        loss = (loss + info_nce(p, q, temperature, transposed)) / 2
    return loss


def false_negative_mask(positive_texts: Sequence[str], candidate_texts: Sequence[str]) -> torch.Tensor:
    """Which candidates are copies of a query's positive: ``[B, len(candidate_texts)]`` booleans.

    ``positive_texts``: the B queries' positive passages, in query order; ``candidate_texts``:
    the loss's candidates in its order, the same B positives first, then the hard negatives.
    ``[i, j]`` is True when candidate j has exactly the text of query i's positive and is not
    that positive itself (j != i): another id with the same answer sentence, or a hard negative
    equal to query i's positive. Texts are compared through integer codes (one hash per text).
    """
    b = len(positive_texts)
    if list(candidate_texts[:b]) != list(positive_texts):
        raise ValueError("the candidates must start with the positives, in query order")
    codes: dict = {}
    candidate_codes = torch.tensor([codes.setdefault(text, len(codes)) for text in candidate_texts],
                                   dtype=torch.long)
    mask = candidate_codes[:b, None] == candidate_codes[None, :]
    mask[torch.arange(b), torch.arange(b)] = False
    return mask


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
               parallel_query_weight: float = 0.0, false_negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The training loss of one (shard of a) batch, over the global batch when distributed.

    ``q_parallel`` [k, d] are translations of the queries selected by the boolean
    ``parallel_mask`` [B] (used when ``parallel_query_weight > 0``). ``false_negatives``: the
    mask of ``contrastive_loss`` for the GLOBAL batch, the same on every rank: rows the gathered
    queries, columns the gathered positives then the gathered negatives (each in rank order),
    i.e. ``false_negative_mask(P, P + N)`` with ``P`` / ``N`` the global batch's positive /
    hard-negative texts (ranks hold contiguous shards, so rank order is the global order).
    """
    n = n if n is not None else q.new_zeros((0, q.shape[1]))
    q_all, p_all, n_all = gather(q), gather(p), gather(n)
    loss = contrastive_loss(q_all, p_all, n_all, temperature, symmetric, false_negatives)
    if parallel_query_weight > 0 and q_parallel is not None:
        anchors = gather(q[parallel_mask])
        translations = gather(q_parallel)
        if len(anchors) >= 2:  # with one pair there is no negative to contrast with
            loss = loss + parallel_query_weight * parallel_query_loss(anchors, translations, temperature)
    return loss
