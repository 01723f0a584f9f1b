"""``continue_pretraining``: the DAPT loop, its checkpoints and its outputs.

One run (``continue_pretraining(model, paragraphs, out_dir, steps=...)``) leaves in ``out_dir``:
``model/`` (the encoder without its MLM head, ``DualEncoder.save`` format: evaluate it zero-shot
or fine-tune it with ``hybridlib.train``), ``dapt_log.csv`` (one row per step: ``step, phase,
loss, lr, masked_tokens, seconds``), ``dapt_eval.csv`` (``step, phase, eval_loss, masked_tokens``:
the held-out masked-LM loss before the first step (phase ``start``), after the head phase and
after the last step, when ``eval_paragraphs`` are given) and ``dapt_done.json``.

Two phases, numbered on one step axis. Steps ``1..head_steps`` (phase ``head``) train only the MLM
head's fresh weights (``head.fresh_head_parameters``) at ``head_learning_rate``; the encoder runs
without a graph and stays bit-identical (a head step skips the encoder's backward but not the
250k-token decoder: ~1.4 s against ~2.3 s for a full step of 16 windows of 128 tokens on 2 cores).
Steps ``head_steps+1..head_steps+steps`` (phase ``full``) train the encoder and the head at
``learning_rate``, with a fresh optimizer. Each phase has its own linear warm-up (``warmup_ratio``
of its steps) and decay to 0. Why: Gururangan et al. (2020) continue RoBERTa's pre-training with
RoBERTa's own pre-trained MLM head; this encoder has none (``head``), and a short DAPT from a
random transform layer mostly fits that layer. Measured on the default encoder (bf16, the sizes
of ``params/dapt.yaml``, 58 held-out paragraphs): 60 full steps take the held-out loss from 13.56
to 9.66, but 30 head-only steps alone reach 9.78, so the encoder had barely adapted; 30 head
steps (lr 1e-3) then the same 60 full steps reach 8.73.

The loop follows contrastive training (``hybridlib.train``) where the two share a concern:
AdamW without decay on 1-d weights, linear warm-up then linear decay to 0, the encoder's
precision as the autocast dtype (``hybridlib.models.resolve_precision``: bf16 on CPUs with
native bf16, a GradScaler for fp16), and checkpoints ``out_dir/checkpoints/last.pt`` (weights
with the head, optimizer, scheduler, scaler and RNG states, logs) every ``checkpoint_every``
steps and at the end of the head phase, written atomically (with the optimizer and scheduler of
the phase they were saved in: a run resumed at the boundary starts the full phase's afresh, as
an uninterrupted one does). Running the same call again after an interruption resumes from it and
ends with the same weights as an uninterrupted run; the checkpoints are deleted on success and a
finished ``out_dir`` is returned at once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..io import atomic_path, write_json, write_table
from .corpus import evaluation_batches, text_fingerprint, training_batch
from .head import fresh_head_parameters, masked_lm_loss, masked_lm_model
from .masking import IGNORE_INDEX
from .settings import DaptError, DaptSettings

logger = logging.getLogger(__name__)

LOG_COLUMNS = ["step", "phase", "loss", "lr", "masked_tokens", "seconds"]
EVAL_COLUMNS = ["step", "phase", "eval_loss", "masked_tokens"]
START, HEAD, FULL = "start", "head", "full"  # the phases of the logs (``start``: the evaluation before step 1)
MODEL_DIR, LOG_FILE, EVAL_FILE, DONE_FILE = "model", "dapt_log.csv", "dapt_eval.csv", "dapt_done.json"


@dataclass(frozen=True)
class DaptResult:
    """Where a DAPT run left its outputs and how it went (eval losses are None without eval paragraphs;
    ``eval_loss_head`` also without a head phase). ``steps``: the full phase's, after ``head_steps``."""

    model_dir: Path
    log_path: Path
    eval_loss_start: Optional[float]
    eval_loss_end: Optional[float]
    steps: int
    resumed: bool
    seconds: float  # the training steps' wall time, both phases (sum of the log's seconds)
    head_steps: int = 0
    eval_loss_head: Optional[float] = None


@dataclass
class _Progress:
    """What the loop knows besides the weights; saved in ``last.pt``."""

    step: int = 0
    log: list = field(default_factory=list)
    eval_log: list = field(default_factory=list)


