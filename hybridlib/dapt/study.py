"""DAPT inside a study: its text, its settings, and one run per seed in the run folder.

The strategies ``dapt`` and ``dapt+hybrid`` (``constants.DAPT_STRATEGIES``) start from the DAPT
encoder of their seed. ``pretrain_for_study(params, run_dir, seed)`` runs it once, in
``<run_dir>/dapt/seed<k>/`` (the layout of ``continue_pretraining``): whichever strategy comes
first pre-trains, the other finds the finished run and uses it; an interrupted run resumes from
its checkpoint. The settings are the parameter file's ``dapt_*`` keys, with the study's
``precision`` and ``device`` and the training run's seed (``dapt_settings``).

The text (``study_paragraphs``) is the training data's, never an evaluation dataset's: the
paragraphs (contexts) of the question ids the study's fine-tuning trains on, in the languages
it trains on, after ``train_languages``, ``train_max_ids`` and the validation hold-out
(``train.split_validation``), each distinct text once. DAPT thus adapts the encoder to exactly
the text the fine-tuning sees, and nothing more. The paragraphs of the held-out validation ids
that no training id shares stay out of DAPT: the fine-tuning's checkpoint selection on those ids
stays on text the encoder has not been trained on, and up to ``EVAL_PARAGRAPHS`` of them measure
DAPT's held-out masked-LM loss before and after (``dapt_eval.csv``). Only LAReQA training
datasets (``xquad-r``, ``mlqa-r``) have paragraphs; the parameter schema refuses the DAPT
strategies with other training data.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Union

import pandas as pd

from .pretrain import DONE_FILE, MODEL_DIR, DaptResult, continue_pretraining, dapt_fingerprint
from .settings import DaptError, DaptSettings

log = logging.getLogger(__name__)

EVAL_PARAGRAPHS = 64  # held-out paragraphs whose masked-LM loss is logged: 8 batches of 8, a few seconds
FOLDER = "dapt"  # <run_dir>/dapt/seed<k>/


def dapt_folder(run_dir: Union[str, Path], seed: int) -> Path:
    """The folder of the DAPT run of ``seed`` in a study's run folder: ``<run_dir>/dapt/seed<k>/``."""
    return Path(run_dir) / FOLDER / f"seed{seed}"


def dapt_settings(params, seed: int) -> DaptSettings:
    """The ``DaptSettings`` of a study's DAPT run for ``seed``: the ``dapt_*`` keys, the study's precision."""
    return DaptSettings(**params.dapt_values(), precision=params.precision, seed=seed)


def _contexts(data, pairs: pd.DataFrame) -> list[str]:
    """The contexts of the answers of the (id, lang) rows of ``pairs`` in a LAReQA dataset, in its order."""
    questions = data.questions.assign(id=data.questions["id"].astype(str))
    wanted = pairs[["id", "lang"]].astype({"id": str}).drop_duplicates()
    rows = questions.merge(wanted, on=["id", "lang"], how="inner")["candidate"].sort_values()
    return [text for text in data.candidates["context"].to_numpy()[rows.to_numpy()] if text.strip()]


def study_paragraphs(params) -> tuple[list[str], list[str]]:
    """``(paragraphs, held_out)``: DAPT's training text and its held-out text (see the module docstring).

    Each list holds distinct texts in the datasets' order; no held-out text is a training text.
    Raises ``DaptError`` for a training dataset without paragraphs (mMARCO, a ``.jsonl`` file).
    """
    from ..data import load_lareqa
    from ..sources import LAREQA_SOURCES
    from ..train import load_training_data, split_validation

    foreign = [source for source in params.train_sources if source not in LAREQA_SOURCES]
    if foreign:
        raise DaptError(f"train_dataset {foreign[0]!r} has no paragraphs to pre-train on (DAPT needs "
                        f"{' or '.join(LAREQA_SOURCES)})")
    tables, held_out = split_validation(load_training_data(params), params.validation_ids)
    train, held = [], []
    for number, (source, table) in enumerate(zip(params.train_sources, tables)):
        data = load_lareqa(source, sorted(set(table["lang"])))
        train += _contexts(data, table)
        if held_out is not None:
            prefix = f"{number}:"
            mine = held_out[held_out["id"].str.startswith(prefix)]
            held += _contexts(data, mine.assign(id=mine["id"].str.removeprefix(prefix)))
    seen = set(train)
    return list(dict.fromkeys(train)), [text for text in dict.fromkeys(held) if text not in seen]


def _spread(texts: list[str], n: int) -> list[str]:
    """At most ``n`` of ``texts``, evenly spaced (the texts are grouped by language: every language gets some)."""
    step = max(1, -(-len(texts) // n))
    return texts[::step][:n]


def _clear_stale(folder: Path, fingerprint: str) -> None:
    """Delete a finished DAPT run of other settings, or one whose encoder was released (its strategies
    were done), so that it runs again: the run folder is the study's, its parameters are the file's."""
    done = folder / DONE_FILE
    if not done.is_file():
        return
    if json.loads(done.read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
        log.warning("%s: a DAPT run of other parameters; deleted, pre-training again", folder)
        shutil.rmtree(folder)
    elif not (folder / MODEL_DIR).is_dir():
        log.info("%s: its encoder was released after use; pre-training again", folder)
        done.unlink()


def pretrain_for_study(params, run_dir: Union[str, Path], seed: int, progress: bool = True) -> DaptResult:
    """The DAPT encoder of ``seed`` for a study: pre-trained once in ``dapt_folder(run_dir, seed)``.

    A finished run of the same settings is returned at once, an interrupted one resumes
    (``continue_pretraining``); a finished run of other settings is replaced. ``params``: the
    study's ``StudyParams``; ``progress``: tqdm bar.
    """
    settings = dapt_settings(params, seed)
    paragraphs, held_out = study_paragraphs(params)
    held_out = _spread(held_out, EVAL_PARAGRAPHS)
    folder = dapt_folder(run_dir, seed)
    _clear_stale(folder, dapt_fingerprint(params.model, settings, params.device, paragraphs, held_out))
    log.info("DAPT seed %d: %d paragraphs (%d held out), %d steps", seed, len(paragraphs), len(held_out),
             settings.steps)
    return continue_pretraining(params.model, paragraphs, folder, **settings.as_dict(), eval_paragraphs=held_out,
                                device=params.device, progress=progress)
