"""Domain-adaptive pre-training (DAPT): continued masked-LM training of the encoder on domain text.

Gururangan et al., ACL 2020, "Don't Stop Pretraining": before (or instead of) task fine-tuning,
continue the encoder's masked-language-model pre-training on unlabelled text of the target
domain. Here the domain text is the training dataset's paragraphs (``training_paragraphs``),
the corruption is BERT's (``mask_tokens``), the MLM head is built around the encoder
(``masked_lm_model``; its transform layer is fresh, as this encoder ships without its pre-training
head, so ``head_steps`` steps train the head alone first) and ``continue_pretraining`` runs the
loop and saves the encoder in the ``DualEncoder`` folder format, ready for zero-shot evaluation
or ``hybridlib.train``. In a study, the strategies ``dapt`` and ``dapt+hybrid`` get their encoder
from ``pretrain_for_study`` (``study``: the parameter file's ``dapt_*`` keys, the study's training
paragraphs, one run per seed).

>>> from hybridlib.dapt import continue_pretraining, training_paragraphs
>>> from hybridlib.models import DualEncoder
>>> paragraphs = training_paragraphs("mlqa-r")  # MLQA-R's contexts in its 7 languages
>>> result = continue_pretraining("default", paragraphs[32:], "runs/dapt", steps=20, eval_paragraphs=paragraphs[:32])
>>> result.eval_loss_end < result.eval_loss_start
True
>>> encoder = DualEncoder(str(result.model_dir))  # evaluate it zero-shot, or fine-tune it with hybridlib.train
"""
from __future__ import annotations

import importlib

# Public name -> its module. Imported on first use (PEP 562), so that ``hybridlib.config`` can read
# ``hybridlib.dapt.settings`` without importing torch.
_EXPORTS = {
    "EVAL_MASK_SEED": "corpus", "evaluation_batches": "corpus", "training_batch": "corpus",
    "training_paragraphs": "corpus",
    "fresh_head_parameters": "head", "masked_lm_head": "head", "masked_lm_logits": "head", "masked_lm_loss": "head",
    "masked_lm_model": "head",
    "IGNORE_INDEX": "masking", "mask_tokens": "masking", "special_tokens_mask": "masking",
    "DaptResult": "pretrain", "continue_pretraining": "pretrain", "evaluate_masked_lm": "pretrain",
    "DaptError": "settings", "DaptSettings": "settings", "UnsupportedArchitectureError": "settings",
    "setting_problems": "settings",
    "EVAL_PARAGRAPHS": "study", "dapt_folder": "study", "dapt_settings": "study", "pretrain_for_study": "study",
    "study_paragraphs": "study",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
