"""The training and validation logs of a study's runs (``train_log/``) and of its DAPT runs (``dapt/``).

The log of the strategy ``dapt`` (``train_log/dapt-seed<k>.csv``) is its masked-LM pre-training log
(``step, phase, loss, lr, masked_tokens, seconds``), not a fine-tuning's InfoNCE log: ``read_train_logs``
leaves it out, so that the training curves of a study compare like with like; ``read_dapt_logs``
reads the DAPT runs' logs (shared by ``dapt`` and ``dapt+hybrid``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import StudyParams
from ..constants import DAPT, DAPT_STRATEGIES
from .run import StudyError, model_tag, training_labels


def read_train_log(run_dir: Path, strategy: str, seed: int) -> pd.DataFrame:
    """The training log of one model (one row per step), with ``strategy`` and ``seed`` columns."""
    path = run_dir / "train_log" / f"{model_tag(strategy, seed)}.csv"
    if not path.is_file():
        raise StudyError(f"{path}: missing; train {strategy} seed {seed} first (02_train)")
    return pd.read_csv(path).assign(strategy=strategy, seed=seed)


def read_val_log(run_dir: Path, strategy: str, seed: int) -> pd.DataFrame:
    """The validation log of one model (``step, val_loss, ...``), with ``strategy`` and ``seed``; may be empty."""
    path = run_dir / "train_log" / f"{model_tag(strategy, seed)}.val.csv"
    return pd.read_csv(path).assign(strategy=strategy, seed=seed) if path.is_file() else pd.DataFrame()


def read_train_logs(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """The fine-tuning logs of this study's models that exist, in one table with ``strategy`` and ``seed``
    (not the masked-LM log of ``dapt``: see ``read_dapt_logs``)."""
    frames = [read_train_log(run_dir, s, k) for s in training_labels(params) if s != DAPT for k in params.seeds
              if (run_dir / "train_log" / f"{model_tag(s, k)}.csv").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_val_logs(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """The validation logs of this study's models that exist, in one table with ``strategy`` and ``seed``."""
    frames = [read_val_log(run_dir, s, k) for s in training_labels(params) for k in params.seeds]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_dapt_logs(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """The masked-LM logs of this study's DAPT runs that exist (``dapt/seed<k>/dapt_log.csv``), one table
    with ``strategy`` (``dapt``) and ``seed``; empty without a DAPT strategy."""
    from ..dapt.pretrain import LOG_FILE

    return _dapt_tables(params, run_dir, LOG_FILE)


def read_dapt_evals(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """The held-out masked-LM losses of this study's DAPT runs (``dapt/seed<k>/dapt_eval.csv``: before the
    first step, after the head phase, at the end), with ``strategy`` and ``seed``; empty without DAPT."""
    from ..dapt.pretrain import EVAL_FILE

    return _dapt_tables(params, run_dir, EVAL_FILE)


def _dapt_tables(params: StudyParams, run_dir: Path, name: str) -> pd.DataFrame:
    from ..dapt import dapt_folder

    if not any(s in DAPT_STRATEGIES for s in params.strategies):
        return pd.DataFrame()
    paths = {k: dapt_folder(run_dir, k) / name for k in params.seeds}
    frames = [pd.read_csv(path).assign(strategy=DAPT, seed=k) for k, path in paths.items() if path.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
