"""Fine-tune a dual encoder with one batch strategy: the training loop of the study.

``train(params, strategy, seed, out_dir)`` runs one (strategy, seed) and leaves in ``out_dir``:
``model/`` (the best checkpoint, ``DualEncoder.save`` format, loadable by transformers and
sentence-transformers), ``train_log.csv`` (one row per step: ``step, batch_kind, n_pairs,
n_cross_pairs, query_langs, passage_langs, loss, lr, seconds``), ``val_log.csv`` (``step,
val_loss``, one ``val_loss_<kind>`` column per validated kind, and ``val_mAP`` / ``val_R@10`` of
the held-out queries against the pool of held-out answers) and ``train_done.json``.

The loop (paper.md "Model and loss"; choices marked *ours* there):
- one ``seed`` seeds python, numpy, torch and the batch sampler; CPU runs are bit-reproducible;
- ``validation_ids`` question ids (all their languages) are held out with a fixed seed (the same
  set for every strategy and seed) for a validation loss on fixed batches of the training kind
  (both kinds for hybrid, averaged), every ``eval_every`` steps and before the first step;
- AdamW (no weight decay on biases and LayerNorm weights), linear warm-up over
  ``warmup_ratio * max_steps`` steps then linear decay to 0 at ``max_steps``;
- texts are embedded in length-sorted chunks of 16 (far less padding than one padded batch);
- GradCache (Gao et al. 2021) when ``grad_cache_chunk`` is set: all texts are embedded in chunks
  without a graph, the loss and its gradient w.r.t. the embeddings are computed, then each chunk
  is embedded again with a graph (same dropout masks) and back-propagated with the cached
  gradient, so a batch of 100 pairs trains in the memory of one chunk;
- mixed precision from the encoder's ``precision`` (autocast; a GradScaler for fp16);
- early stopping after ``early_stopping_patience`` validations without a lower loss; the model
  with the lowest validation loss (possibly the untrained one, step 0) is the final model;
- checkpoints ``out_dir/checkpoints/last.pt`` (after each validation but the last: weights,
  optimizer, scheduler, scaler, sampler and RNG states, logs) and ``best.pt`` (weights), each
  written to a temp file and renamed; frozen weights are not stored (they are those of
  ``params.model``). Running the same command again after a crash resumes from ``last.pt`` and
  ends with the same weights as an uninterrupted run. The checkpoints folder is deleted when
  the run succeeds.

Distributed (torchrun, a process group initialised by the caller): each rank trains on its
shard of the same global batch, the loss gathers embeddings across ranks
(``hybridlib.losses.batch_loss``), gradients are averaged, and rank 0 writes every file.
"""
from __future__ import annotations

import hashlib
import json
import math
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

from .config import StudyParams
from .errors import HybridlibError
from .io import atomic_path, write_json, write_table
from .losses import batch_loss, contrastive_loss, is_distributed
from .sampling import NO_ROW, STRATEGIES, Batch, BatchSampler

VALIDATION_SEED = 0  # the held-out ids and validation batches are the same for every run
LENGTH_CHUNK = 16  # texts per forward pass, sorted by length (less padding; see length_chunks)
VALIDATION_RETRIEVAL_COLUMNS = ("val_mAP", "val_R@10")
TRAIN_LOG_COLUMNS = ["step", "batch_kind", "n_pairs", "n_cross_pairs", "query_langs", "passage_langs",
                     "loss", "lr", "seconds"]
# Parameters that do not change training: a checkpoint stays valid when only these differ.
NOT_TRAINING_KEYS = {"run_name", "candidate_context", "eval_datasets", "eval_languages", "eval_max_ids",
                     "strategies", "variants", "seeds", "device", "keep_models", "bootstrap_samples"}


class TrainingError(HybridlibError):
    """A training run cannot start or continue (bad strategy, unusable data, foreign checkpoint)."""