def _texts(texts, name: str, required: bool) -> list[str]:
    if texts is None and not required:
        return []
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise DaptError(f"dapt {name} must be a list of texts")
    kept = [text for text in texts if text.strip()]
    if required and not kept:
        raise DaptError(f"dapt {name}: no non-empty text to pre-train on")
    return kept


def build_optimizer(parameters: Sequence[torch.nn.Parameter], learning_rate: float, steps: int,
                    warmup_ratio: float, weight_decay: float):
    """AdamW on ``parameters`` (no decay on 1-d weights: biases, LayerNorm) + linear warm-up over
    ``round(warmup_ratio * steps)`` steps and linear decay to 0 at ``steps``."""
    from transformers import get_linear_schedule_with_warmup

    groups = [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    return optimizer, get_linear_schedule_with_warmup(optimizer, round(warmup_ratio * steps), steps)


@torch.no_grad()
def evaluate_masked_lm(mlm, batches: Sequence[dict], autocast=None) -> tuple[float, int]:
    """``(mean cross-entropy, predicted tokens)`` over fixed masked batches, in eval mode (no dropout).

    ``autocast``: a context factory (e.g. ``DualEncoder.autocast``); None runs in fp32.
    """
    was_training = mlm.training
    mlm.eval()
    device = next(mlm.parameters()).device
    total, count = 0.0, 0
    try:
        for batch in batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            with autocast() if autocast else torch.autocast(device.type, enabled=False):
                total += float(masked_lm_loss(mlm, batch, reduction="sum"))
            count += int((batch["labels"] != IGNORE_INDEX).sum())
    finally:
        mlm.train(was_training)
    return (total / count if count else float("nan")), count


class _Run:
    """One DAPT run's objects, so that the loop and checkpointing stay short."""

    def __init__(self, model_name_or_dir: str, settings: DaptSettings, device: str, paragraphs: list,
                 eval_paragraphs: list, out_dir: Path, fingerprint: str):
        from ..models import DualEncoder

        self.settings, self.paragraphs, self.fingerprint = settings, paragraphs, fingerprint
        self.checkpoint = out_dir / "checkpoints" / "last.pt"
        self.encoder = DualEncoder(model_name_or_dir, device=device, precision=settings.precision)
        self.mlm = masked_lm_model(self.encoder.model, seed=settings.seed).train()
        self.total = settings.head_steps + settings.steps
        self.phase = self.optimizer = self.scheduler = None
        self.scaler = torch.amp.GradScaler(self.encoder.device.type, enabled=self.encoder.precision == "fp16")
        self.eval_batches = evaluation_batches(self.encoder.tokenizer, eval_paragraphs, settings.batch_size,
                                               settings.max_length, settings.mask_rate)
        self.state = _Progress()
        torch.manual_seed(settings.seed)  # dropout

    def phase_of(self, step: int) -> str:
        return HEAD if step <= self.settings.head_steps else FULL

    def enter_phase(self, phase: str) -> None:
        """Make ``phase``'s weights trainable and give it a fresh optimizer and schedule."""
        s = self.settings
        embeddings = self.encoder.model.get_input_embeddings().weight
        # in the head phase the tied decoder must not compute a 250k x hidden gradient nobody uses
        embeddings.requires_grad_(phase == FULL and not s.freeze_embeddings)
        if phase == HEAD:
            parameters, rate, steps = fresh_head_parameters(self.mlm), s.head_learning_rate, s.head_steps
        else:
            parameters, rate, steps = [p for p in self.mlm.parameters() if p.requires_grad], s.learning_rate, s.steps
        self.optimizer, self.scheduler = build_optimizer(parameters, rate, steps, s.warmup_ratio, s.weight_decay)
        self.phase = phase

    def save_checkpoint(self) -> None:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint) as tmp:
            torch.save({"fingerprint": self.fingerprint, "model": self.mlm.state_dict(), "phase": self.phase,
                        "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(), "rng": rng, "progress": vars(self.state)}, tmp)

    def resume(self) -> bool:
        """Load ``last.pt`` if there is one; True if the run continues from it."""
        for partial in self.checkpoint.parent.glob(".*.tmp-*"):  # left by a run killed while saving
            partial.unlink()
        if not self.checkpoint.is_file():
            return False
        saved = torch.load(self.checkpoint, map_location=self.encoder.device, weights_only=True)
        if saved["fingerprint"] != self.fingerprint:
            raise DaptError(f"{self.checkpoint.parent} holds a checkpoint of another DAPT run (other model, "
                            f"settings or texts); use another output folder or delete it")
        self.mlm.load_state_dict(saved["model"])
        self.state = _Progress(**saved["progress"])
        self.enter_phase(self.phase_of(self.state.step + 1))
        if saved["phase"] == self.phase:  # else saved at the end of the head phase: the full phase starts fresh
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([state.cpu() for state in saved["rng"]["cuda"]])
        return True

    def evaluate(self, step: int, phase: str) -> None:
        if self.eval_batches:
            loss, count = evaluate_masked_lm(self.mlm, self.eval_batches, self.encoder.autocast)
            self.state.eval_log.append({"step": step, "phase": phase, "eval_loss": loss, "masked_tokens": count})

    def train_step(self, step: int) -> dict:
        start = time.perf_counter()
        s = self.settings
        if self.phase != self.phase_of(step):
            self.enter_phase(self.phase_of(step))
        batch = training_batch(self.encoder.tokenizer, self.paragraphs, step, s.batch_size, s.max_length,
                               s.mask_rate, s.seed)
        batch = {key: value.to(self.encoder.device) for key, value in batch.items()}
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        with self.encoder.autocast():
            loss = masked_lm_loss(self.mlm, batch, train_encoder=self.phase == FULL)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        masked = int((batch["labels"] != IGNORE_INDEX).sum())
        return {"step": step, "phase": self.phase, "loss": loss.item(), "lr": lr, "masked_tokens": masked,
                "seconds": round(time.perf_counter() - start, 4)}

    def write_logs(self, out_dir: Path) -> None:
        write_table(pd.DataFrame(self.state.log, columns=LOG_COLUMNS), out_dir / LOG_FILE)
        if self.eval_batches:
            write_table(pd.DataFrame(self.state.eval_log, columns=EVAL_COLUMNS), out_dir / EVAL_FILE)


def continue_pretraining(model_name_or_dir: Union[str, Path], paragraphs: Sequence[str], out_dir: Union[str, Path],
                         *, steps: int, batch_size: int = 8, learning_rate: float = 5e-5, head_steps: int = 30,
                         head_learning_rate: float = 1e-3, mask_rate: float = 0.15, max_length: int = 128,
                         warmup_ratio: float = 0.1, weight_decay: float = 0.01, freeze_embeddings: bool = False,
                         precision: str = "auto", seed: int = 0,
                         eval_paragraphs: Optional[Sequence[str]] = None, device: str = "auto",
                         checkpoint_every: int = 50, progress: bool = True,
                         on_step: Optional[Callable[[int], None]] = None) -> DaptResult:
    """Continue the masked-LM pre-training of an encoder on ``paragraphs``; outputs in ``out_dir``.

    ``model_name_or_dir``: what ``DualEncoder`` loads (``default``, a folder, a hub name); its
    MLM head is built by ``masked_lm_model`` (decoder tied to the word embeddings, transform
    layer freshly initialised). ``head_steps`` steps train that head alone at ``head_learning_rate``
    (the module docstring says why), then ``steps`` steps train everything. Each step trains on
    ``batch_size`` paragraph windows of at most ``max_length`` tokens with ``mask_rate`` of their
    tokens to predict (``hybridlib.dapt.corpus``); the settings are those of ``DaptSettings``.
    ``eval_paragraphs``: held-out texts whose masked-LM loss (fixed masks) is measured before the
    first step, after the head phase and after the last step. The saved encoder keeps the settings
    of the one loaded (pooling, prefixes, max_length). ``on_step(step)`` is called after every step
    (after its checkpoint, if any; steps count both phases). Raises ``DaptError`` on bad
    settings or texts and ``UnsupportedArchitectureError`` for an encoder without a masked-LM
    counterpart, before any step.
    """
    settings = DaptSettings(steps=steps, batch_size=batch_size, learning_rate=learning_rate, head_steps=head_steps,
                            head_learning_rate=head_learning_rate, mask_rate=mask_rate, max_length=max_length,
                            warmup_ratio=warmup_ratio, weight_decay=weight_decay,
                            freeze_embeddings=freeze_embeddings, precision=precision, seed=seed)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every <= 0:
        raise DaptError(f"dapt checkpoint_every must be an integer > 0, not {checkpoint_every!r}")
    paragraphs = _texts(paragraphs, "paragraphs", required=True)
    eval_paragraphs = _texts(eval_paragraphs, "eval_paragraphs", required=False)
    out_dir = Path(out_dir)
    fingerprint = dapt_fingerprint(str(model_name_or_dir), settings, device, paragraphs, eval_paragraphs)
    finished = _finished(out_dir, fingerprint)
    if finished is not None:
        return finished
    run = _Run(str(model_name_or_dir), settings, device, paragraphs, eval_paragraphs, out_dir, fingerprint)
    resumed = run.resume()
    if resumed:
        logger.info("resumed DAPT from step %d (%s)", run.state.step, run.checkpoint)
    else:
        run.evaluate(0, START)
    _loop(run, out_dir, checkpoint_every, progress, on_step)
    run.evaluate(run.total, FULL)
    return _finish(run, out_dir, resumed)


def dapt_fingerprint(model: str, settings: DaptSettings, device: str, paragraphs: list, eval_paragraphs: list) -> str:
    """A hash of everything that determines the result (another run's checkpoint is refused)."""
    from ..models import resolve_device, resolve_precision

    values = {**settings.as_dict(), "precision": resolve_precision(settings.precision, resolve_device(device))}
    text = json.dumps({"model": model, "settings": values, "paragraphs": text_fingerprint(paragraphs),
                       "eval_paragraphs": text_fingerprint(eval_paragraphs)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _loop(run: _Run, out_dir: Path, checkpoint_every: int, progress: bool,
          on_step: Optional[Callable[[int], None]]) -> None:
    state, total, head_end = run.state, run.total, run.settings.head_steps
    with tqdm(total=total, initial=state.step, desc="dapt", unit="step", disable=not progress) as bar:
        while state.step < total:
            step = state.step + 1
            row = run.train_step(step)
            state.log.append(row)
            state.step = step
            bar.update(1)
            bar.set_postfix(phase=row["phase"], loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if step == head_end:
                run.evaluate(step, HEAD)
            # the last step needs no checkpoint; the head phase's end gets one (its steps are then never redone)
            if (step % checkpoint_every == 0 or step == head_end) and step < total:
                run.save_checkpoint()
                run.write_logs(out_dir)
            if on_step is not None:
                on_step(step)


def _result(out_dir: Path, info: dict, resumed: bool) -> DaptResult:
    return DaptResult(out_dir / MODEL_DIR, out_dir / LOG_FILE, info["eval_loss_start"], info["eval_loss_end"],
                      info["steps"], resumed, info["seconds"], info.get("head_steps", 0), info.get("eval_loss_head"))


def _finish(run: _Run, out_dir: Path, resumed: bool) -> DaptResult:
    run.encoder.save(out_dir / MODEL_DIR)
    run.write_logs(out_dir)
    losses = {row["phase"]: row["eval_loss"] for row in run.state.eval_log}
    head_steps = run.settings.head_steps
    info = {"fingerprint": run.fingerprint, "model": run.encoder.name, "settings": run.settings.as_dict(),
            "precision": run.encoder.precision, "steps": run.state.step - head_steps, "head_steps": head_steps,
            "eval_loss_start": losses.get(START), "eval_loss_head": losses.get(HEAD), "eval_loss_end": losses.get(FULL),
            "seconds": round(sum(row["seconds"] for row in run.state.log), 2)}
    write_json(info, out_dir / DONE_FILE)
    shutil.rmtree(run.checkpoint.parent, ignore_errors=True)
    return _result(out_dir, info, resumed)


def _finished(out_dir: Path, fingerprint: str) -> Optional[DaptResult]:
    """The result of a finished run of the same call in ``out_dir``, if there is one."""
    done = out_dir / DONE_FILE
    if not done.is_file():
        return None
    info = json.loads(done.read_text(encoding="utf-8"))
    if info["fingerprint"] != fingerprint:
        raise DaptError(f"{out_dir} holds a finished DAPT run with another model, settings or texts; "
                        f"use another output folder or delete it")
    logger.info("already pre-trained: %s (delete %s to run again)", out_dir / MODEL_DIR, done)
    return _result(out_dir, info, False)

