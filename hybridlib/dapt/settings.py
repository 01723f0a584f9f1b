"""DAPT's settings and errors: one validated record of what determines a continued pre-training run."""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields

from ..constants import PRECISIONS
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
    decoupled ``weight_decay`` on matrices only. Before them, ``head_steps`` steps (0: none) train
    only the MLM head's freshly initialised weights, the encoder fixed, at ``head_learning_rate``
    with the same warm-up ratio and decay (``hybridlib.dapt.pretrain``: the head starts random,
    unlike Gururangan et al.'s, which is RoBERTa's pre-trained one); ``freeze_embeddings`` keeps the word-embedding
    matrix (and so the decoder tied to it) fixed, as the study's fine-tuning may (it spares the
    optimiser a 250k x hidden matrix; the encoder body and the head's transform still train);
    ``precision`` as in ``hybridlib.models.resolve_precision``; ``seed`` fixes the head's
    initialisation, the order of the paragraphs, their windows, the masks and dropout.
    """

    steps: int
    batch_size: int = 8
    learning_rate: float = 5e-5
    head_steps: int = 30
    head_learning_rate: float = 1e-3
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
        return [f"dapt {name} {message}" for name, message in setting_problems(self.as_dict())]

    def as_dict(self) -> dict:
        """The settings as a plain dict (for fingerprints and logs)."""
        return asdict(self)


def setting_problems(values: dict) -> list[tuple[str, str]]:
    """Every out-of-range value of a mapping of ``DaptSettings`` fields as ``(field, message)``.

    Fields missing from ``values`` take their defaults (``steps`` has none: it is required). The
    message says what the value must be and what it is; ``DaptSettings.problems`` and the study's
    parameter schema (``hybridlib.config``, keys ``dapt_<field>``) prefix it with their own key.
    """
    values = {**DEFAULTS, **values}
    found = []
    for name in ("steps", "head_steps", "batch_size", "max_length", "seed"):
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            found.append((name, f"must be an integer, not {value!r}"))
    if found:
        return found
    if values["steps"] <= 0:
        found.append(("steps", f"must be > 0, not {values['steps']}"))
    if values["head_steps"] < 0:
        found.append(("head_steps", f"must be >= 0, not {values['head_steps']}"))
    if values["batch_size"] <= 0:
        found.append(("batch_size", f"must be > 0, not {values['batch_size']}"))
    if values["max_length"] < 3:  # two special tokens and at least one token of text
        found.append(("max_length", f"must be >= 3, not {values['max_length']}"))
    rate = values["mask_rate"]
    if not _finite(rate) or not 0 < rate < 1:
        found.append(("mask_rate", f"must lie in (0, 1), not {rate}"))
    if not _finite(values["learning_rate"]) or values["learning_rate"] <= 0:
        found.append(("learning_rate", f"must be > 0, not {values['learning_rate']}"))
    if not _finite(values["head_learning_rate"]) or values["head_learning_rate"] <= 0:
        found.append(("head_learning_rate", f"must be > 0, not {values['head_learning_rate']}"))
    if not _finite(values["warmup_ratio"]) or not 0 <= values["warmup_ratio"] < 1:
        found.append(("warmup_ratio", f"must lie in [0, 1), not {values['warmup_ratio']}"))
    if not _finite(values["weight_decay"]) or values["weight_decay"] < 0:
        found.append(("weight_decay", f"must be >= 0, not {values['weight_decay']}"))
    if not isinstance(values["freeze_embeddings"], bool):
        found.append(("freeze_embeddings", f"must be true or false, not {values['freeze_embeddings']!r}"))
    if values["precision"] not in PRECISIONS:
        found.append(("precision", f"must be one of {', '.join(PRECISIONS)}, not {values['precision']!r}"))
    return found


# The default of every field that has one (``steps`` has none): the one place they are written is the class.
DEFAULTS = {f.name: f.default for f in fields(DaptSettings) if f.default is not MISSING}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