@dataclass(frozen=True)
class TrainResult:
    """Where a training run left its outputs and how it went."""

    model_dir: Path
    log_path: Path
    best_val_loss: Optional[float]
    resumed: bool
    steps: int


# ---------------------------------------------------------------------------------------------
# Data: training tables, held-out validation ids, texts of a batch
# ---------------------------------------------------------------------------------------------

@dataclass
class BatchTexts:
    """The texts of one batch: queries, positives, hard negatives (of the passage rows) and the
    translations of the queries selected by ``parallel_mask`` (parallel-query loss term)."""

    queries: list
    positives: list
    negatives: list
    parallel_queries: list = field(default_factory=list)
    parallel_mask: Optional[torch.Tensor] = None


def batch_texts(table: pd.DataFrame, batch: Batch) -> BatchTexts:
    """Look up the texts of a batch's rows in its pairs table."""
    queries = table["query"].to_numpy()
    q_rows, p_rows = list(batch.query_rows), list(batch.passage_rows)
    negatives = [text for negs in table["negatives"].to_numpy()[p_rows] for text in negs]
    texts = BatchTexts(queries[q_rows].tolist(), table["positive"].to_numpy()[p_rows].tolist(), negatives)
    if batch.parallel_rows is not None:
        rows = np.asarray(batch.parallel_rows)
        texts.parallel_mask = torch.from_numpy(rows != NO_ROW)
        texts.parallel_queries = queries[rows[rows != NO_ROW]].tolist()
    return texts


def split_validation(tables: list, n_ids: int) -> tuple[list, Optional[pd.DataFrame]]:
    """Hold out about ``n_ids`` question ids (every language of each) for the validation loss.

    Ids are split across datasets in proportion to their sizes and drawn with
    ``VALIDATION_SEED``. Returns the training tables and one validation table (ids prefixed
    with the dataset number, so they stay distinct), or None when ``n_ids`` is 0.
    """
    if n_ids == 0:
        return tables, None
    rng = np.random.default_rng(VALIDATION_SEED)
    sizes = np.array([t["id"].nunique() for t in tables])
    shares = np.floor(n_ids * sizes / sizes.sum()).astype(int)
    shares[np.argsort(-sizes)[: n_ids - shares.sum()]] += 1  # largest datasets take the remainder
    train_tables, held_out = [], []
    for number, (table, share) in enumerate(zip(tables, shares)):
        ids = np.unique(table["id"].astype(str))
        if share >= len(ids):
            raise TrainingError(f"validation_ids {n_ids} leaves no training ids in training dataset {number} "
                                f"({len(ids)} ids); lower validation_ids")
        chosen = set(rng.choice(ids, size=share, replace=False).tolist())
        is_val = table["id"].astype(str).isin(chosen)
        train_tables.append(table[~is_val].reset_index(drop=True))
        held_out.append(table[is_val].assign(id=lambda t, n=number: f"{n}:" + t["id"].astype(str)))
    return train_tables, pd.concat(held_out, ignore_index=True)


def _pool_sizes(table: pd.DataFrame, kind: str) -> dict:
    """Number of held-out ids each validation sampler of ``kind`` can draw from."""
    langs_per_id = table.groupby("id")["lang"].nunique()
    if kind == "x-x-mono":
        return {lang: int((table["lang"] == lang).sum()) for lang in sorted(set(table["lang"]))}
    if kind == "x-y":
        return {None: int((langs_per_id >= 2).sum())}
    if kind == "en-en":
        return {"en": int((table["lang"] == "en").sum())}
    return {None: len(langs_per_id)}


