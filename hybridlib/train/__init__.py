"""Fine-tune a dual encoder with one batch strategy: the training of the study.

``train(params, strategy, seed, out_dir)`` runs one (strategy, seed) and leaves the selected
model and its logs in ``out_dir`` (docs/paper.md, "Model and loss"; choices marked *ours* there).
The package, in the order of the data flow:

- ``split``: the training tables, the held-out validation ids (the same for every run) and the
  fixed validation batches;
- ``step``: one optimisation step: a batch's texts, length-sorted chunks, GradCache, mixed
  precision, gradient averaging across ranks, AdamW and its schedule;
- ``validation``: the selection score ``val_score`` (held-out mAP over the mono-, cross- and
  multilingual settings, identical in kind for every strategy) and the per-kind losses;
- ``loop``: ``train`` itself: validation, best checkpoint, early stopping, resumption, logs.

    from hybridlib.config import load_params
    from hybridlib.train import train

    result = train(load_params("params/smoke.yaml"), "hybrid", seed=0, out_dir="runs/try")
    result.model_dir, result.best_val_score
"""
from .loop import TRAIN_LOG_COLUMNS, TrainResult, run_fingerprint, seed_everything, train
from .split import TrainingError, load_training_data, split_validation, validation_batches
from .step import (
    BatchTexts,
    average_gradients,
    backward,
    batch_texts,
    build_optimizer,
    embed_in_chunks,
    grad_scaler,
    length_chunks,
    optimizer_step,
)
from .validation import held_out_retrieval, validation_columns, validation_losses, validation_metrics

__all__ = [
    "TRAIN_LOG_COLUMNS", "BatchTexts", "TrainResult", "TrainingError", "average_gradients", "backward",
    "batch_texts", "build_optimizer", "embed_in_chunks", "grad_scaler", "held_out_retrieval", "length_chunks",
    "load_training_data", "optimizer_step", "run_fingerprint", "seed_everything", "split_validation", "train",
    "validation_batches", "validation_columns", "validation_losses", "validation_metrics",
]
