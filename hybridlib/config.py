"""Parameters of a study: one schema for every ``params/*.yaml`` file.

A parameter file is validated before any work starts. Every problem is reported as one
line that names the key (``ParamsError``), so a typo never costs a training run.

>>> params = load_params("params/smoke.yaml")
>>> params.batch_size
8
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .constants import (
    BATCH_STRATEGIES,
    DAPT_FINE_TUNING,
    DAPT_STRATEGIES,
    PAPER_STRATEGIES,
    PRECISIONS,
    STRATEGIES,
    ZERO_SHOT,
)
from .dapt.settings import DEFAULTS as DAPT_DEFAULTS
from .dapt.settings import setting_problems
from .errors import HybridlibError

DATASET_LANGUAGES = {
    "xquad-r": ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"),
    "mlqa-r": ("ar", "de", "en", "es", "hi", "vi", "zh"),
}
# Languages of the paper's training data and mMARCO (the paper-scale configurations).
PAPER_LANGUAGES = ("en", "ar", "zh", "de", "es", "ru", "th", "tr", "hi")
KNOWN_LANGUAGES = tuple(sorted({l for ls in DATASET_LANGUAGES.values() for l in ls} | set(PAPER_LANGUAGES)))
TRAIN_SOURCES = ("xquad-r", "mlqa-r", "mmarco")
# The DaptSettings fields a parameter file sets, as keys ``dapt_<field>`` (precision and seed are the study's).
DAPT_KEYS = ("steps", "batch_size", "learning_rate", "head_steps", "head_learning_rate", "mask_rate", "max_length",
             "warmup_ratio", "weight_decay", "freeze_embeddings")
EVAL_DATASETS = ("xquad-r", "mlqa-r", "miracl")


class ParamsError(HybridlibError, ValueError):
    """A parameter file is unusable; the message is one line naming the key."""


def _int_is_a_float(value):
    """YAML writes 0 and 1 as ints; in strict mode they must still be valid floats."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Variant(BaseModel):
    """A named training run beside the plain strategies: one strategy with some settings changed.

    The alpha sweep and the objective ablation are lists of variants, e.g.
    ``{name: hybrid-a0.25, strategy: hybrid, alpha: 0.25}`` or
    ``{name: hybrid+symmetric, strategy: hybrid, symmetric_loss: true}``.
    Its ``name`` is the ``strategy`` label of its rows in ``metrics.csv``.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    strategy: str
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0)
    symmetric_loss: Optional[bool] = None
    parallel_query_weight: Optional[float] = Field(None, ge=0)
    temperature: Optional[float] = Field(None, gt=0)
    hard_negatives: Optional[int] = Field(None, ge=0)

    _floats = field_validator("alpha", "parallel_query_weight", "temperature", mode="before")(
        lambda value: _int_is_a_float(value))

    @field_validator("strategy")
    @classmethod
    def _trainable_strategy(cls, value):
        if value not in BATCH_STRATEGIES:
            raise ValueError(f"unknown strategy {value!r} (expected one of {', '.join(BATCH_STRATEGIES)})")
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_=-]*", value) or "-seed" in value:
            raise ValueError(f"{value!r} must be a file-name-safe label (letters, digits, . + _ = -)")
        return value

    def overrides(self) -> dict:
        """The settings this variant changes, as a dict for ``StudyParams.model_copy(update=...)``."""
        return {k: v for k, v in self.model_dump(exclude={"name", "strategy"}).items() if v is not None}


class StudyParams(BaseModel):
    """Every parameter of a study, with defaults that run the smoke study."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # -- identity and model
    run_name: str = "smoke"
    model: str = "default"  # "default" = embedded multilingual-e5-small, or a hub name / path
    pooling: Literal["mean", "cls"] = "mean"
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    max_length: int = Field(128, ge=8, le=8192)
    candidate_context: bool = False  # encode sentence + its paragraph (LAReQA's option)

    # -- training data
    train_dataset: Union[str, list[str]] = "mlqa-r"  # LAReQA name, "mmarco", or a .jsonl path
    train_languages: Optional[list[str]] = None  # None = every language of the training data
    train_max_ids: Optional[int] = Field(None, ge=2)  # cap on question ids (smoke runs)
    validation_ids: int = Field(64, ge=0)  # ids held out for validation (the selection score)

    # -- evaluation
    eval_datasets: list[str] = ["xquad-r"]
    eval_languages: Optional[list[str]] = None
    # None: the full pools; N: a seeded random sample of whole paragraphs, stratified by article,
    # holding about N question ids (data.sample_paragraphs)
    eval_max_ids: Optional[int] = Field(None, ge=1)
    eval_sample_seed: int = 0
    # MIRACL (BEIR format): None ranks each corpus with a dense score matrix; a faiss index type
    # (flat = exact, hnsw / ivf = approximate) retrieves the top 100 instead, for large corpora
    beir_index: Optional[Literal["flat", "hnsw", "ivf"]] = None

    # -- batches (the paper's contribution)
    strategies: list[str] = [ZERO_SHOT, *PAPER_STRATEGIES]
    variants: list[Variant] = []  # extra named runs: alpha sweep, objective ablation
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    batch_size: int = Field(32, ge=2)
    hard_negatives: int = Field(1, ge=0)

    # -- optimisation
    learning_rate: float = Field(3e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.05, gt=0)
    max_steps: int = Field(100, ge=1)
    eval_every: int = Field(25, ge=1)  # steps between validations / checkpoints
    early_stopping_patience: Optional[int] = Field(None, ge=1)  # validations without progress
    grad_cache_chunk: Optional[int] = Field(None, ge=1)  # GradCache chunk size; None = plain
    symmetric_loss: bool = False  # add the passage-to-query InfoNCE term
    parallel_query_weight: float = Field(0.0, ge=0)  # pull parallel queries together
    seeds: list[int] = [0]
    freeze_embeddings: bool = True
    precision: Literal[PRECISIONS] = "auto"
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps

    # -- domain-adaptive pre-training (strategies dapt, dapt+hybrid; hybridlib.dapt): continued masked-LM
    # training on the training data's paragraphs, one run per seed. Used only when a DAPT strategy is
    # listed; ranges checked by hybridlib.dapt's setting_problems, defaults those of DaptSettings.
    dapt_steps: Optional[int] = None  # required with a DAPT strategy
    dapt_batch_size: int = DAPT_DEFAULTS["batch_size"]  # paragraph windows per step
    dapt_learning_rate: float = DAPT_DEFAULTS["learning_rate"]
    dapt_head_steps: int = DAPT_DEFAULTS["head_steps"]  # head-only steps first (its transform starts random); 0: none
    dapt_head_learning_rate: float = DAPT_DEFAULTS["head_learning_rate"]  # of those head-only steps
    dapt_mask_rate: float = DAPT_DEFAULTS["mask_rate"]  # share of tokens predicted (BERT: 0.15)
    dapt_max_length: int = DAPT_DEFAULTS["max_length"]  # tokens per window
    dapt_warmup_ratio: float = DAPT_DEFAULTS["warmup_ratio"]
    dapt_weight_decay: float = DAPT_DEFAULTS["weight_decay"]
    dapt_freeze_embeddings: bool = DAPT_DEFAULTS["freeze_embeddings"]  # word embeddings (and tied decoder) fixed

    # -- outputs and statistics
    keep_models: bool = False  # keep fine-tuned weights in the run folder (~470 MB each)
    bootstrap_samples: int = Field(1000, ge=10)

    _floats = field_validator("learning_rate", "weight_decay", "warmup_ratio", "temperature", "alpha",
                              "parallel_query_weight", "dapt_learning_rate", "dapt_head_learning_rate",
                              "dapt_mask_rate", "dapt_warmup_ratio", "dapt_weight_decay",
                              mode="before")(lambda value: _int_is_a_float(value))

    @field_validator("train_dataset")
    @classmethod
    def _known_train_source(cls, value):
        for source in [value] if isinstance(value, str) else value:
            if source not in TRAIN_SOURCES and not source.endswith(".jsonl"):
                raise ValueError(f"unknown training dataset {source!r} (expected one of "
                                 f"{', '.join(TRAIN_SOURCES)} or a path ending in .jsonl)")
        return value

    @field_validator("eval_datasets")
    @classmethod
    def _known_eval_dataset(cls, value):
        for name in value:
            if name not in EVAL_DATASETS:
                raise ValueError(f"unknown evaluation dataset {name!r} (expected one of {', '.join(EVAL_DATASETS)})")
        return value

    @field_validator("strategies")
    @classmethod
    def _known_strategy(cls, value):
        for name in value:
            if name not in STRATEGIES:
                raise ValueError(f"unknown strategy {name!r} (expected one of {', '.join(STRATEGIES)})")
        if not value:
            raise ValueError("at least one strategy is needed")
        return value

    @field_validator("train_languages", "eval_languages")
    @classmethod
    def _known_language(cls, value):
        for lang in value or []:
            if lang not in KNOWN_LANGUAGES:
                raise ValueError(f"unknown language {lang!r} (expected ISO codes among {', '.join(KNOWN_LANGUAGES)})")
        return value

    @field_validator("seeds")
    @classmethod
    def _some_seed(cls, value):
        if not value:
            raise ValueError("at least one seed is needed")
        return value

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, value):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r} must be a folder name (letters, digits, . _ -)")
        return value

    @model_validator(mode="after")
    def _languages_exist_in_data(self):
        sources = [self.train_dataset] if isinstance(self.train_dataset, str) else self.train_dataset
        lareqa = [s for s in sources if s in DATASET_LANGUAGES]
        if self.train_languages and lareqa and len(lareqa) == len(sources):
            available = set().union(*(DATASET_LANGUAGES[s] for s in lareqa))
            missing = [l for l in self.train_languages if l not in available]
            if missing:
                raise ValueError(f"train_languages: {', '.join(missing)} not in {', '.join(lareqa)} "
                                 f"(it has {', '.join(sorted(available))})")
        if self.train_languages is not None and len(self.train_languages) < 2 and \
                any(DAPT_FINE_TUNING.get(s, s) in ("x-y", "hybrid") for s in self.strategies):
            raise ValueError("train_languages: x-y and hybrid batches need at least two languages")
        return self

    @model_validator(mode="after")
    def _dapt_settings(self):
        dapt = [s for s in self.strategies if s in DAPT_STRATEGIES]
        if dapt and self.dapt_steps is None:
            raise ValueError(f"dapt_steps: required by the strategy {dapt[0]} (the number of DAPT steps)")
        foreign = [s for s in self.train_sources if s not in DATASET_LANGUAGES]
        if dapt and foreign:
            raise ValueError(f"strategies: {dapt[0]} pre-trains on the training dataset's paragraphs, and "
                             f"{foreign[0]} has none (use {' or '.join(DATASET_LANGUAGES)})")
        values = self.dapt_values()
        if values["steps"] is None:  # no DAPT strategy: the other settings are still checked
            values["steps"] = 1
        problems = setting_problems(values)
        if problems:
            name, message = problems[0]
            raise ValueError(f"dapt_{name}: {message}")
        return self

    @model_validator(mode="after")
    def _evaluation_is_zero_shot(self):
        trained_on = set(self.train_sources) & set(self.eval_datasets)
        if trained_on and self.trained_strategies:
            name = sorted(trained_on)[0]
            raise ValueError(f"train_dataset, eval_datasets: both name {name!r}; the evaluation must be "
                             f"zero-shot (train on another dataset, or evaluate only zero-shot)")
        return self

    @model_validator(mode="after")
    def _unique_run_names(self):
        names = self.trained_strategies + [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variants: the name {repeated[0]!r} is used twice (variant names must "
                             f"differ from each other and from the strategies)")
        return self

    # -- derived values
    @property
    def train_sources(self) -> list[str]:
        """The training datasets as a list (a single name becomes a one-element list)."""
        return [self.train_dataset] if isinstance(self.train_dataset, str) else list(self.train_dataset)

    @property
    def trained_strategies(self) -> list[str]:
        """The strategies with a run per seed (all but ``zero-shot``): fine-tuning, DAPT (``dapt``) or both."""
        return [s for s in self.strategies if s != ZERO_SHOT]

    @property
    def dapt_strategies(self) -> list[str]:
        """The strategies that start with domain-adaptive pre-training (``constants.DAPT_STRATEGIES``)."""
        return [s for s in self.strategies if s in DAPT_STRATEGIES]

    def dapt_values(self) -> dict:
        """The ``dapt_*`` keys as ``DaptSettings`` fields (``{"steps": ..., "batch_size": ..., ...}``)."""
        return {name: getattr(self, f"dapt_{name}") for name in DAPT_KEYS}

    def training_runs(self) -> list[tuple[str, str, "StudyParams"]]:
        """Every fine-tuning run as ``(label, strategy, params)``: the trained strategies, then the
        variants with their settings applied (``label`` names the run in results)."""
        runs = [(s, s, self) for s in self.trained_strategies]
        for variant in self.variants:
            runs.append((variant.name, variant.strategy, self.model_copy(update=variant.overrides())))
        return runs

    def for_run(self, label: str) -> tuple[str, "StudyParams"]:
        """The strategy and the parameters of the training run named ``label``."""
        for name, strategy, params in self.training_runs():
            if name == label:
                return strategy, params
        known = ", ".join(name for name, _, _ in self.training_runs())
        raise ParamsError(f"no training run named {label!r} (this study has: {known})")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``3e-5`` as a float (YAML 1.2), not as the string PyYAML makes of it."""


# PyYAML (YAML 1.1) needs a dot in a float: without this, `learning_rate: 3e-5` is a string.
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _first_error_line(error: ValidationError) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across keys: its message starts with the key
        return message
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        schema = Variant if first["loc"][0] == "variants" else StudyParams
        allowed = ", ".join(schema.model_fields)
        return f"{key}: unknown key (known keys: {allowed})"
    if first["type"] in ("literal_error", "value_error") or "input" not in first:
        return f"{key}: {message}"
    return f"{key}: {message} (got {first['input']!r})"


def params_from_dict(values: dict) -> StudyParams:
    """Validate a mapping of parameters; raise ``ParamsError`` naming the first bad key."""
    if not isinstance(values, dict):
        raise ParamsError(f"parameters must be a mapping of key: value, got {type(values).__name__}")
    try:
        return StudyParams(**values)
    except ValidationError as error:
        raise ParamsError(_first_error_line(error)) from None


def load_params(path: Union[str, Path]) -> StudyParams:
    """Read and validate a YAML parameter file; raise ``ParamsError`` with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such parameter file")
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if values is None:
        raise ParamsError(f"{path}: the file is empty")
    if not isinstance(values, dict):
        raise ParamsError(f"{path}: expected a mapping of key: value, got a {type(values).__name__}")
    try:
        return params_from_dict(values)
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None


def dump_params(params: StudyParams, path: Union[str, Path]) -> None:
    """Write the resolved parameters (every key, defaults included) as YAML."""
    Path(path).write_text(yaml.safe_dump(params.model_dump(), sort_keys=False, allow_unicode=True), encoding="utf-8")
