"""Distributed training on 2 CPU processes (gloo) equals one process on the same global batch.

Each rank draws the same global batch, keeps its shard (``BatchSampler(rank, world_size)``),
embeds it with a tiny BERT and computes ``batch_loss``, which all-gathers the embeddings, so
every rank holds the loss of the whole global batch. Back-propagation through the gather
sums the (identical) upstream gradients of the ranks, so each rank's gradient is
``world_size`` times its shard's share of the global gradient; averaging over ranks
(``hybridlib.train.average_gradients``, or DDP) gives the one-process gradient. The tests check
``hybridlib.losses.gather`` on shards of unequal sizes, that loss and gradients match one
process (plain back-propagation, GradCache, the symmetric and parallel-query terms, a
DDP-wrapped model), and that ``train`` runs to the end under a process group.
"""
from __future__ import annotations

import copy
import datetime
from functools import partial

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from numerics import GradientTerms, U, assert_within, gradient_bound  # the fp32 bounds, derived there

from hybridlib.losses import batch_loss, gather
from hybridlib.models import DualEncoder
from hybridlib.sampling import BatchSampler
from hybridlib.train import average_gradients, backward, batch_texts

WORLD_SIZE = 2
BATCH_SIZE = 4  # global: 2 pairs per rank
SEED = 3
TEMPERATURE = 0.05
# name: (strategy, grad_cache_chunk, symmetric, parallel_query_weight, wrap the model in DDP)
CASES = {
    "x-y": ("x-y", None, False, 0.0, False),
    "x-x-mono grad-cache symmetric": ("x-x-mono", 1, True, 0.0, False),
    "hybrid parallel-queries": ("hybrid", None, False, 0.5, False),
    "x-y ddp": ("x-y", None, False, 0.0, True),
}


def _pairs() -> pd.DataFrame:
    """Six ids in up to three languages (q5 English only); texts differ in length (padding) and
    about half the rows have a hard negative, so the ranks' shards hold unequal numbers of them."""
    words = {"en": "where is the river", "de": "wo ist der Fluss heute", "es": "donde esta el rio"}
    rows = [(f"q{k}", lang, f"{words[lang]} {k} " + "x " * k, f"answer {k} in {lang} " + "y " * (5 - k),
             [f"wrong {k} {lang}"] if (k + j) % 2 == 0 else [])
            for k in range(6) for j, lang in enumerate(words) if k < 5 or lang == "en"]
    return pd.DataFrame(rows, columns=["id", "lang", "query", "positive", "negatives"])


def _prepared(encoder: DualEncoder) -> DualEncoder:
    """A copy with its own weights, without dropout (both runs must compute the same function)
    and with frozen word embeddings (as ``freeze_embeddings``; keeps the saved gradients small)."""
    encoder = copy.copy(encoder)
    encoder.model = copy.deepcopy(encoder.model).eval()
    encoder.model.get_input_embeddings().weight.requires_grad_(False)
    return encoder


def _step(encoder, case: str, rank: int = 0, world_size: int = 1) -> dict:
    """One training step's loss and gradients (before the optimizer) on this rank's shard."""
    strategy, chunk, symmetric, weight, _ = CASES[case]
    table = _pairs()
    sampler = BatchSampler(table, strategy, BATCH_SIZE, SEED, rank=rank, world_size=world_size,
                           parallel_queries=weight > 0)
    batch = sampler.next_batch()
    loss_fn = partial(batch_loss, temperature=TEMPERATURE, symmetric=symmetric, parallel_query_weight=weight)
    texts = batch_texts(table, batch)
    encoder.model.zero_grad(set_to_none=True)
    loss = backward(encoder, texts, loss_fn, grad_cache_chunk=chunk)
    if world_size > 1 and not isinstance(encoder.model, torch.nn.parallel.DistributedDataParallel):
        average_gradients(encoder.model)
    grads = {name: p.grad.clone() for name, p in encoder.model.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "grads": grads, "query_rows": list(batch.query_rows)}


# rows of each rank's shard in the gather test: unequal, and one rank with none (no hard negatives)
GATHER_SHARDS = [(2, 5), (3, 0)]
GATHER_DIM = 3


def _shard(rows: int, rank: int) -> torch.Tensor:
    """A distinct, exactly representable tensor per rank."""
    return torch.arange(rows * GATHER_DIM, dtype=torch.float32).reshape(rows, GATHER_DIM) + 100 * rank


def _upstream(rows: int, rank: int) -> torch.Tensor:
    """The gradient each rank sends back into the gathered tensor (a different one per rank)."""
    return (rank + 1) * torch.arange(rows * GATHER_DIM, dtype=torch.float32).reshape(rows, GATHER_DIM)


def _gather_results(rank: int) -> list:
    """Per case of ``GATHER_SHARDS``: the gathered tensor and the gradient of this rank's shard."""
    results = []
    for sizes in GATHER_SHARDS:
        x = _shard(sizes[rank], rank).requires_grad_(True)
        gathered = gather(x)
        (gathered * _upstream(sum(sizes), rank)).sum().backward()
        results.append({"gathered": gathered.detach(), "grad": x.grad})
    return results


