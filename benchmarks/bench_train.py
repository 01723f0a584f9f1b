"""Benchmark of the training step (run by hand; prints tables, asserts nothing).

1. Our step (``hybridlib.train.backward`` + AdamW) against sentence-transformers'
   ``MultipleNegativesRankingLoss`` step (a ``SentenceTransformer`` built from the same model
   folder: Transformer + mean Pooling + Normalize, scale 20 = 1 / 0.05), on the same batches
   (hybrid, ``--batch-size`` pairs + one hard negative each), word embeddings frozen in both,
   in fp32 and, on a CPU with native bf16, also both under bf16 autocast; and our step with
   torch's own dropout (``bernoulli_`` masks, sdpa attention) to show what ``FastDropout`` saves.
   Speed: the steps alternate in one process (the ratios are what counts on a shared machine).
   Each row gives the useful arithmetic rate (3 x the linear layers' FLOPs of the batch's real
   tokens, per second) and its fraction of the machine's measured matrix-product peak in that
   precision (``machine.py``). Peak memory (fp32): each side in its own subprocess.
2. Our step in bf16 autocast against fp32: speed alternating in one process, then
   ``train()`` runs of ``--train-steps`` steps per seed and precision with the validation loss
   before and after (quality: bf16 should match fp32 within seed-to-seed noise).

    python benchmarks/bench_train.py                      # everything (~10 min on 2 cores)
    python benchmarks/bench_train.py --parts st --steps 8 # only part 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from machine import describe_machine, linear_flops_per_token, real_tokens

from hybridlib.config import params_from_dict
from hybridlib.losses import batch_loss
from hybridlib.models import DualEncoder, cpu_has_fast_bf16, resolve_model
from hybridlib.sampling import BatchSampler
from hybridlib.sources import load_pairs
from hybridlib.train import BatchTexts, backward, batch_texts, build_optimizer, train

MAX_LENGTH = 128
TEMPERATURE = 0.05


def benchmark_batches(batch_size: int, count: int) -> list:
    """``count`` hybrid batches of MLQA-R pairs that have exactly one hard negative."""
    pairs = load_pairs("mlqa-r", hard_negatives=1)
    pairs = pairs[pairs["negatives"].map(len) == 1].reset_index(drop=True)
    sampler = BatchSampler(pairs, "hybrid", batch_size, seed=0)
    return [batch_texts(pairs, sampler.next_batch()) for _ in range(count)]


def optimizer_params():
    return params_from_dict({"learning_rate": 3e-5, "max_steps": 1000})


class OurStep:
    """One training step of hybridlib: embed, InfoNCE, backward, AdamW."""

    def __init__(self, path: str, precision: str = "fp32", torch_dropout: bool = False):
        self.encoder = DualEncoder(path, max_length=MAX_LENGTH, device="cpu", precision=precision)
        if torch_dropout:
            with_torch_dropout(self.encoder.model)
        self.encoder.model.train()
        self.encoder.model.get_input_embeddings().weight.requires_grad_(False)
        self.optimizer, _ = build_optimizer(self.encoder.model, optimizer_params())
        self.loss_fn = partial(batch_loss, temperature=TEMPERATURE)

    def __call__(self, texts: BatchTexts) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = backward(self.encoder, texts, self.loss_fn)
        self.optimizer.step()
        return loss.item()


def with_torch_dropout(model: torch.nn.Module) -> None:
    """Undo ``use_fast_dropout``: torch's ``nn.Dropout`` modules and transformers' sdpa attention."""
    from hybridlib.models import FastDropout

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, FastDropout):
                setattr(parent, name, torch.nn.Dropout(child.p))
    model.set_attn_implementation("sdpa")


class SentenceTransformersStep:
    """The same step with sentence-transformers: MultipleNegativesRankingLoss(scale=20), under
    bf16 autocast when ``precision`` is bf16 (as our step)."""

    def __init__(self, path: str, precision: str = "fp32"):
        self.precision = precision
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

        transformer = Transformer(path, max_seq_length=MAX_LENGTH)
        pooling = Pooling(transformer.get_embedding_dimension(), "mean")
        self.model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
        self.model.train()
        transformer.auto_model.get_input_embeddings().weight.requires_grad_(False)
        self.loss = MultipleNegativesRankingLoss(self.model, scale=1 / TEMPERATURE)
        self.optimizer, _ = build_optimizer(self.model, optimizer_params())

    def __call__(self, texts: BatchTexts) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        columns = [["query: " + t for t in texts.queries], ["passage: " + t for t in texts.positives],
                   ["passage: " + t for t in texts.negatives]]
        features = [self.model.preprocess(column) for column in columns]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.loss(features, None)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def alternate(steps: dict, batches: list) -> pd.DataFrame:
    """Run the steps in turn on each batch; seconds per step (the first batch is a warm-up)."""
    rows = []
    for number, texts in enumerate(batches):
        for name, step in steps.items():
            start = time.perf_counter()
            loss = step(texts)
            rows.append({"batch": number, "impl": name, "seconds": time.perf_counter() - start, "loss": loss})
    return pd.DataFrame(rows).query("batch > 0")


def _proc_status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(key)


def memory_worker(impl: str, path: str, batch_size: int, steps: int) -> None:
    """Subprocess: load one side, run ``steps`` steps; print RSS after loading and the peak RSS
    during the steps (Linux: the high-water mark is reset after loading via /proc/self/clear_refs)."""
    torch.manual_seed(0)
    batches = benchmark_batches(batch_size, steps)
    step = OurStep(path) if impl == "hybridlib" else SentenceTransformersStep(path)
    loaded = _proc_status_mb("VmRSS")
    load_peak = _proc_status_mb("VmHWM")  # not ru_maxrss: a child inherits its parent's
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    for texts in batches:
        step(texts)
    print(json.dumps({"impl": impl, "rss_after_load_mb": round(loaded), "peak_rss_loading_mb": round(load_peak),
                      "peak_rss_steps_mb": round(_proc_status_mb("VmHWM"))}))


def part_sentence_transformers(path: str, batch_size: int, steps_count: int, machine: dict) -> None:
    torch.manual_seed(0)
    batches = benchmark_batches(batch_size, steps_count + 1)
    ours, theirs = OurStep(path), SentenceTransformersStep(path)
    # same weights and loss: the losses agree on the first batch in eval mode (no dropout)
    ours.encoder.model.eval(), theirs.model.eval()
    with torch.no_grad():
        q = ours.encoder.embed(batches[0].queries, "query")
        pn = ours.encoder.embed(batches[0].positives + batches[0].negatives, "passage")
        ours_loss = batch_loss(q, pn[:batch_size], pn[batch_size:], temperature=TEMPERATURE).item()
        columns = [["query: " + t for t in batches[0].queries], ["passage: " + t for t in batches[0].positives],
                   ["passage: " + t for t in batches[0].negatives]]
        st_loss = theirs.loss([theirs.model.preprocess(c) for c in columns], None).item()
    print(f"\nsame batch, eval mode: hybridlib loss {ours_loss:.5f}, sentence-transformers loss {st_loss:.5f}")
    del ours, theirs
    precisions = ["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"]
    steps = {}
    for precision in precisions:
        steps[f"hybridlib {precision}"] = OurStep(path, precision)
        steps[f"hybridlib {precision}, torch dropout"] = OurStep(path, precision, torch_dropout=True)
        steps[f"sentence-transformers {precision}"] = SentenceTransformersStep(path, precision)
    encoder = steps["hybridlib fp32"].encoder
    flops = [3 * linear_flops_per_token(encoder.model) * batch_tokens(encoder, texts) for texts in batches[1:]]
    timings = alternate(steps, batches)
    del steps
    memory = []
    for impl in ("hybridlib", "sentence-transformers"):
        out = subprocess.run([sys.executable, __file__, "--memory-worker", impl, "--batch-size", str(batch_size),
                              "--steps", "3", "--threads", str(torch.get_num_threads())],
                             capture_output=True, text=True, check=True)
        memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = timings.groupby("impl", sort=False)["seconds"].agg(["mean", "std", "count"])
    table["GFLOP/s"] = sum(flops) / len(flops) / table["mean"] / 1e9
    table["of peak"] = [rate / machine[f"{impl.split()[1].rstrip(',')} peak GFLOP/s"]
                        for impl, rate in table["GFLOP/s"].items()]
    table["vs ST"] = [table.loc[f"sentence-transformers {impl.split()[1].rstrip(',')}", "mean"] / seconds
                      for impl, seconds in table["mean"].items()]
    print(f"\n## Training step, {batch_size} pairs + {batch_size} hard negatives, frozen word embeddings, "
          f"{steps_count} alternating steps each (after 1 warm-up); {sum(flops) / len(flops) / 1e12:.2f} TFLOP "
          f"of linear layers per step (3 x {linear_flops_per_token(encoder.model) / 1e6:.1f} MFLOP x real tokens)")
    print(table.round(3).to_string(formatters={"of peak": "{:.0%}".format, "vs ST": "{:.2f}x".format}))
    print("\npeak memory, fp32:")
    print(pd.DataFrame(memory).set_index("impl").to_string())


def batch_tokens(encoder, texts: BatchTexts) -> int:
    """Real (non-padding) tokens of a batch's queries and passages, prefixes included."""
    columns = [encoder.prefixes["query"] + t for t in texts.queries]
    columns += [encoder.prefixes["passage"] + t for t in texts.positives + texts.negatives]
    return real_tokens(encoder.tokenizer, columns, MAX_LENGTH)