def validation_batches(table: pd.DataFrame, strategy: str, batch_size: int) -> dict:
    """Fixed validation batches per kind: ``{kind: [Batch, ...]}``.

    Kinds: the strategy's, or ``x-x-mono`` and ``x-y`` for hybrid. Each pool is covered about
    once: for ``x-x-mono`` every language with enough held-out ids gets ceil(ids / size)
    batches of that language. The validation batch size is ``batch_size`` or, if smaller, the
    smallest pool of at least 2 ids (so every language can be validated).
    """
    kinds = ("x-x-mono", "x-y") if strategy == "hybrid" else (strategy,)
    pools = {kind: _pool_sizes(table, kind) for kind in kinds}
    usable = [n for sizes in pools.values() for n in sizes.values() if n >= 2]
    if not usable:
        raise TrainingError(f"validation_ids is too small to validate {strategy} batches (need at least 2 "
                            f"held-out ids per pool); raise validation_ids or set it to 0")
    size = min(batch_size, min(usable))
    batches = {}
    for kind, sizes in pools.items():
        batches[kind] = []
        for lang, n in sizes.items():
            if n < size:
                continue
            sampler = BatchSampler(table, kind, size, seed=VALIDATION_SEED, languages=[lang] if lang else None)
            batches[kind] += [sampler.next_batch() for _ in range(math.ceil(n / size))]
    return {kind: kind_batches for kind, kind_batches in batches.items() if kind_batches}


def load_training_data(params: StudyParams) -> list:
    """The pairs table of each training source (``params.train_sources``)."""
    from .sources import load_pairs

    return [load_pairs(source, languages=params.train_languages, max_ids=params.train_max_ids,
                       hard_negatives=params.hard_negatives) for source in params.train_sources]


# ---------------------------------------------------------------------------------------------
# One optimisation step: plain backward or GradCache
# ---------------------------------------------------------------------------------------------

def _groups(texts: BatchTexts) -> dict:
    """Texts to embed, by kind: queries (+ their translations), passages (positives + negatives)."""
    return {"query": texts.queries + texts.parallel_queries, "passage": texts.positives + texts.negatives}


def _loss_of(embeddings: dict, texts: BatchTexts, loss_fn: Callable) -> torch.Tensor:
    b = len(texts.queries)
    q, p = embeddings["query"], embeddings["passage"]
    return loss_fn(q[:b], p[:b], p[b:], q[b:], texts.parallel_mask)


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def length_chunks(tokens: dict, size: int) -> list:
    """Row indices of a tokenized batch sorted by length, cut into chunks of ``size`` rows.

    Embedding each chunk padded only to its own longest text spares most padding: in MLQA-R
    batches of 32 pairs, 38% of the positions of one padded passage batch are real tokens,
    74% with 4 length-sorted chunks.
    """
    order = torch.argsort(tokens["attention_mask"].sum(dim=1), stable=True)
    return list(torch.split(order, size))


def _rows(tokens: dict, rows: torch.Tensor) -> dict:
    """Rows of a tokenized batch, trimmed to their longest sequence."""
    width = int(tokens["attention_mask"][rows].sum(dim=1).max())
    return {key: value[rows, :width] for key, value in tokens.items()}


def embed_in_chunks(encoder, tokens: dict, size: int = LENGTH_CHUNK) -> torch.Tensor:
    """``encoder.embed_tokens`` over length-sorted chunks (see ``length_chunks``), in input order."""
    chunks = length_chunks(tokens, size)
    embedded = torch.cat([encoder.embed_tokens(_rows(tokens, rows)) for rows in chunks])
    return embedded[torch.argsort(torch.cat(chunks))]


def backward(encoder, texts: BatchTexts, loss_fn: Callable, grad_cache_chunk: Optional[int] = None,
             scale: Callable = lambda loss: loss) -> torch.Tensor:
    """Embed a batch, compute ``loss_fn`` and accumulate its gradients into the encoder.

    ``loss_fn(q, p, n, q_parallel, parallel_mask)``; ``scale`` (a GradScaler's ``scale``) is
    applied before back-propagation. Texts are embedded in length-sorted chunks of
    ``LENGTH_CHUNK`` (less padding). With ``grad_cache_chunk`` the gradients are those of plain
    back-propagation, computed with at most that many texts in memory at once (GradCache).
    Returns the loss.
    """
    tokens = {kind: encoder.tokenize(texts_, kind) for kind, texts_ in _groups(texts).items() if texts_}
    if grad_cache_chunk is None:
        with encoder.autocast():
            embeddings = {kind: embed_in_chunks(encoder, tokens_) for kind, tokens_ in tokens.items()}
        loss = _loss_of(embeddings, texts, loss_fn)
        scale(loss).backward()
        return loss.detach()
    return _grad_cache_backward(encoder, tokens, texts, loss_fn, grad_cache_chunk, scale)


