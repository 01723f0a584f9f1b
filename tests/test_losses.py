"""The contrastive loss against a hand computation (plain Python floats) on tiny examples."""
import datetime
import math
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from hybridlib.losses import batch_loss, contrastive_loss, false_negative_mask, info_nce, parallel_query_loss


def unit(*angles):
    """2-d unit vectors at the given angles (radians)."""
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)


def hand_info_nce(anchors, candidates, temperature, left_out=frozenset()):
    """-mean_i log softmax_j(cos(a_i, c_j) / t)[i], with explicit loops; the (i, j) in
    ``left_out`` are not in anchor i's denominator."""
    anchors, candidates = anchors.tolist(), candidates.tolist()
    total = 0.0
    for i, a in enumerate(anchors):
        scores = [sum(x * y for x, y in zip(a, c)) / temperature for j, c in enumerate(candidates)
                  if (i, j) not in left_out or j == i]
        own = sum(x * y for x, y in zip(a, candidates[i])) / temperature
        total += -(own - math.log(sum(math.exp(s) for s in scores)))
    return total / len(anchors)


Q = unit(0.0, 1.0, 2.0)
P = unit(0.3, 1.1, 2.6)
N = unit(0.2, 1.9)  # two hard negatives (e.g. one each for the first two pairs)


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0])
def test_in_batch_negatives_only(temperature):
    expected = hand_info_nce(Q, P, temperature)
    assert contrastive_loss(Q, P, temperature=temperature).item() == pytest.approx(expected, rel=1e-9)


def test_two_numbers_worked_out_by_hand():
    # q = (1, 0); p1 = (1, 0), p2 = (0, 1); t = 1: -log(e / (e + 1))
    q, p = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert contrastive_loss(q, p, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_hard_negatives_are_extra_candidates_of_every_query(temperature):
    expected = hand_info_nce(Q, torch.cat([P, N]), temperature)
    assert contrastive_loss(Q, P, N, temperature=temperature).item() == pytest.approx(expected, rel=1e-9)
    assert contrastive_loss(Q, P, N, temperature) > contrastive_loss(Q, P, temperature=temperature)


def test_symmetric_adds_the_passage_to_query_term():
    t = 0.1
    expected = (hand_info_nce(Q, torch.cat([P, N]), t) + hand_info_nce(P, Q, t)) / 2
    assert contrastive_loss(Q, P, N, t, symmetric=True).item() == pytest.approx(expected, rel=1e-9)


def test_default_temperature_matches_sentence_transformers_scale_20():
    scores = Q @ torch.cat([P, N]).T * 20.0  # MultipleNegativesRankingLoss: cross_entropy(scale * cos)
    expected = F.cross_entropy(scores, torch.arange(3)).item()
    assert contrastive_loss(Q, P, N).item() == pytest.approx(expected, rel=1e-9)


def test_no_hard_negatives_is_the_same_as_an_empty_tensor():
    empty = torch.zeros((0, 2), dtype=torch.float64)
    assert contrastive_loss(Q, P, empty).item() == contrastive_loss(Q, P).item()


def test_parallel_query_term_is_weighted_in_batch_info_nce_between_translations():
    q_translations = unit(0.1, 0.9)  # translations of queries 0 and 2
    mask = torch.tensor([True, False, True])
    weight, t = 0.5, 0.2
    expected = hand_info_nce(Q, torch.cat([P, N]), t) + weight * hand_info_nce(Q[mask], q_translations, t)
    got = batch_loss(Q, P, N, q_parallel=q_translations, parallel_mask=mask, temperature=t,
                     parallel_query_weight=weight)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert parallel_query_loss(Q[mask], q_translations, t).item() == pytest.approx(
        hand_info_nce(Q[mask], q_translations, t), rel=1e-9)


def test_batch_loss_without_a_process_group_is_the_pure_loss():
    assert batch_loss(Q, P, N, temperature=0.05, symmetric=True).item() == \
        contrastive_loss(Q, P, N, 0.05, symmetric=True).item()


def test_gradients_flow_to_queries_passages_and_negatives():
    q, p, n = (x.clone().requires_grad_(True) for x in (Q, P, N))
    contrastive_loss(q, p, n, 0.05, symmetric=True).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (q, p, n))


def test_mismatched_queries_and_positives_are_an_error():
    with pytest.raises(ValueError, match="3 queries but 2 positives"):
        contrastive_loss(Q, P[:2])


