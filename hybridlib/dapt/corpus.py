"""DAPT's text: the paragraphs of a LAReQA dataset, cut into token windows and batched.

A step's batch is ``batch_size`` paragraphs (the paragraphs shuffled epoch by epoch), each as one
of its consecutive windows of at most ``max_length`` tokens with the tokenizer's special tokens,
drawn uniformly (a paragraph longer than one window shows another part on each visit).
Everything random about step ``s`` comes from a generator seeded by ``(seed, s)``: a run
resumed at step ``s`` builds exactly the batches an uninterrupted run would have built.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .masking import mask_tokens, special_tokens_mask
from .settings import DaptError

EVAL_MASK_SEED = 0  # the held-out paragraphs are masked the same way in every run (comparable losses)


def training_paragraphs(dataset, languages: Optional[Iterable[str]] = None) -> list[str]:
    """The distinct paragraphs (contexts) of a LAReQA dataset in ``languages`` (all when None).

    ``dataset``: a ``hybridlib.data.LaReQA`` or a dataset name (``"mlqa-r"``, loaded with
    ``load_lareqa``). Text only, no questions; in file order, each text once (a context repeated
    under two articles counts once); empty contexts are dropped.
    """
    if isinstance(dataset, str):
        from ..data import load_lareqa

        dataset = load_lareqa(dataset, languages)
    candidates = dataset.candidates
    if languages is not None:
        candidates = candidates[candidates["lang"].isin(list(languages))]
    contexts = candidates.drop_duplicates("paragraph")["context"]
    return [text for text in dict.fromkeys(contexts) if text.strip()]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step ``step`` of a run with ``seed`` (windows and masks)."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def step_paragraphs(n_paragraphs: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the paragraphs of step ``step`` (1-based): consecutive slots of the sequence of
    epoch permutations, epoch ``e`` shuffled by ``numpy.random.default_rng([seed, e])``."""
    slots = range((step - 1) * batch_size, step * batch_size)
    permutations: dict = {}
    indices = []
    for slot in slots:
        epoch, position = divmod(slot, n_paragraphs)
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(n_paragraphs)
        indices.append(int(permutations[epoch][position]))
    return indices


def token_windows(tokenizer, texts: Sequence[str], max_length: int,
                  generator: Optional[torch.Generator] = None) -> list[list[int]]:
    """Each text as one window of at most ``max_length`` ids, special tokens included.

    The tokenizer cuts a text into consecutive windows (``return_overflowing_tokens``); the
    window kept is drawn uniformly with ``generator``, or the first when ``generator`` is None.
    """
    if not texts:
        return []
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_overflowing_tokens=True)
    if "overflow_to_sample_mapping" not in encoded:
        raise DaptError(f"{type(tokenizer).__name__}: DAPT needs a fast (Rust) tokenizer to cut texts into windows")
    windows_of: dict = {}
    for text, ids in zip(encoded["overflow_to_sample_mapping"], encoded["input_ids"]):
        windows_of.setdefault(text, []).append(ids)
    chosen = []
    for text in range(len(texts)):
        windows = windows_of[text]
        pick = int(torch.randint(len(windows), (1,), generator=generator)) if generator is not None else 0
        chosen.append(windows[pick])
    return chosen


def pad(windows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of windows right-padded to the longest."""
    width = max(len(window) for window in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        input_ids[row, :len(window)] = torch.tensor(window, dtype=torch.long)
        attention_mask[row, :len(window)] = 1
    return input_ids, attention_mask


def masked_batch(tokenizer, windows: Sequence[Sequence[int]], mask_rate: float,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Pad windows and mask them: ``input_ids`` (corrupted), ``attention_mask``, ``labels``."""
    input_ids, attention_mask = pad(windows, tokenizer.pad_token_id)
    special = special_tokens_mask(input_ids, tokenizer) | (attention_mask == 0)
    inputs, labels = mask_tokens(input_ids, special, tokenizer, mask_rate, generator)
    return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}


def training_batch(tokenizer, paragraphs: Sequence[str], step: int, batch_size: int, max_length: int,
                   mask_rate: float, seed: int) -> dict[str, torch.Tensor]:
    """The masked batch of step ``step`` (1-based) of a run with ``seed`` (see the module docstring)."""
    generator = step_generator(seed, step)
    texts = [paragraphs[i] for i in step_paragraphs(len(paragraphs), batch_size, seed, step)]
    return masked_batch(tokenizer, token_windows(tokenizer, texts, max_length, generator), mask_rate, generator)


def evaluation_batches(tokenizer, paragraphs: Sequence[str], batch_size: int, max_length: int,
                       mask_rate: float, seed: int = EVAL_MASK_SEED) -> list[dict[str, torch.Tensor]]:
    """Fixed masked batches of held-out paragraphs (each its first window), masked with ``seed``:
    evaluating them before and after training compares the same masked positions."""
    generator = torch.Generator().manual_seed(seed)
    windows = token_windows(tokenizer, paragraphs, max_length)
    return [masked_batch(tokenizer, windows[start:start + batch_size], mask_rate, generator)
            for start in range(0, len(windows), batch_size)]


def text_fingerprint(texts: Optional[Sequence[str]]) -> str:
    """A short hash of a list of texts (a checkpoint of a run on other texts is refused)."""
    digest = hashlib.sha256()
    for text in texts or ():
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]