def _grad_cache_backward(encoder, tokens: dict, texts: BatchTexts, loss_fn: Callable, chunk: int,
                         scale: Callable) -> torch.Tensor:
    device = encoder.device
    chunks = {kind: length_chunks(tokens_, chunk) for kind, tokens_ in tokens.items()}
    rng_states, cached = [], {}
    with torch.no_grad(), encoder.autocast():  # 1. embeddings without a graph
        for kind, kind_chunks in chunks.items():
            cached[kind] = torch.empty((len(tokens[kind]["input_ids"]), encoder.dim), device=device)
            for rows in kind_chunks:
                rng_states.append(_rng_state(device))
                cached[kind][rows] = encoder.embed_tokens(_rows(tokens[kind], rows))
            cached[kind].requires_grad_(True)
    state_after = _rng_state(device)
    loss = _loss_of(cached, texts, loss_fn)  # 2. loss and its gradient w.r.t. the embeddings
    scale(loss).backward()
    states = iter(rng_states)
    for kind, kind_chunks in chunks.items():  # 3. each chunk again, with a graph and the same dropout
        for rows in kind_chunks:
            _set_rng_state(next(states), device)
            with encoder.autocast():
                embedded = encoder.embed_tokens(_rows(tokens[kind], rows))
            embedded.backward(cached[kind].grad[rows])
    _set_rng_state(state_after, device)
    return loss.detach()


def _average_gradients(model: torch.nn.Module) -> None:
    world = dist.get_world_size()
    for parameter in model.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world


@torch.no_grad()
def _embed_distinct(encoder, texts, kind: str) -> tuple[dict, torch.Tensor]:
    """Embed each distinct text once: ``({text: row}, embeddings)``."""
    distinct = list(dict.fromkeys(texts))
    return {text: row for row, text in enumerate(distinct)}, embed_in_chunks(encoder, encoder.tokenize(distinct, kind))


def held_out_retrieval(queries: torch.Tensor, answers: torch.Tensor, query_ids, answer_ids, k: int = 10) -> dict:
    """mAP and R@k of held-out queries against the multilingual pool of held-out answers.

    ``answer_ids``: for each answer, the set of question ids it answers (an answer sentence can
    answer several questions). Relevant: every answer of the query's id, in every language,
    as in the LAReQA multilingual setting.
    """
    from .metrics import average_precision_from_ranks, recall_at_k, relevant_ranks

    column = {qid: c for c, qid in enumerate(dict.fromkeys(query_ids))}
    answers_id = np.zeros((len(answer_ids), len(column)), dtype=bool)  # answer a answers id c
    for a, ids in enumerate(answer_ids):
        answers_id[a, [column[qid] for qid in ids if qid in column]] = True
    relevant = answers_id[:, [column[qid] for qid in query_ids]].T
    scores = (queries.float() @ answers.float().T).cpu().numpy()
    ranks = relevant_ranks(scores, relevant)
    return {"val_mAP": float(np.mean(average_precision_from_ranks(ranks))),
            f"val_R@{k}": float(np.nanmean(recall_at_k(ranks, k)))}


