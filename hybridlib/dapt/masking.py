"""BERT's masked-language-model corruption: select tokens, then 80% <mask> / 10% random / 10% kept.

Reference: Devlin et al., NAACL 2019, "BERT", section 3.1 and appendix A.1. ``mask_tokens``
makes the same random draws, in the same order, as ``transformers``'
``DataCollatorForLanguageModeling.torch_mask_tokens`` (tests/test_dapt.py checks that the two
agree on one generator state); it is written out because the collator accepts a generator only
since transformers 4.51, and a DAPT run draws each step's masks from its own generator so that
a resumed run masks exactly like an uninterrupted one.
"""
from __future__ import annotations

from typing import Optional

import torch

IGNORE_INDEX = -100  # the label of positions that are not predicted (torch's cross_entropy default)
MASK_SHARE = 0.8  # of the selected tokens: replaced by the mask token
RANDOM_SHARE = 0.1  # of the selected tokens: replaced by a random token; the rest are kept


def special_tokens_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Boolean tensor: True where ``input_ids`` holds a special token (<s>, </s>, <pad>, <mask>, ...)."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, special)


def mask_tokens(input_ids: torch.Tensor, special_mask: torch.Tensor, tokenizer, rate: float = 0.15,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch for masked-language-model training; returns ``(inputs, labels)``.

    Each position that is not special (``special_mask`` False; padding counts as special) is
    selected with probability ``rate``. A selected position is replaced by
    ``tokenizer.mask_token_id`` with probability 0.8, else by a token drawn uniformly from the
    tokenizer's ``len(tokenizer)`` ids with probability 0.5 (0.1 overall), else kept (0.1).
    ``labels`` holds the original id at the selected positions and ``IGNORE_INDEX`` (-100)
    elsewhere. ``input_ids`` is not changed; ``generator`` (CPU) makes the draws reproducible.
    """
    shape = input_ids.shape
    probability = torch.full(shape, float(rate)).masked_fill_(special_mask.bool().cpu(), 0.0)
    selected = torch.bernoulli(probability, generator=generator).bool().to(input_ids.device)
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    inputs = input_ids.clone()
    replaced = torch.bernoulli(torch.full(shape, MASK_SHARE), generator=generator).bool().to(inputs.device)
    replaced &= selected
    inputs[replaced] = tokenizer.mask_token_id
    random_share = RANDOM_SHARE / (1 - MASK_SHARE)  # of the selected tokens not replaced by the mask token
    randomised = torch.bernoulli(torch.full(shape, random_share), generator=generator).bool().to(inputs.device)
    randomised &= selected & ~replaced
    random_ids = torch.randint(len(tokenizer), shape, dtype=torch.long, generator=generator).to(inputs.device)
    inputs[randomised] = random_ids[randomised]
    return inputs, labels
