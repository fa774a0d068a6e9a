"""The readouts of an adapter's causal layer: its effective weight for a context, the block
norms and means, the learned concept graph, and the regularisers on it.

``CausalReadouts`` is a mixin of ``CtxAdapter``: it reads ``self.causal`` (the
``ctxadapter.layers.CausalLayer``), ``self.concepts`` and ``self.context_mask``.
"""

from __future__ import annotations

import torch

from .contexts import OBSERVATIONAL, distinct_contexts
from .layers import block_readout

__all__ = ["EDGE_THRESHOLD", "GRAPH_READOUTS", "CausalReadouts"]

GRAPH_READOUTS = ("direct", "total")
"""The readouts of ``CtxAdapter.concept_graph``."""
EDGE_THRESHOLD = 0.1
"""An entry of ``CtxAdapter.concept_graph`` above this is read as an edge: the source
contributes more than a tenth of the target concept's variance."""


class CausalReadouts:
    """What can be read from the causal layer of an adapter (see the module docstring)."""

    @torch.no_grad()
    def causal_weight(self, context=OBSERVATIONAL) -> torch.Tensor:
        """The causal layer's effective weight for one context: ``(K*w_out, K*w_out)``."""
        mask = self.context_mask(context, 1)
        return self.causal.effective_weight(mask)[0]

    @torch.no_grad()
    def grouped_weight(self, context=OBSERVATIONAL) -> torch.Tensor:
        """``(K, K)`` Frobenius norms of the blocks of ``causal_weight``."""
        return block_readout(self.causal_weight(context), len(self.concepts), "norm")

    @torch.no_grad()
    def block_means(self, context=OBSERVATIONAL) -> torch.Tensor:
        """``(K, K)`` means of the blocks of ``causal_weight``: entry ``(i, j)`` is the mean of
        block ``(i, j)`` (diagonal entries are ``1/w_out``, the mean of an identity block)."""
        return block_readout(self.causal_weight(context), len(self.concepts), "mean")

    @torch.no_grad()
    def concept_graph(self, context=OBSERVATIONAL, readout: str = "direct") -> torch.Tensor:
        """The learned concept graph ``(K, K)``: entry ``(i, j)`` is the share of concept
        ``i``'s variance that comes from concept ``j``.

        With ``W`` the matrix read, ``graph[i, j] = ||W[i, j]||_F^2 / sum_l ||W[i, l]||_F^2``:
        the fraction of the variance of the causal layer's output block ``i`` contributed by
        input block ``j`` if the inputs were independent with unit variance. The expressive
        layers end in a BatchNorm, which gives each input dimension unit variance, but the
        dimensions of a block are correlated, so on trained adapters the entries understate
        the effects (``docs/concepts.md``). Entries are in ``[0, 1]``, each row sums to 1,
        and the diagonal is the concept's own share; an entry above :data:`EDGE_THRESHOLD`
        is read as an edge ``j -> i``. Comparable across pairs, runs and widths as a
        ranking.

        Args:
            context: the context whose effective weight ``readout="direct"`` reads
                (observational by default: every learned effect; an intervention cuts the
                effects into the intervened concepts).
            readout: ``"direct"``, the effective weight of ``context`` (in the observational
                context, ``Bo``: the reduced-form effects among concepts); or ``"total"``,
                the interventional weights as an intervention on ``j`` uses them for ``j``'s
                effects on every other concept (block ``(i, j)`` of ``Bi``, for every ``j``),
                read in the observational context only. With ``causal_effects="shared"``
                (the default) ``Bi`` is ``Bo`` and both readouts are the same matrix.
        """
        if readout not in GRAPH_READOUTS:
            raise ValueError(f"readout must be one of {GRAPH_READOUTS}, got {readout!r}")
        if readout == "direct":
            weight = self.causal_weight(context)
        else:
            if self.context_mask(context, 1).any():
                raise ValueError(
                    f"readout='total' reads every concept's interventional effects at once; "
                    f"pass no context (got {context!r})"
                )
            weight = self.causal.interventional_matrix()
        squares = block_readout(weight, len(self.concepts), "norm").pow(2)
        return squares / squares.sum(dim=1, keepdim=True)

    def causal_penalty(
        self, contexts: torch.Tensor, group_sparsity: float = 0.0, l2: float = 0.0
    ) -> torch.Tensor:
        """Regularisers on the effective causal weight, averaged over the batch's rows.

        ``group_sparsity * sum_{i != j} ||W[i, j]||_F + l2 * ||W||_F`` for each row's context
        ``W``. The diagonal blocks are the fixed identity, so leaving them out of the group sum
        only drops a constant. ``contexts`` is a ``(N, K)`` mask. Returns a scalar.
        """
        zero = self.causal.bias.new_zeros(())
        if group_sparsity == 0 and l2 == 0:
            return zero
        distinct, _, counts = distinct_contexts(contexts)
        weights = self.causal.effective_weight(distinct)
        k = len(self.concepts)
        norms = block_readout(weights, k, "norm")
        off_diagonal = 1 - torch.eye(k, device=norms.device, dtype=norms.dtype)
        per_context = group_sparsity * (norms * off_diagonal).sum(dim=(-2, -1))
        per_context = per_context + l2 * weights.flatten(1).norm(dim=1)
        return (per_context * counts).sum() / counts.sum()
