"""Where the time of one training run of a study goes (run by hand; prints a table, asserts nothing).

Runs ``study.train_and_evaluate`` for one strategy and seed of a parameter file, as notebook
``02_train`` does, in a fresh temporary run folder, with timers around its parts: data loading,
encoder loading, training steps, validation, checkpoints, saving, encoding and metrics of the
evaluation, writing the results. Each row is the time spent in a part itself; a part's timed
sub-parts are their own rows, indented under it, so the rows add up to the run. What the timers do
not cover is the last row. The import of the notebook's modules, which every (strategy, seed)
notebook pays in its own kernel, is timed in a fresh interpreter.

The step-0 validation reads the embedding cache when an earlier run of the study filled it, as
every run after a study's first does. ``validation > encode`` then counts 2 calls (questions and
passages) for each validation but the first.

    python benchmarks/profile_run.py                           # params/default.yaml, hybrid, seed 0
    python benchmarks/profile_run.py params/mlqa-r.yaml --strategy x-y --seed 1
"""
from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from machine import describe_machine

import hybridlib.study.evaluation as study_evaluation
import hybridlib.train.loop as train_loop
from hybridlib import study
from hybridlib.models import DualEncoder

NOTEBOOK_IMPORT = "from hybridlib import plots, report, study"


class Timers:
    """Exclusive wall time per call path of the wrapped functions."""

    def __init__(self):
        self.seconds, self.calls, self.stack = defaultdict(float), defaultdict(int), []
        self.first_entered: dict = {}  # path -> order of its first call, to print the parts as a tree

    def wrap(self, owner, name: str, label: str) -> None:
        """Replace ``owner.name`` (a function of a module or a class) by a timed copy labelled ``label``."""
        original = getattr(owner, name)
        is_classmethod = isinstance(owner.__dict__.get(name), classmethod)
        function = original.__func__ if is_classmethod else original

        @functools.wraps(function)
        def timed(*args, **kwargs):
            self.stack.append([label, 0.0])
            self.first_entered.setdefault(tuple(frame[0] for frame in self.stack), len(self.first_entered))
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                path = tuple(frame[0] for frame in self.stack)
                _, inner = self.stack.pop()
                self.seconds[path] += elapsed - inner
                self.calls[path] += 1
                if self.stack:
                    self.stack[-1][1] += elapsed

        setattr(owner, name, classmethod(timed) if is_classmethod else timed)


def instrument(timers: Timers) -> None:
    """Timers around the parts of ``study.train_and_evaluate`` (see the module doc)."""
    parts = [
        (train_loop._Run, "__init__", "training set-up (sampler, optimizer)"),
        (train_loop, "load_training_data", "training data"),
        (train_loop, "split_validation", "validation split"),
        (train_loop, "validation_batches", "validation batches"),
        (DualEncoder, "from_params", "encoder load (weights, tokenizer)"),
        (train_loop._Run, "train_step", "training steps"),
        (train_loop._Run, "validate", "validation"),
        (train_loop._Run, "save_best", "checkpoint (best)"),
        (train_loop._Run, "save_last", "checkpoint (last, to resume)"),
        (train_loop._Run, "write_logs", "training logs"),
        (train_loop._Run, "restore_best", "restore the best checkpoint"),
        (DualEncoder, "save", "save the model"),
        (DualEncoder, "encode", "encode"),
        (DualEncoder, "_inference_model", "inference copy of the model"),
        (study_evaluation, "load_eval_data", "evaluation data"),
        (study_evaluation, "evaluate_encoder", "evaluation (metrics)"),
        (study_evaluation, "_save_part", "write metrics and per-query tables"),
    ]
    for owner, name, label in parts:
        timers.wrap(owner, name, label)


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what a notebook of the study imports."""
    code = f"import time; t = time.perf_counter(); {NOTEBOOK_IMPORT}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def run_profile(params_path: str, strategy: str, seed: int) -> tuple[Timers, float]:
    """Time one ``train_and_evaluate`` of ``strategy``/``seed`` in a temporary run folder."""
    timers = Timers()
    instrument(timers)
    with tempfile.TemporaryDirectory() as folder:
        params, run_dir = study.load_run(params_path, Path(folder) / "run")
        start = time.perf_counter()
        study.train_and_evaluate(params, run_dir, strategy, seed)
        total = time.perf_counter() - start
    return timers, total


def print_table(timers: Timers, total: float, imports: float) -> None:
    """The parts as an indented table, with their share of the run, then the untimed rest."""
    def tree_position(path: tuple) -> tuple:
        return tuple(timers.first_entered[path[:depth]] for depth in range(1, len(path) + 1))

    rows = sorted(timers.seconds.items(), key=lambda item: tree_position(item[0]))
    print(f"\n{'part':<58} {'calls':>5} {'seconds':>8} {'share':>6}")
    for path, seconds in rows:
        name = "  " * (len(path) - 1) + path[-1]
        print(f"{name:<58} {timers.calls[path]:>5} {seconds:>8.1f} {seconds / total:>6.0%}")
    rest = total - sum(timers.seconds.values())
    print(f"{'not in a timed part':<58} {'':>5} {rest:>8.1f} {rest / total:>6.0%}")
    print(f"{'train_and_evaluate in all':<58} {'':>5} {total:>8.1f} {1:>6.0%}")
    print(f"\nimport of the notebook's modules in a fresh interpreter ({NOTEBOOK_IMPORT}): {imports:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default="params/default.yaml")
    parser.add_argument("--strategy", default="hybrid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for key, value in describe_machine().items():
        print(f"{key}: {value}")
    imports = import_seconds()
    timers, total = run_profile(args.params, args.strategy, args.seed)
    print(f"\n{args.params}, strategy {args.strategy}, seed {args.seed}")
    print_table(timers, total, imports)


if __name__ == "__main__":
    main()
