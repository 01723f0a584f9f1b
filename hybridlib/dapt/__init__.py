"""Domain-adaptive pre-training (DAPT): continued masked-LM training of the encoder on domain text.

Gururangan et al., ACL 2020, "Don't Stop Pretraining": before (or instead of) task fine-tuning,
continue the encoder's masked-language-model pre-training on unlabelled text of the target
domain. Here the domain text is the training dataset's paragraphs (``training_paragraphs``),
the corruption is BERT's (``mask_tokens``), the MLM head is built around the encoder
(``masked_lm_model``) and ``continue_pretraining`` runs the loop and saves the encoder in the
``DualEncoder`` folder format, ready for zero-shot evaluation or ``hybridlib.train``.

>>> from hybridlib.dapt import continue_pretraining, training_paragraphs
>>> from hybridlib.models import DualEncoder
>>> paragraphs = training_paragraphs("mlqa-r")  # MLQA-R's contexts in its 7 languages
>>> result = continue_pretraining("default", paragraphs[32:], "runs/dapt", steps=20, eval_paragraphs=paragraphs[:32])
>>> result.eval_loss_end < result.eval_loss_start
True
>>> encoder = DualEncoder(str(result.model_dir))  # evaluate it zero-shot, or fine-tune it with hybridlib.train
"""
from .corpus import EVAL_MASK_SEED, evaluation_batches, training_batch, training_paragraphs
from .head import masked_lm_head, masked_lm_logits, masked_lm_loss, masked_lm_model
from .masking import IGNORE_INDEX, mask_tokens, special_tokens_mask
from .pretrain import DaptResult, continue_pretraining, evaluate_masked_lm
from .settings import DaptError, DaptSettings, UnsupportedArchitectureError

__all__ = [
    "DaptError", "DaptResult", "DaptSettings", "EVAL_MASK_SEED", "IGNORE_INDEX", "UnsupportedArchitectureError",
    "continue_pretraining", "evaluate_masked_lm", "evaluation_batches", "mask_tokens", "masked_lm_head",
    "masked_lm_logits", "masked_lm_loss", "masked_lm_model", "special_tokens_mask", "training_batch",
    "training_paragraphs",
]
