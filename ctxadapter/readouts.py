"""The readouts of an adapter's causal layer: its effective weight for a context, the block
norms and means, the learned concept graph, and the regularisers on it.

``CausalReadouts`` is a mixin of ``CtxAdapter``: it reads ``self.causal`` (the
``ctxadapter.layers.CausalLayer``), ``self.concepts`` and ``self.context_mask``.
"""

from __future__ import annotations

import torch

from .contexts import OBSERVATIONAL, context_name, distinct_contexts, parse_context
from .layers import block_readout

__all__ = ["EDGE_THRESHOLD", "GRAPH_READOUTS", "GRAPH_SAMPLES", "CausalReadouts"]

GRAPH_READOUTS = ("rendered", "direct")
"""The readouts of ``CtxAdapter.concept_graph`` (the first is the default)."""
EDGE_THRESHOLD = 0.1
"""An entry of ``CtxAdapter.concept_graph`` above this is read as an edge: the squared
standardised total effect of the source on the target is above a tenth (``"rendered"``), or
the source contributes more than a tenth of the target's variance (``"direct"``)."""
GRAPH_SAMPLES = 1024
"""Prior draws ``readout="rendered"`` averages over (each rendered ``K + K^2`` times)."""


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
    def concept_graph(
        self,
        context=OBSERVATIONAL,
        readout: str = "rendered",
        num_samples: int = GRAPH_SAMPLES,
        seed: int = 0,
    ) -> torch.Tensor:
        """The learned concept graph ``(K, K)``: entry ``(i, j)`` is the effect of concept ``j``
        on concept ``i``; an off-diagonal entry above :data:`EDGE_THRESHOLD` is read as an edge
        ``j -> i``.

        - ``readout="rendered"`` (the default): the *total* effect of intervening on ``j``, as
          the latent head renders it, per unit of ``j``'s own move. Draw ``num_samples``
          noises ``z ~ N(0, I)`` and compute their concept values ``c`` under ``context`` and
          ``c'`` under ``context`` plus an intervention on ``j`` (the same noise: a
          counterfactual). How far the intervention moves concept ``i``, relative to how
          much ``i`` varies, is

              move[i, j] = mean_n ||head(c_n with block i from c'_n) - head(c_n)||^2
                         / mean_n ||head(c_n with block i from c_m) - head(c_n)||^2

          with ``m`` a random other draw; entry ``(i, j)`` is ``move[i, j] / move[j, j]``.
          If ``i`` moves as ``beta`` times ``j``'s move, that is ``beta^2 var(j) / var(i)``,
          the squared standardised total effect of ``j`` on ``i``: ``0`` when ``j`` does not
          move ``i``, ``1`` when ``i`` follows ``j`` one standard deviation for one, and the
          same whether the data's intervention on ``j`` moves it far or little. Entries are
          comparable across pairs, runs, heads and widths; the diagonal is ``1``. A column is
          ``0`` where the intervention moves its own concept not at all (or ``j`` is already
          in ``context``). Under another context, column ``j`` is what adding ``j`` to it does
          (with the causal layer's composition semantics). Costs ``K + K^2`` passes of the
          latent head over ``num_samples`` rows; ``seed`` fixes the draws, so the same adapter
          gives the same graph.
        - ``readout="direct"``: the share of ``i``'s variance that comes from ``j`` in the
          causal layer's effective weight ``W`` for ``context`` (``Bo`` under ``obs``),
          ``||W[i, j]||_F^2 / sum_l ||W[i, l]||_F^2``, as if the layer's inputs were independent
          with unit variance. They are not (a block varies in few directions), and the layer's
          coordinates are not those the head renders, so the entries understate and misrank the
          effects (``docs/concepts.md``); rows sum to 1 and the diagonal is the own share. No
          forward pass.
        """
        if readout not in GRAPH_READOUTS:
            raise ValueError(f"readout must be one of {GRAPH_READOUTS}, got {readout!r}")
        if readout == "rendered":
            if not isinstance(num_samples, int) or num_samples < 2:
                raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
            return self._rendered_graph(context, num_samples, seed)
        weight = self.causal_weight(context)
        squares = block_readout(weight, len(self.concepts), "norm").pow(2)
        return squares / squares.sum(dim=1, keepdim=True)

    def _rendered_graph(self, context, num_samples: int, seed: int) -> torch.Tensor:
        """``concept_graph(readout="rendered")`` (see there), in eval mode."""
        base = parse_context(context, self.concepts)
        generator = torch.Generator(device=self.latent_log_scale.device).manual_seed(seed)
        training = self.training
        self.eval()
        try:
            z = self.sample_noise(num_samples, generator=generator)
            values = self.concepts_from_noise(z, context_name(base))
            rendered = self.latent_head(values)
            width = values.shape[1] // len(self.concepts)

            def moved(i: int, other: torch.Tensor) -> torch.Tensor:
                """Mean squared change of the rendering when block ``i`` is taken from ``other``."""
                block = slice(i * width, (i + 1) * width)
                mixed = values.clone()
                mixed[:, block] = other[:, block]
                return (self.latent_head(mixed) - rendered).pow(2).sum(dim=1).mean()

            others = values[torch.randperm(num_samples, generator=generator, device=z.device)]
            spread = torch.stack([moved(i, others) for i in range(len(self.concepts))])
            graph = torch.zeros(len(self.concepts), len(self.concepts), device=z.device)
            for j, name in enumerate(self.concepts):
                if name in base:
                    continue
                intervened = self.concepts_from_noise(z, context_name((*base, name)))
                graph[:, j] = torch.stack([moved(i, intervened) for i in range(len(graph))])
        finally:
            self.train(training)
        # a block the head does not render (spread 0) has no visible effect, and an
        # intervention that moves nothing of its own concept no effect per unit of its move
        moves = torch.where(spread[:, None] > 0, graph / spread[:, None].clamp(min=1e-30), 0.0)
        own = moves.diagonal()
        return torch.where(own > 0, moves / own.clamp(min=1e-30), 0.0)

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
