"""The contrastive loss against a hand computation (plain Python floats) on tiny examples."""
import math

import pytest
import torch
import torch.nn.functional as F

from hybridlib.losses import batch_loss, contrastive_loss, info_nce, parallel_query_loss


def unit(*angles):
    """2-d unit vectors at the given angles (radians)."""
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)


def hand_info_nce(anchors, candidates, temperature):
    """-mean_i log softmax_j(cos(a_i, c_j) / t)[i], with explicit loops."""
    anchors, candidates = anchors.tolist(), candidates.tolist()
    total = 0.0
    for i, a in enumerate(anchors):
        scores = [sum(x * y for x, y in zip(a, c)) / temperature for c in candidates]
        total += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
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
