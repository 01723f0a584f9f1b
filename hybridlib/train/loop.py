"""The training loop of one (strategy, seed): validation, best checkpoint, early stopping, resumption.

``train(params, strategy, seed, out_dir)`` leaves in ``out_dir``: ``model/`` (the selected
checkpoint, ``DualEncoder.save`` format, loadable by transformers and sentence-transformers),
``train_log.csv`` (one row per step, ``TRAIN_LOG_COLUMNS``), ``val_log.csv`` (one row per
validation, ``validation.validation_columns``) and ``train_done.json``.

- one ``seed`` seeds python, numpy, torch and the batch sampler; CPU runs are bit-reproducible;
- validation (``hybridlib.train.validation``) before the first step and every ``eval_every``
  steps; the selected model is the one with the highest ``val_score`` (held-out mAP averaged
  over the mono-, cross- and multilingual settings, the same yardstick for every strategy),
  possibly the untrained one (step 0); ties keep the earlier step;
- early stopping after ``early_stopping_patience`` validations without a higher ``val_score``;
- checkpoints ``out_dir/checkpoints/last.pt`` (after each validation but the last: weights,
  optimizer, scheduler, scaler, sampler and RNG states, logs) and ``best.pt`` (weights), each
  written to a temp file and renamed; frozen weights are not stored (they are those of
  ``params.model``). Running the same command again after a crash resumes from ``last.pt`` and
  ends with the same weights as an uninterrupted run. The checkpoints folder is deleted when
  the run succeeds.

Distributed (torchrun, a process group initialised by the caller): each rank trains on its
shard of the same global batch (``hybridlib.train.step``), every rank validates (the same
values), and rank 0 writes every file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import StudyParams
from ..constants import BATCH_STRATEGIES, VALIDATION_SCORE
from ..io import atomic_path, write_json, write_table
from ..losses import batch_loss, is_distributed
from ..sampling import Batch, BatchSampler
from .split import TrainingError, load_training_data, split_validation, validation_batches
from .step import batch_texts, build_optimizer, grad_scaler, optimizer_step, with_false_negatives
from .validation import validation_columns, validation_metrics

log = logging.getLogger(__name__)

TRAIN_LOG_COLUMNS = ["step", "batch_kind", "n_pairs", "n_cross_pairs", "query_langs", "passage_langs",
                     "loss", "lr", "seconds"]
# Parameters that do not change training: a checkpoint stays valid when only these differ.
NOT_TRAINING_KEYS = {"run_name", "candidate_context", "eval_datasets", "eval_languages", "eval_max_ids",
                     "strategies", "variants", "seeds", "device", "keep_models", "bootstrap_samples"}


@dataclass(frozen=True)
class TrainResult:
    """Where a training run left its outputs and how it went (``best_val_score``: None without validation)."""

    model_dir: Path
    log_path: Path
    best_val_score: Optional[float]
    resumed: bool
    steps: int


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# How a run trains beyond its parameters; a change here makes old checkpoints and finished runs stale.
TRAINING_RULES = {"selection": VALIDATION_SCORE, "sampler": "independent random streams",
                  "false_negatives": "copies of a query's positive masked"}


def run_fingerprint(params: StudyParams, strategy: str, seed: int) -> str:
    """A hash of everything that determines the final weights (checkpoints of other runs are refused).

    The selection rule (``val_score``) is part of it: a run selected by another rule is another run.
    """
    values = {k: v for k, v in params.model_dump().items() if k not in NOT_TRAINING_KEYS}
    text = json.dumps({"params": values, "strategy": strategy, "seed": seed, "rules": TRAINING_RULES}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _log_row(step: int, table: pd.DataFrame, batch: Batch, loss: float, lr: float, seconds: float) -> dict:
    langs = table["lang"].to_numpy()
    q_langs, p_langs = langs[list(batch.query_rows)], langs[list(batch.passage_rows)]
    return {"step": step, "batch_kind": batch.kind, "n_pairs": len(batch),
            "n_cross_pairs": int((q_langs != p_langs).sum()), "query_langs": ";".join(sorted(set(q_langs))),
            "passage_langs": ";".join(sorted(set(p_langs))), "loss": loss, "lr": lr, "seconds": round(seconds, 4)}


def _as_tuples(value):
    """Lists back to tuples (``random.setstate`` needs the tuples that a checkpoint made lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass
class _Progress:
    """What the loop knows besides the weights; saved in ``last.pt``."""

    step: int = 0
    best_score: Optional[float] = None
    best_step: Optional[int] = None
    bad_validations: int = 0
    stopped: bool = False
    train_log: list = field(default_factory=list)
    val_log: list = field(default_factory=list)


class _Run:
    """One training run's objects, so that the loop and checkpointing stay short."""

    def __init__(self, params: StudyParams, strategy: str, seed: int, out_dir: Path, progress: bool):
        from ..models import DualEncoder

        self.params, self.strategy, self.seed, self.out_dir = params, strategy, seed, out_dir
        self.checkpoints = out_dir / "checkpoints"
        self.fingerprint = run_fingerprint(params, strategy, seed)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
        self.show_progress = progress and self.rank == 0
        seed_everything(seed)
        self.tables, self.val_table = split_validation(load_training_data(params), params.validation_ids)
        self.sampler = BatchSampler(self.tables, strategy, params.batch_size, seed, params.train_languages,
                                    params.alpha, self.rank, self.world,
                                    parallel_queries=params.parallel_query_weight > 0)
        self.val_batches = (validation_batches(self.val_table, strategy, params.batch_size)
                            if self.val_table is not None else None)
        self.encoder = DualEncoder.from_params(params)
        self.encoder.model.train()
        if params.freeze_embeddings:
            self.encoder.model.get_input_embeddings().weight.requires_grad_(False)
        self.optimizer, self.scheduler = build_optimizer(self.encoder.model, params)
        self.scaler = grad_scaler(self.encoder)
        self.loss_fn = partial(batch_loss, temperature=params.temperature, symmetric=params.symmetric_loss,
                               parallel_query_weight=params.parallel_query_weight)
        self.state = _Progress()

    # -- checkpoints
    def save_last(self) -> None:
        if self.rank != 0:
            return
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()]}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        _atomic_save({"fingerprint": self.fingerprint, "model": self.trained_weights(),
                      "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                      "scaler": self.scaler.state_dict(), "sampler": self.sampler.state_dict(), "rng": rng,
                      "progress": vars(self.state)}, self.checkpoints / "last.pt")

    def save_best(self, step: int) -> None:
        if self.rank == 0 and step > 0:  # step 0 is the pretrained model: reloaded, not copied
            _atomic_save({"fingerprint": self.fingerprint, "step": step, "model": self.trained_weights()},
                         self.checkpoints / "best.pt")

    def trained_weights(self) -> dict:
        """The model's state without frozen weights (they stay those of ``params.model``)."""
        frozen = {name for name, p in self.encoder.model.named_parameters() if not p.requires_grad}
        return {name: value for name, value in self.encoder.model.state_dict().items() if name not in frozen}

    def load_trained_weights(self, weights: dict) -> None:
        missing, unexpected = self.encoder.model.load_state_dict(weights, strict=False)
        frozen = {name for name, p in self.encoder.model.named_parameters() if not p.requires_grad}
        if unexpected or set(missing) - frozen:
            raise TrainingError(f"{self.checkpoints}: a checkpoint does not fit the model "
                                f"({len(unexpected)} unexpected, {len(set(missing) - frozen)} missing weights)")

    def resume(self) -> bool:
        """Load ``last.pt`` if there is one; True if the run continues from it."""
        path = self.checkpoints / "last.pt"
        if not path.is_file():
            return False
        checkpoint = torch.load(path, map_location=self.encoder.device, weights_only=True)
        if checkpoint["fingerprint"] != self.fingerprint:
            raise TrainingError(f"{self.checkpoints} holds a checkpoint of another run (other parameters, "
                                f"strategy or seed); use another output folder or delete it")
        self.load_trained_weights(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.sampler.load_state_dict(checkpoint["sampler"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(_as_tuples(rng["python"]))
        np.random.set_state(tuple(np.asarray(v, dtype=np.uint32) if isinstance(v, list) else v
                                  for v in rng["numpy"]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        self.state = _Progress(**checkpoint["progress"])
        return True

    def restore_best(self) -> None:
        """Put the weights with the highest ``val_score`` back into the encoder (step 0: the pretrained ones)."""
        if self.state.best_step is None or self.state.best_step == self.state.step:
            return
        if self.state.best_step == 0:
            from ..models import DualEncoder

            pretrained = DualEncoder.from_params(self.params).model.state_dict()
            self.encoder.model.load_state_dict(pretrained)
            return
        best = torch.load(self.checkpoints / "best.pt", map_location=self.encoder.device, weights_only=True)
        if best["fingerprint"] != self.fingerprint or best["step"] != self.state.best_step:
            raise TrainingError(f"{self.checkpoints / 'best.pt'} is not step {self.state.best_step} of this run; "
                                f"delete {self.checkpoints} and train again")
        self.load_trained_weights(best["model"])

    def write_logs(self) -> None:
        if self.rank == 0:
            write_table(pd.DataFrame(self.state.train_log, columns=TRAIN_LOG_COLUMNS), self.out_dir / "train_log.csv")
            columns = validation_columns(list(self.val_batches or {}))
            write_table(pd.DataFrame(self.state.val_log, columns=columns), self.out_dir / "val_log.csv")

    # -- steps
    def validate(self, step: int) -> bool:
        """Validate at ``step``; True if its ``val_score`` is the highest so far (else counts towards
        early stopping)."""
        if self.val_batches is None:
            return False
        # before the first step every run of a study validates the same starting weights: their
        # embeddings come from the cache (keyed by the weights) after the first run
        values = validation_metrics(self.encoder, self.val_table, self.val_batches, self.params.temperature,
                                    self.params.symmetric_loss, cache=step == 0)
        self.state.val_log.append({"step": step, **values})
        if self.state.best_score is None or values[VALIDATION_SCORE] > self.state.best_score:
            self.state.best_score, self.state.best_step = values[VALIDATION_SCORE], step
            self.state.bad_validations = 0
            return True
        self.state.bad_validations += 1
        patience = self.params.early_stopping_patience
        self.state.stopped = patience is not None and self.state.bad_validations >= patience
        return False

    def train_step(self, step: int) -> dict:
        start = time.perf_counter()
        global_batch = self.sampler.global_batch()
        batch = self.sampler.shard(global_batch)
        table = self.tables[batch.dataset]
        texts = with_false_negatives(batch_texts(table, batch), batch_texts(table, global_batch))
        lr = self.scheduler.get_last_lr()[0]
        loss = optimizer_step(self.encoder, texts, self.loss_fn, self.optimizer, self.scaler,
                              self.params.grad_cache_chunk)
        self.scheduler.step()
        return _log_row(step, self.tables[batch.dataset], global_batch, loss.item(), lr,
                        time.perf_counter() - start)


def train(params: StudyParams, strategy: str, seed: int, out_dir: Union[str, Path], progress: bool = True,
          on_step: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Fine-tune ``params.model`` with batch ``strategy`` and ``seed``; outputs in ``out_dir`` (module doc).

    Resumes from ``out_dir/checkpoints/last.pt`` when a previous run of the same command was
    interrupted; returns at once when ``out_dir`` already holds the finished run.
    ``on_step(step)`` is called after every step (after its checkpoint, if any).
    Raises ``TrainingError`` / ``SamplingError`` (``HybridlibError``) on unusable settings,
    before any training step.
    """
    if strategy not in BATCH_STRATEGIES:
        raise TrainingError(f"unknown strategy {strategy!r} to train (expected one of {', '.join(BATCH_STRATEGIES)})")
    out_dir = Path(out_dir)
    finished = _finished(out_dir, run_fingerprint(params, strategy, seed))
    if finished is not None:
        return finished
    run = _Run(params, strategy, seed, out_dir, progress)
    if run.rank == 0:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        for partial_file in run.checkpoints.glob(".*.tmp-*"):  # left by a run killed while saving
            partial_file.unlink()
    resumed = run.resume()
    if resumed:
        log.info("resumed %s seed %s from step %s (%s)", strategy, seed, run.state.step, run.checkpoints / "last.pt")
    else:
        run.validate(0)
    _loop(run, on_step)
    return _finish(run, resumed)


def _loop(run: _Run, on_step: Optional[Callable[[int], None]]) -> None:
    params, state = run.params, run.state
    bar = tqdm(total=params.max_steps, initial=state.step, desc=f"train {run.strategy} seed {run.seed}",
               unit="step", disable=not run.show_progress)
    with bar:
        while state.step < params.max_steps and not state.stopped:
            step = state.step + 1
            row = run.train_step(step)
            state.train_log.append(row)
            state.step = step
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if step % params.eval_every == 0 or step == params.max_steps:
                improved = run.validate(step)
                if step < params.max_steps and not state.stopped:  # the last step needs no checkpoint
                    if improved:
                        run.save_best(step)
                    run.save_last()
                run.write_logs()
            if on_step is not None:
                on_step(step)


def _finish(run: _Run, resumed: bool) -> TrainResult:
    run.restore_best()
    if run.world > 1:
        dist.barrier()  # every rank has read best.pt before rank 0 deletes the checkpoints
    model_dir = run.out_dir / "model"
    result = TrainResult(model_dir, run.out_dir / "train_log.csv", run.state.best_score, resumed, run.state.step)
    if run.rank == 0:
        run.encoder.save(model_dir)
        run.write_logs()
        write_json({"fingerprint": run.fingerprint, "strategy": run.strategy, "seed": run.seed,
                    "steps": run.state.step, "best_step": run.state.best_step,
                    "best_val_score": run.state.best_score}, run.out_dir / "train_done.json")
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    return result


def _finished(out_dir: Path, fingerprint: str) -> Optional[TrainResult]:
    """The result of a finished run of the same command in ``out_dir``, if there is one."""
    done = out_dir / "train_done.json"
    if not done.is_file():
        return None
    info = json.loads(done.read_text(encoding="utf-8"))
    if info["fingerprint"] != fingerprint:
        raise TrainingError(f"{out_dir} holds a finished run with other parameters, strategy or seed; "
                            f"use another output folder or delete it")
    log.info("already trained: %s (delete %s to train again)", out_dir / "model", done)
    return TrainResult(out_dir / "model", out_dir / "train_log.csv", info["best_val_score"], False, info["steps"])