def validation_metrics(encoder, table: pd.DataFrame, batches: dict, temperature: float, symmetric: bool) -> dict:
    """Validation loss and held-out retrieval of the encoder (eval mode, each text embedded once).

    ``val_loss_<kind>``: the mean contrastive loss over the fixed batches of each kind;
    ``val_loss``: their mean. ``val_mAP`` and ``val_R@10``: every held-out query against the
    pool of all held-out answer sentences (``held_out_retrieval``), the same for every strategy.
    """
    was_training = encoder.model.training
    encoder.model.eval()
    negatives = [text for texts in table["negatives"] for text in texts]
    with torch.no_grad(), encoder.autocast():
        query_row, queries = _embed_distinct(encoder, table["query"], "query")
        passage_row, passages = _embed_distinct(encoder, list(table["positive"]) + negatives, "passage")
    losses = {}
    for kind, kind_batches in batches.items():
        values = []
        for batch in kind_batches:
            texts = batch_texts(table, batch)
            q = queries[[query_row[t] for t in texts.queries]]
            p = passages[[passage_row[t] for t in texts.positives]]
            n = passages[[passage_row[t] for t in texts.negatives]]
            values.append(contrastive_loss(q.float(), p.float(), n.float(), temperature, symmetric).item())
        losses[f"val_loss_{kind}"] = float(np.mean(values))
    encoder.model.train(was_training)
    answers = table.groupby("positive", sort=False)["id"].agg(set)
    retrieval = held_out_retrieval(queries[[query_row[t] for t in table["query"]]],
                                   passages[[passage_row[t] for t in answers.index]],
                                   table["id"].tolist(), answers.tolist())
    return {"val_loss": float(np.mean(list(losses.values()))), **losses, **retrieval}


# ---------------------------------------------------------------------------------------------
# Optimiser, checkpoints, logs
# ---------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, params: StudyParams):
    """AdamW over the trainable weights (no decay on 1-d ones: biases, LayerNorm) + linear schedule."""
    from transformers import get_linear_schedule_with_warmup

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": params.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=params.learning_rate)
    warmup = round(params.warmup_ratio * params.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, params.max_steps)
    return optimizer, scheduler