def test_info_nce_is_low_when_each_anchor_matches_its_own_candidate():
    assert info_nce(Q, Q, 0.05).item() < 1e-3 < info_nce(Q, P.flip(0), 0.05).item()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_equals_sentence_transformers_ranking_losses(seed, with_negatives):
    """Against sentence-transformers' MultipleNegativesRankingLoss (scale 20; symmetric: both
    directions, one softmax per direction, averaged)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    generator = torch.Generator().manual_seed(seed)
    q, p, n = (F.normalize(torch.randn(8, 16, generator=generator), dim=-1) for _ in range(3))
    columns = [q, p, n] if with_negatives else [q, p]
    negatives = n if with_negatives else None
    theirs = MultipleNegativesRankingLoss(model=None, scale=20.0).compute_loss_from_embeddings(columns, None)
    assert contrastive_loss(q, p, negatives, 0.05).item() == pytest.approx(theirs.item(), rel=1e-5)
    symmetric = MultipleNegativesRankingLoss(model=None, scale=20.0, directions=("query_to_doc", "doc_to_query"),
                                             partition_mode="per_direction")
    theirs = symmetric.compute_loss_from_embeddings(columns, None)
    assert contrastive_loss(q, p, negatives, 0.05, symmetric=True).item() == pytest.approx(theirs.item(), rel=1e-5)


# ----------------------------------------------------------------------------- false negatives
# Four queries whose positives share answer sentences (ids 0 and 2 have the same answer "A"),
# three hard negatives of which two copy an in-batch positive ("B" of query 1, "A" of 0 and 2).
POSITIVES = ["A", "B", "A", "C"]
NEGATIVES = ["B", "D", "A"]
# candidates: A B A C | B D A (positives, then hard negatives: the loss's order)
EXPECTED_LEFT_OUT = {(0, 2), (0, 6), (1, 4), (2, 0), (2, 6)}
# float64 reference: scores are at most 1/t = 20 in size and a query has <= 7 candidates, so
# log-sum-exp in float64 errs by about 7 * 2^-53 * 20 ~ 2e-14 per query; 1e-12 leaves room.
FLOAT64_ATOL = 1e-12


def shared_answer_batch(seed=0, dim=8):
    """Unit vectors for the queries, positives and hard negatives of the fixture (float64).
    Copies of one text get different vectors (as under dropout), so masking shows in the numbers."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
                 for n in (len(POSITIVES), len(POSITIVES), len(NEGATIVES)))


def test_false_negative_mask_marks_copies_of_each_querys_positive():
    mask = false_negative_mask(POSITIVES, POSITIVES + NEGATIVES)
    assert mask.dtype == torch.bool and mask.shape == (4, 7)
    assert {tuple(ij) for ij in mask.nonzero().tolist()} == EXPECTED_LEFT_OUT


def test_false_negative_mask_of_distinct_texts_is_empty():
    assert not false_negative_mask(["a", "b", "c"], ["a", "b", "c", "d", "e"]).any()
    assert not false_negative_mask(["a", "b"], ["a", "b"]).any()


def test_false_negative_mask_needs_the_positives_first():
    with pytest.raises(ValueError, match="must start with the positives"):
        false_negative_mask(POSITIVES, NEGATIVES + POSITIVES)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
@pytest.mark.parametrize("symmetric", [False, True])
def test_masked_loss_leaves_the_copies_out_of_the_denominator(temperature, symmetric):
    q, p, n = shared_answer_batch()
    mask = false_negative_mask(POSITIVES, POSITIVES + NEGATIVES)
    expected = hand_info_nce(q, torch.cat([p, n]), temperature, EXPECTED_LEFT_OUT)
    if symmetric:  # passage i does not contrast with query j when query j's positive has its text
        reverse = {(i, j) for i in range(4) for j in range(4) if i != j and POSITIVES[i] == POSITIVES[j]}
        expected = (expected + hand_info_nce(p, q, temperature, reverse)) / 2
    got = contrastive_loss(q, p, n, temperature, symmetric, false_negatives=mask).item()
    assert got == pytest.approx(expected, abs=FLOAT64_ATOL)
    assert got < contrastive_loss(q, p, n, temperature, symmetric).item()  # fewer negatives, lower loss


def test_masked_gradients_are_those_of_the_loss_without_the_copies():
    """Reference: each query's cross-entropy over only its kept candidates (autograd, float64)."""
    q, p, n = (x.clone().requires_grad_(True) for x in shared_answer_batch(seed=1))
    mask = false_negative_mask(POSITIVES, POSITIVES + NEGATIVES)
    contrastive_loss(q, p, n, 0.05, false_negatives=mask).backward()
    got = [x.grad for x in (q, p, n)]
    q2, p2, n2 = (x.detach().clone().requires_grad_(True) for x in (q, p, n))
    candidates = torch.cat([p2, n2])
    terms = []
    for i in range(len(q2)):
        keep = [j for j in range(len(candidates)) if (i, j) not in EXPECTED_LEFT_OUT]
        scores = q2[i] @ candidates[keep].T / 0.05
        terms.append(-torch.log_softmax(scores, dim=0)[keep.index(i)])
    torch.stack(terms).mean().backward()
    # gradients are softmax weights times vectors of norm 1, scaled by 1/t = 20: the same bound
    for mine, reference in zip(got, (q2.grad, p2.grad, n2.grad)):
        assert torch.isfinite(mine).all()
        torch.testing.assert_close(mine, reference, rtol=0, atol=FLOAT64_ATOL)


