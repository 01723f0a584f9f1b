"""Error bounds of fp32 arithmetic for the equivalence tests (training and distributed training).

A sum of N terms computed in any order is within ``(N - 1) * U * sum|terms|`` of the exact sum,
``U = 2^-24`` the unit roundoff of float32 (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2002, eq. 4.4), so two orders differ by at most twice that. The bounds here are
computed from the terms of each test's own sums, never tuned on one CPU.
"""
from functools import partial

import torch
import torch.nn.functional as F

U = 2.0 ** -24  # unit roundoff of float32



class GradientTerms:
    """The magnitude S of the terms of every parameter-gradient entry, from hooks in one forward + backward.

    BERT's parameters all belong to ``Linear``, ``LayerNorm`` and ``Embedding`` modules. Over the
    token positions j of every forward pass, a gradient entry is a sum of N terms (N = positions):
    Linear weight ``[a, b] = sum_j g_j[a] x_j[b]``, bias ``sum_j g_j[a]``; LayerNorm weight
    ``sum_j g_j * xhat_j``, bias ``sum_j g_j``; row v of an embedding table ``sum_{j: index_j = v} e_j``,
    with ``g_j`` the gradient at a module's output, ``x_j`` its input and ``e_j`` the gradient at
    the embeddings' LayerNorm input (the sum of the word, token-type and position embeddings).
    Each vector's coordinates come from reductions that mix all its coordinates (matrix products,
    LayerNorm's means), so a coordinate's rounding error scales with the vector's largest
    coordinate, not its own (one near 0 by cancellation keeps its neighbours' absolute error):
    a term's magnitude is taken as the product of its vectors' max-norms, e.g.
    ``S(weight) = sum_j |g_j|_max |x_j|_max``. ``positions`` is N.
    """

    def __init__(self, model: torch.nn.Module):
        self.sums, self.positions, self.tables = {}, 0, {}
        self.handles = [module.register_forward_hook(partial(self._forward, f"{name}."))
                        for name, module in model.named_modules()
                        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding))]

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def _add(self, name, value):
        self.sums[name] = self.sums.get(name, 0) + value.detach()

    def _forward(self, prefix, module, inputs, output):
        x = inputs[0].detach()
        if isinstance(module, torch.nn.Embedding):  # indices of this pass, used at the LayerNorm below
            self.tables[prefix] = (x, module.weight)
            self.positions += x.numel() if prefix.endswith("word_embeddings.") else 0
            return
        if isinstance(module, torch.nn.LayerNorm) and prefix.endswith("embeddings.LayerNorm.") and \
                inputs[0].requires_grad:
            inputs[0].register_hook(partial(self._embedding_terms, dict(self.tables)))
        if not output.requires_grad:
            return
        if isinstance(module, torch.nn.LayerNorm):
            x = F.layer_norm(x, module.normalized_shape, eps=module.eps)  # xhat: the weight's factor
        x_max = _max_norms(x)

        def backward_hook(g):
            g_max = _max_norms(g)
            self._add(prefix + "weight", (g_max * x_max).sum().expand_as(module.weight))
            if module.bias is not None:
                self._add(prefix + "bias", g_max.sum().expand_as(module.bias))

        output.register_hook(backward_hook)

    def _embedding_terms(self, tables, e):
        e_max = _max_norms(e)
        for prefix, (index, weight) in tables.items():
            if weight.requires_grad:
                rows = index.expand(e.shape[:2]).reshape(-1)
                self._add(prefix + "weight", torch.zeros(len(weight)).index_add_(0, rows, e_max)[:, None])


def _max_norms(vectors: torch.Tensor) -> torch.Tensor:
    """The largest |coordinate| of each vector (last dimension), flattened over positions."""
    return vectors.detach().abs().amax(dim=-1).reshape(-1)


def gradient_bound(terms: GradientTerms, name: str) -> torch.Tensor:
    """Largest difference of a gradient entry computed by two fp32 methods from the same terms.

    Each method sums the N terms of an entry in its own order (chunks, accumulation across
    chunks): within ``(N - 1) U S`` of the exact sum (S: ``GradientTerms``). The terms themselves
    come from forward and backward reductions of at most K <= N terms (hidden 32, feed-forward
    64, <= 32 tokens, <= 30 loss candidates) computed in other chunk shapes, adding at most
    ``K U S <= N U S`` per method. Two methods: ``|difference| <= 4 N U S``.
    """
    return 4 * terms.positions * U * terms.sums[name]


def assert_within(actual, expected, bound, name):
    excess = (actual - expected).abs() - bound
    assert (excess <= 0).all(), (f"{name}: |difference| exceeds the fp32 bound by {float(excess.max()):.3g} "
                                 f"(largest difference {float((actual - expected).abs().max()):.3g})")