def run_fingerprint(params: StudyParams, strategy: str, seed: int) -> str:
    """A hash of everything that determines the trained weights (checkpoints of other runs are refused)."""
    values = {k: v for k, v in params.model_dump().items() if k not in NOT_TRAINING_KEYS}
    text = json.dumps({"params": values, "strategy": strategy, "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_csv(rows: list, columns: list, path: Path) -> None:
    write_table(pd.DataFrame(rows, columns=columns), path)


def _log_row(step: int, table: pd.DataFrame, batch: Batch, loss: float, lr: float, seconds: float) -> dict:
    langs = table["lang"].to_numpy()
    q_langs, p_langs = langs[list(batch.query_rows)], langs[list(batch.passage_rows)]
    return {"step": step, "batch_kind": batch.kind, "n_pairs": len(batch),
            "n_cross_pairs": int((q_langs != p_langs).sum()), "query_langs": ";".join(sorted(set(q_langs))),
            "passage_langs": ";".join(sorted(set(p_langs))), "loss": loss, "lr": lr, "seconds": round(seconds, 4)}


@dataclass
class _Progress:
    """What the loop knows besides the weights; saved in ``last.pt``."""

    step: int = 0
    best_val_loss: Optional[float] = None
    best_step: Optional[int] = None
    bad_validations: int = 0
    stopped: bool = False
    train_log: list = field(default_factory=list)
    val_log: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

class _Run:
    """One training run's objects, so that the loop and checkpointing stay short."""

    def __init__(self, params: StudyParams, strategy: str, seed: int, out_dir: Path, progress: bool):
        from .models import DualEncoder

        self.params, self.strategy, self.seed, self.out_dir = params, strategy, seed, out_dir
        self.checkpoints = out_dir / "checkpoints"
        self.fingerprint = run_fingerprint(params, strategy, seed)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
        self.show_progress = progress and self.rank == 0
        seed_everything(seed)
        tables, self.val_table = split_validation(load_training_data(params), params.validation_ids)
        self.tables = tables
        self.sampler = BatchSampler(tables, strategy, params.batch_size, seed, params.train_languages,
                                    params.alpha, self.rank, self.world,
                                    parallel_queries=params.parallel_query_weight > 0)
        self.val_batches = (validation_batches(self.val_table, strategy, params.batch_size)
                            if self.val_table is not None else None)
        self.encoder = DualEncoder.from_params(params)
        self.encoder.model.train()
        if params.freeze_embeddings:
            self.encoder.model.get_input_embeddings().weight.requires_grad_(False)
        self.optimizer, self.scheduler = build_optimizer(self.encoder.model, params)
        use_scaler = self.encoder.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.encoder.device.type, enabled=use_scaler)
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
        """Put the weights with the lowest validation loss back into the encoder."""
        if self.state.best_step is None or self.state.best_step == self.state.step:
            return
        if self.state.best_step == 0:
            from .models import DualEncoder

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
            _write_csv(self.state.train_log, TRAIN_LOG_COLUMNS, self.out_dir / "train_log.csv")
            val_columns = (["step", "val_loss"] + [f"val_loss_{k}" for k in (self.val_batches or {})]
                           + list(VALIDATION_RETRIEVAL_COLUMNS))
            _write_csv(self.state.val_log, val_columns, self.out_dir / "val_log.csv")

    # -- steps
    def validate(self, step: int) -> bool:
        """Validation loss at ``step``; True if it is the lowest so far (else counts towards early stopping)."""
        if self.val_batches is None:
            return False
        values = validation_metrics(self.encoder, self.val_table, self.val_batches, self.params.temperature,
                                    self.params.symmetric_loss)
        self.state.val_log.append({"step": step, **values})
        if self.state.best_val_loss is None or values["val_loss"] < self.state.best_val_loss:
            self.state.best_val_loss, self.state.best_step = values["val_loss"], step
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
        texts = batch_texts(self.tables[batch.dataset], batch)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss = backward(self.encoder, texts, self.loss_fn, self.params.grad_cache_chunk, self.scaler.scale)
        if self.world > 1:
            _average_gradients(self.encoder.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return _log_row(step, self.tables[batch.dataset], global_batch, loss.item(), lr,
                        time.perf_counter() - start)


def _as_tuples(value):
    """Lists back to tuples (``random.setstate`` needs the tuples that a checkpoint made lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def train(params: StudyParams, strategy: str, seed: int, out_dir: Union[str, Path], progress: bool = True,
          on_step: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Fine-tune ``params.model`` with batch ``strategy`` and ``seed``; outputs in ``out_dir``.

    Resumes from ``out_dir/checkpoints/last.pt`` when a previous run of the same command was
    interrupted; returns at once when ``out_dir`` already holds the finished run.
    ``on_step(step)`` is called after every step (after its checkpoint, if any).
    Raises ``TrainingError`` / ``SamplingError`` (``HybridlibError``) on unusable settings,
    before any training step.
    """
    if strategy not in STRATEGIES:
        raise TrainingError(f"unknown strategy {strategy!r} to train (expected one of {', '.join(STRATEGIES)})")
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
        print(f"resumed {strategy} seed {seed} from step {run.state.step} ({run.checkpoints / 'last.pt'})")
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
    result = TrainResult(model_dir, run.out_dir / "train_log.csv", run.state.best_val_loss, resumed, run.state.step)
    if run.rank == 0:
        run.encoder.save(model_dir)
        run.write_logs()
        write_json({"fingerprint": run.fingerprint, "strategy": run.strategy, "seed": run.seed,
                     "steps": run.state.step, "best_step": run.state.best_step,
                     "best_val_loss": run.state.best_val_loss}, run.out_dir / "train_done.json")
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
    print(f"already trained: {out_dir / 'model'} (delete {done} to train again)")
    return TrainResult(out_dir / "model", out_dir / "train_log.csv", info["best_val_loss"], False, info["steps"])
