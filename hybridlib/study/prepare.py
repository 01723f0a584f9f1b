"""Notebook 01: build or find the model, fetch the data, describe both.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import DATASET_LANGUAGES, StudyParams
from ..io import write_json
from .run import load_eval_data


def describe_model(params: StudyParams) -> pd.DataFrame:
    """Build (the default encoder) or locate the model, and describe it from its config: a one-column table."""
    from transformers import AutoConfig

    from ..models import DEFAULT_MODEL_LABEL, resolve_model

    path = resolve_model(params.model)
    config = AutoConfig.from_pretrained(path)
    label = DEFAULT_MODEL_LABEL if params.model == "default" else params.model
    facts = {"model": label, "architecture": config.model_type, "layers": config.num_hidden_layers,
             "hidden size": config.hidden_size, "vocabulary": config.vocab_size, "pooling": params.pooling,
             "prefixes": f"{params.query_prefix!r} / {params.passage_prefix!r}", "folder": str(path)}
    return pd.DataFrame({"value": [str(v) for v in facts.values()]}, index=pd.Index(list(facts), name="model"))


def prepare(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """Fetch and verify (sha256) the data; return and record the sizes of training and evaluation data.

    Training rows count question ids per language after the validation hold-out (the same
    split as ``train.split_validation``); evaluation rows count questions and pool candidates.
    Writes ``data/prepared.json``, the marker that this step is done.
    """
    from ..train import load_training_data, split_validation

    rows = []
    tables, held_out = split_validation(load_training_data(params), params.validation_ids)
    for source, table in zip(params.train_sources, tables):
        for lang, group in table.groupby("lang"):
            rows.append(("train", source, lang, group["id"].nunique(), None))
    if held_out is not None:
        for lang, group in held_out.groupby("lang"):
            rows.append(("validation", "+".join(params.train_sources), lang, group["id"].nunique(), None))
    for dataset in params.eval_datasets:
        if dataset in DATASET_LANGUAGES:
            data = load_eval_data(params, dataset)
            counts = data.candidates.groupby("lang").size()
            for lang, group in data.questions.groupby("lang"):
                rows.append(("evaluate", dataset, lang, len(group), int(counts.get(lang, 0))))
    sizes = pd.DataFrame(rows, columns=["role", "dataset", "lang", "questions", "candidates"])
    sizes["candidates"] = sizes["candidates"].astype("Int64")
    record = {"model": params.model, "sizes": sizes.astype(object).where(sizes.notna(), None).to_dict("records")}
    write_json(record, run_dir / "data" / "prepared.json")
    return sizes