def part_precision(path: str, batch_size: int, steps: int, seeds: list, train_steps: int,
                   train_batch_size: int) -> None:
    torch.manual_seed(0)
    batches = benchmark_batches(batch_size, steps + 1)
    fp32, bf16 = OurStep(path, "fp32"), OurStep(path, "bf16")
    timings = alternate({"fp32": fp32, "bf16": bf16}, batches)
    del fp32, bf16
    speed = timings.groupby("impl")["seconds"].agg(["mean", "std", "count"])
    speed["steps/s"] = 1 / speed["mean"]
    print(f"\n## Our step, bf16 autocast vs fp32 ({batch_size} pairs, {steps} alternating steps each)")
    print(speed.round(3).to_string())
    print(f"speed ratio bf16 / fp32: {speed.loc['bf16', 'steps/s'] / speed.loc['fp32', 'steps/s']:.2f}x")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for precision in ("fp32", "bf16"):
                params = params_from_dict(dict(
                    model=path, train_dataset="mlqa-r", validation_ids=32, batch_size=train_batch_size,
                    max_length=MAX_LENGTH, max_steps=train_steps, eval_every=train_steps, warmup_ratio=0.1,
                    device="cpu", precision=precision))
                out = Path(tmp) / f"{precision}-{seed}"
                train(params, "hybrid", seed, out, progress=False)
                val = pd.read_csv(out / "val_log.csv").set_index("step")["val_loss"]
                log = pd.read_csv(out / "train_log.csv")
                rows.append({"precision": precision, "seed": seed, "val_loss_step_0": val.loc[0],
                             f"val_loss_step_{train_steps}": val.loc[train_steps],
                             "s/step": log["seconds"].iloc[1:].mean()})
    runs = pd.DataFrame(rows)
    print(f"\n## train(): hybrid, {train_steps} steps of {train_batch_size} pairs, MLQA-R (32 held-out ids), per seed")
    print(runs.round(4).to_string(index=False))
    after = f"val_loss_step_{train_steps}"
    summary = runs.groupby("precision")[[after, "s/step"]].agg(["mean", "std"])
    print(summary.round(4).to_string())
    paired = runs.pivot(index="seed", columns="precision", values=after)
    diff = paired["bf16"] - paired["fp32"]
    print(f"bf16 - fp32 final validation loss, paired by seed: mean {diff.mean():+.4f} (per seed "
          f"{', '.join(f'{d:+.4f}' for d in diff)}); seed-to-seed std of fp32: {paired['fp32'].std():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side (after one warm-up)")
    parser.add_argument("--train-steps", type=int, default=12, help="steps of each train() run in part 2")
    parser.add_argument("--train-batch-size", type=int, default=16, help="batch size of the train() runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", default=["st", "precision"], choices=["st", "precision"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-worker", choices=["hybridlib", "sentence-transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    if args.memory_worker:
        memory_worker(args.memory_worker, path, args.batch_size, args.steps)
        return
    machine = describe_machine()
    print("machine:", "; ".join(f"{key} {value}" for key, value in machine.items()))
    print(f"model {args.model} ({path}); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}")
    if "st" in args.parts:
        part_sentence_transformers(path, args.batch_size, args.steps, machine)
    if "precision" in args.parts:
        part_precision(path, args.batch_size, args.steps, args.seeds, args.train_steps, args.train_batch_size)


if __name__ == "__main__":
    main()
