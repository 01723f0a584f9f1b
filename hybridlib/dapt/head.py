"""A masked-language-model head around the study's encoder, with logits only where they are needed.

The default encoder (``hybridlib.models.build_default_model``) is saved as a plain ``BertModel``
without the MLM head it was pre-trained with. ``masked_lm_model`` builds
``AutoModelForMaskedLM`` of the encoder's own architecture (``BertForMaskedLM`` for the default
encoder, ``XLMRobertaForMaskedLM`` for an XLM-R one) and puts the encoder itself in as its base
model: the encoder's weights are kept, the decoder is tied to the encoder's word embeddings, and
the rest of the head (the transform layer: dense + activation + LayerNorm, and the output bias)
is freshly initialised with the architecture's own initialiser under a fixed seed. A head saved
with the encoder is not used. ``masked_lm_logits`` runs the encoder over the whole batch but the
head only at the masked positions: on a 250k-token vocabulary the head at every position would
cost several times the encoder itself.

Gururangan et al. (2020) continue RoBERTa's pre-training with RoBERTa's own pre-trained MLM head.
This encoder comes without one, so a fresh transform layer sits between the encoder and the
tied decoder; until it has learnt to map the encoder's hidden states to the embedding space, its
gradients are noise for the encoder. ``fresh_head_parameters`` are the weights the DAPT loop's
head phase trains alone (``masked_lm_loss(..., train_encoder=False)``: the encoder runs without
a graph) before the encoder trains with it.
"""
from __future__ import annotations

import torch

from .masking import IGNORE_INDEX
from .settings import UnsupportedArchitectureError


def _architecture(model) -> str:
    return (getattr(model.config, "architectures", None) or [type(model).__name__])[0]


def masked_lm_model(encoder_model, seed: int = 0):
    """``AutoModelForMaskedLM`` of ``encoder_model``'s architecture whose base model IS ``encoder_model``.

    The decoder shares the encoder's word-embedding matrix; the other head weights are freshly
    initialised from ``seed`` (the global torch RNG is left untouched). Training the returned
    model trains ``encoder_model`` in place. Raises ``UnsupportedArchitectureError`` (naming the
    architecture) when ``transformers`` has no masked-LM model for it, or when that model's head
    is not one module on top of the encoder's hidden states.
    """
    from transformers import MODEL_FOR_MASKED_LM_MAPPING, AutoModelForMaskedLM

    config = encoder_model.config
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise UnsupportedArchitectureError(
            f"encoder architecture {_architecture(encoder_model)} (model_type {config.model_type!r}) has no "
            f"masked-LM counterpart in transformers, so it cannot be pre-trained further (DAPT); use an "
            f"encoder-only architecture such as BERT or XLM-RoBERTa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlm = AutoModelForMaskedLM.from_config(config)
    prefix = mlm.base_model_prefix
    if type(getattr(mlm, prefix)) is not type(encoder_model):
        raise UnsupportedArchitectureError(
            f"encoder architecture {_architecture(encoder_model)}: its masked-LM model {type(mlm).__name__} "
            f"wraps a {type(getattr(mlm, prefix)).__name__}, not the encoder's {type(encoder_model).__name__}")
    setattr(mlm, prefix, encoder_model)
    mlm.get_output_embeddings().weight = encoder_model.get_input_embeddings().weight
    masked_lm_head(mlm)  # fails early for heads this module cannot run on gathered positions
    return mlm.to(next(encoder_model.parameters()).device).train(encoder_model.training)


def masked_lm_head(mlm) -> torch.nn.Module:
    """The module that maps hidden states to vocabulary logits (``cls`` of BERT, ``lm_head`` of XLM-R)."""
    heads = [module for name, module in mlm.named_children()
             if name != mlm.base_model_prefix and any(True for _ in module.parameters())]
    if len(heads) != 1:
        raise UnsupportedArchitectureError(
            f"{type(mlm).__name__}: its masked-LM head is not one module on the encoder's hidden states "
            f"(found {len(heads)}); hybridlib's DAPT supports BERT- and RoBERTa-like heads")
    return heads[0]


def fresh_head_parameters(mlm) -> list[torch.nn.Parameter]:
    """The head's freshly initialised weights: all of the head but the decoder matrix tied to the word
    embeddings (BERT: the transform's dense layer and LayerNorm, and the output bias)."""
    tied = mlm.get_output_embeddings().weight
    return [p for p in masked_lm_head(mlm).parameters() if p is not tied]


def masked_lm_logits(mlm, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     train_encoder: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` at the predicted positions only (``labels != -100``), row-major order.

    The encoder runs over the whole batch; its hidden states at the predicted positions are
    gathered into an ``(n, hidden)`` matrix and only those go through the head: ``(n, vocab)``
    logits instead of ``(batch, length, vocab)``. Equal to the full model's logits there.
    ``train_encoder=False`` runs the encoder under ``torch.no_grad`` (gradients reach the head only).
    """
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        hidden = mlm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    selected = labels != IGNORE_INDEX
    return masked_lm_head(mlm)(hidden[selected]), labels[selected]


def masked_lm_loss(mlm, batch: dict, reduction: str = "mean", train_encoder: bool = True) -> torch.Tensor:
    """Cross-entropy of the predicted tokens of a ``masked_batch`` (computed in float32).

    ``reduction``: ``mean`` over the predicted tokens (training) or ``sum`` (evaluation totals);
    ``train_encoder``: as in ``masked_lm_logits``.
    """
    logits, targets = masked_lm_logits(mlm, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                       train_encoder)
    if targets.numel() == 0:  # nothing selected (tiny batches only): no loss, but a graph for backward
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction=reduction)