def test_a_mask_without_duplicates_changes_nothing():
    generator = torch.Generator().manual_seed(2)
    q, p, n = (F.normalize(torch.randn(6, 16, generator=generator), dim=-1) for _ in range(3))
    texts = [f"passage {k}" for k in range(12)]
    mask = false_negative_mask(texts[:6], texts)
    for symmetric in (False, True):  # masked_fill with no True entry: bit for bit the same loss
        assert torch.equal(contrastive_loss(q, p, n, 0.05, symmetric, false_negatives=mask),
                           contrastive_loss(q, p, n, 0.05, symmetric))


def test_masked_loss_of_bf16_embeddings_is_computed_in_fp32():
    """bf16 embeddings (autocast training): the scores are upcast, the mask's -inf stays exact."""
    q, p, n = (x.bfloat16() for x in shared_answer_batch(seed=3))
    mask = false_negative_mask(POSITIVES, POSITIVES + NEGATIVES)
    got = contrastive_loss(q, p, n, 0.05, symmetric=True, false_negatives=mask)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    reference = contrastive_loss(q.double(), p.double(), n.double(), 0.05, symmetric=True, false_negatives=mask)
    # fp32 on the same (bf16-rounded) inputs: each score (d = 8 products of size <= 1, over t) errs by
    # <= 8 * 2^-24 / t; log-sum-exp over <= 7 scores of size <= 1/t by <= 7 * 2^-24 / t: (8 + 7) * 2^-24 * 20
    assert got.item() == pytest.approx(reference.item(), abs=(8 + 7) * 2**-24 * 20)


@pytest.mark.parametrize("mask, message", [
    (torch.zeros(4, 6, dtype=torch.bool), "shape (4, 6)"),
    (torch.zeros(4, 7), "must be boolean"),
    (torch.eye(4, 7, dtype=torch.bool), "own positive"),
])
def test_bad_masks_are_an_error(mask, message):
    q, p, n = shared_answer_batch()
    with pytest.raises(ValueError, match=re.escape(message)):
        contrastive_loss(q, p, n, false_negatives=mask)


def test_batch_loss_passes_the_mask_on():
    q, p, n = shared_answer_batch()
    mask = false_negative_mask(POSITIVES, POSITIVES + NEGATIVES)
    assert batch_loss(q, p, n, temperature=0.05, symmetric=True, false_negatives=mask).item() == \
        contrastive_loss(q, p, n, 0.05, True, mask).item()


# ----------------------------------------------------------------------------- distributed, with the mask
# Two ranks hold contiguous halves of the fixture: rank 0 pairs 0-1 with hard negatives B, D;
# rank 1 pairs 2-3 with hard negative A (unequal sizes: the padded gather). Gathered in rank
# order, the candidates are the global order A B A C | B D A, so the global mask applies.
SHARDS = {0: (slice(0, 2), slice(0, 2)), 1: (slice(2, 4), slice(2, 3))}


def _masked_loss_worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        pairs, negatives = SHARDS[rank]
        q, p, n = shared_answer_batch()
        q, p, n = (x.clone().requires_grad_(True) for x in (q[pairs], p[pairs], n[negatives]))
        mask = false_negative_mask(POSITIVES, POSITIVES + NEGATIVES)  # from the global batch's texts
        loss = batch_loss(q, p, n, temperature=0.05, symmetric=True, false_negatives=mask)
        loss.backward()
        torch.save({"loss": loss.item(), "grads": [x.grad for x in (q, p, n)]}, f"{out_dir}/rank{rank}.pt")
        # a rank that tears the group down while the other still receives the last message of the
        # backward's collective aborts it ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_masked_loss_and_gradients_of_one_process(tmp_path):
    mp.spawn(_masked_loss_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    q, p, n = (x.clone().requires_grad_(True) for x in shared_answer_batch())
    mask = false_negative_mask(POSITIVES, POSITIVES + NEGATIVES)
    reference = contrastive_loss(q, p, n, 0.05, symmetric=True, false_negatives=mask)
    reference.backward()
    for rank, (pairs, negatives) in SHARDS.items():
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # the same float64 arithmetic on the same gathered values: equal up to rounding
        assert result["loss"] == pytest.approx(reference.item(), abs=FLOAT64_ATOL)
        # the gather's backward sums the two ranks' identical gradients: 2x the shard's share
        for mine, full in zip(result["grads"], (q.grad[pairs], p.grad[pairs], n.grad[negatives])):
            torch.testing.assert_close(mine / 2, full, rtol=0, atol=FLOAT64_ATOL)
