"""DAPT's settings and errors: one validated record of what determines a continued pre-training run."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import HybridlibError


class DaptError(HybridlibError):
    """Continued pre-training cannot start or continue (bad setting, no text, foreign checkpoint)."""


class UnsupportedArchitectureError(DaptError):
    """The encoder's architecture has no usable masked-LM counterpart in ``transformers``."""


@dataclass(frozen=True)
class DaptSettings:
    """The settings of one DAPT run, checked on creation (the first problem as a one-line ``DaptError``).

    ``steps`` optimisation steps of ``batch_size`` windows of at most ``max_length`` tokens;
    ``mask_rate`` of the tokens are selected for prediction (BERT: 0.15); AdamW with peak
    ``learning_rate``, linear warm-up over ``warmup_ratio * steps`` steps then linear decay to 0,
    decoupled ``weight_decay`` on matrices only; ``freeze_embeddings`` keeps the word-embedding
    matrix (and so the decoder tied to it) fixed, as the study's fine-tuning may (it spares the
    optimiser a 250k x hidden matrix; the encoder body and the head's transform still train);
    ``precision`` as in ``hybridlib.models.resolve_precision``; ``seed`` fixes the head's
    initialisation, the order of the paragraphs, their windows, the masks and dropout.
    """

    steps: int
    batch_size: int = 8
    learning_rate: float = 5e-5
    mask_rate: float = 0.15
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    freeze_embeddings: bool = False
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise DaptError(problems[0])

    def problems(self) -> list[str]:
        """Every out-of-range setting, as one line each (empty when all are valid)."""
        found = []
        for name in ("steps", "batch_size", "max_length", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                found.append(f"dapt {name} must be an integer, not {value!r}")
        if found:
            return found
        if self.steps <= 0:
            found.append(f"dapt steps must be > 0, not {self.steps}")
        if self.batch_size <= 0:
            found.append(f"dapt batch_size must be > 0, not {self.batch_size}")
        if self.max_length < 3:  # two special tokens and at least one token of text
            found.append(f"dapt max_length must be >= 3, not {self.max_length}")
        if not _finite(self.mask_rate) or not 0 < self.mask_rate < 1:
            found.append(f"dapt mask_rate must lie in (0, 1), not {self.mask_rate}")
        if not _finite(self.learning_rate) or self.learning_rate <= 0:
            found.append(f"dapt learning_rate must be > 0, not {self.learning_rate}")
        if not _finite(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            found.append(f"dapt warmup_ratio must lie in [0, 1), not {self.warmup_ratio}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            found.append(f"dapt weight_decay must be >= 0, not {self.weight_decay}")
        if not isinstance(self.freeze_embeddings, bool):
            found.append(f"dapt freeze_embeddings must be true or false, not {self.freeze_embeddings!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            found.append(f"dapt precision {self.precision!r}: unknown (use auto, fp32, bf16 or fp16)")
        return found

    def as_dict(self) -> dict:
        """The settings as a plain dict (for fingerprints and logs)."""
        return asdict(self)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