def _train(rank: int, loaded: DualEncoder, model_dir: str, out_dir: str) -> dict:
    """``train`` to the end under the process group; the steps and best score this rank saw."""
    from hybridlib.config import params_from_dict
    from hybridlib.models import tokenizer as tokenizer_module
    from hybridlib.train import train

    # the tokenizer came pickled with ``loaded`` (from this folder): parsing its 17 MB file again
    # in every rank would cost seconds
    tokenizer_module._TOKENIZERS[tokenizer_module.tokenizer_key(model_dir)] = loaded.tokenizer
    params = params_from_dict(dict(
        model=model_dir, train_dataset="mlqa-r", train_languages=["en", "de"], train_max_ids=40,
        validation_ids=8, batch_size=4, max_length=16, learning_rate=1e-3, max_steps=4, eval_every=2,
        device="cpu", precision="fp32"))
    result = train(params, "hybrid", 0, out_dir, progress=False)
    return {"steps": result.steps, "best": result.best_val_score}


def _worker(rank: int, loaded: DualEncoder, model_dir: str, store: str, out_dir: str) -> None:
    """Everything the tests need from two processes, in one spawn (starting them costs seconds)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=120))
    try:
        results = {"gather": _gather_results(rank)}
        for case, (*_, ddp) in CASES.items():
            encoder = _prepared(loaded)
            if ddp:
                encoder.model = torch.nn.parallel.DistributedDataParallel(encoder.model)
            results[case] = _step(encoder, case, rank, WORLD_SIZE)
            if ddp:  # DDP names parameters "module.<name>"
                results[case]["grads"] = {k.removeprefix("module."): v for k, v in results[case]["grads"].items()}
        results["train"] = _train(rank, loaded, model_dir, f"{out_dir}/run")
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # no rank tears the group down while the other still receives (gloo aborts)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(_tiny_encoder_template, tiny_model_dir, tmp_path_factory):
    """The per-rank results of ``_worker`` and the folder it trained in."""
    out = tmp_path_factory.mktemp("distributed")
    # the loaded encoder is pickled to the workers: faster than loading its tokenizer twice more
    mp.spawn(_worker, args=(_tiny_encoder_template, str(tiny_model_dir), str(out / "store"), str(out)),
             nprocs=WORLD_SIZE, join=True)
    results = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    return results, out / "run"


def test_the_ranks_gather_tensors_of_unequal_sizes(distributed_results):
    """``losses.gather`` concatenates the shards in rank order whatever their sizes (one may be
    empty), and back-propagates into each shard the sum of every rank's gradient of its rows."""
    for case, sizes in enumerate(GATHER_SHARDS):
        expected = torch.cat([_shard(rows, rank) for rank, rows in enumerate(sizes)])
        start = 0
        for rank, rows in enumerate(sizes):
            result = distributed_results[0][rank]["gather"][case]
            assert torch.equal(result["gathered"], expected)
            summed = sum(_upstream(sum(sizes), r) for r in range(len(sizes)))[start:start + rows]
            assert torch.equal(result["grad"], summed)  # small integers: exact in float32
            start += rows


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_loss_and_gradients_of_one(case, distributed_results, tiny_encoder):
    encoder = _prepared(tiny_encoder)
    terms = GradientTerms(encoder.model)
    reference = _step(encoder, case)
    terms.remove()
    ranks = [result[case] for result in distributed_results[0]]
    # the ranks held different halves of the same global batch
    assert ranks[0]["query_rows"] + ranks[1]["query_rows"] == reference["query_rows"]
    assert ranks[0]["query_rows"] != ranks[1]["query_rows"]
    for result in ranks:
        # the ranks sum the same terms as one process in two parts, on embeddings computed in
        # other chunk shapes: the bounds of tests/test_train.py (loss: a log-sum-exp of logits <= 1/t)
        loss_bound = 4 * terms.positions * U * (2 / TEMPERATURE + abs(reference["loss"]))
        assert abs(result["loss"] - reference["loss"]) <= loss_bound
        assert result["grads"].keys() == reference["grads"].keys() and len(reference["grads"]) > 10
        for name, grad in reference["grads"].items():
            assert_within(result["grads"][name], grad, gradient_bound(terms, name), name)


def test_two_ranks_train_to_the_end_and_rank_zero_writes_the_outputs(distributed_results):
    """train() under a process group: both ranks finish (each reads best.pt before rank 0 deletes
    the checkpoints), rank 0 writes the model, the logs and train_done.json."""
    ranks, out = distributed_results
    results = [result["train"] for result in ranks]
    assert results[0] == results[1] and results[0]["steps"] == 4  # the ranks agree on the validation score
    assert (out / "model" / "config.json").is_file() and (out / "train_done.json").is_file()
    assert len(pd.read_csv(out / "train_log.csv")) == 4
    assert not (out / "checkpoints").exists()
