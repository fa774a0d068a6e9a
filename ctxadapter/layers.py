"""The three context layers of the context module (the paper's semantics; ``docs/concepts.md``).

Vectors of length ``K*w`` are ``K`` contiguous blocks of width ``w``, block ``k`` belonging to
concept ``k``. A batch's contexts arrive as a boolean mask ``(N, K)`` (see
``ctxadapter.contexts``). Each layer can return its effective weight for any set of contexts
(``effective_weight``), and applies it to a batch whose rows may each have their own context.

Mixed-context batches: the effective weight of a context is a fixed linear combination of a few
masked base matrices, selected per output row by the context mask. So a batch with any number of
distinct contexts is computed with a handful of dense matrix products over the whole batch and
elementwise row masks, never one product per context or per sample. ``effective_weight`` gives
the same result one context at a time; the tests check that both agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def block_mask(num_blocks: int, rows: int, cols: int) -> torch.Tensor:
    """``Bmask(rows, cols) = I_K kron ones(rows, cols)``: ``(K*rows, K*cols)``, ones on the
    diagonal blocks and zeros elsewhere."""
    return torch.kron(torch.eye(num_blocks), torch.ones(rows, cols))


def expand_blocks(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Repeat each concept's entry over its block: ``(N, K)`` -> ``(N, K*width)``."""
    return mask.repeat_interleave(width, dim=-1)


def block_readout(weight: torch.Tensor, num_blocks: int, reduce: str) -> torch.Tensor:
    """Reduce each block of a block-structured weight ``(..., K*a, K*b)`` to a scalar.

    Args:
        weight: ``(..., K*a, K*b)`` matrices.
        num_blocks: ``K``.
        reduce: ``"norm"`` for the block Frobenius norms, ``"mean"`` for the block means.

    Returns:
        ``(..., K, K)``; entry ``(i, j)`` summarises block ``(i, j)`` (output block ``i``, input
        block ``j``: the effect of concept ``j`` on concept ``i``).
    """
    *batch, rows, cols = weight.shape
    blocks = weight.reshape(*batch, num_blocks, rows // num_blocks, num_blocks, cols // num_blocks)
    if reduce == "norm":
        # zero (sub)gradient at all-zero blocks (cut by an intervention, or clamped to 0), where
        # the plain sqrt would give sqrt'(0) * 0 = NaN
        squares = blocks.pow(2).sum(dim=(-3, -1))
        nonzero = squares > 0
        return torch.where(nonzero, squares, torch.ones_like(squares)).sqrt() * nonzero
    if reduce == "mean":
        return blocks.mean(dim=(-3, -1))
    raise ValueError(f"reduce must be 'norm' or 'mean', got {reduce!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` and ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _uniform_(tensor: torch.Tensor, bound: float) -> torch.Tensor:
    return nn.init.uniform_(tensor, -bound, bound)


EXOGENOUS_BIASES = ("shared", "interventional")
OBSERVATIONAL_MIXINGS = ("dense", "block")
COMPOSITIONS = ("reference", "strict")
CAUSAL_EFFECTS = ("separate", "shared")


class ExogenousLayer(nn.Module):
    """Layer 1: maps the noise ``z`` ``(N, K*w)`` to ``GELU(W_S z + a)`` ``(N, K*w)``.

    ``W_S`` is the dense ``weight_obs`` in the observational context (or its block-diagonal part
    with ``observational_mixing="block"``). Under an intervention on ``S`` it is block-diagonal:
    block ``(k, k)`` comes from ``weight_ivn`` if ``k`` is in ``S``, else from ``weight_obs``.

    The bias ``a`` is shared by all contexts (the reference). With ``exogenous_bias=
    "interventional"`` (a ctxadapter variant) block ``k`` of the bias comes from ``bias_ivn``
    when ``k`` is in ``S``: an intervention can then shift its concept's noise by a constant,
    which a counterfactual edit keeps (with a shared bias, ``z = 0`` gives the same output in
    every context, so an edit of an image whose noise is near 0 changes nothing).
    """

    def __init__(
        self,
        num_concepts: int,
        width: int,
        observational_mixing: str = "dense",
        exogenous_bias: str = "shared",
    ):
        super().__init__()
        _check_choice("observational_mixing", observational_mixing, OBSERVATIONAL_MIXINGS)
        _check_choice("exogenous_bias", exogenous_bias, EXOGENOUS_BIASES)
        self.num_concepts, self.width = num_concepts, width
        self.observational_mixing = observational_mixing
        size = num_concepts * width
        bound = 1 / math.sqrt(width)
        self.weight_obs = nn.Parameter(_uniform_(torch.empty(size, size), bound))
        self.weight_ivn = nn.Parameter(_uniform_(torch.empty(size, size), bound))
        self.bias = nn.Parameter(_uniform_(torch.empty(size), bound))
        self.bias_ivn = (
            nn.Parameter(self.bias.detach().clone()) if exogenous_bias == "interventional" else None
        )
        self.register_buffer("mask", block_mask(num_concepts, width, width), persistent=False)

    def effective_bias(self, contexts: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` context masks -> ``(N, K*w)`` biases (``bias`` for every row unless
        ``exogenous_bias="interventional"``)."""
        if self.bias_ivn is None:
            return self.bias.expand(contexts.shape[0], -1)
        return torch.where(expand_blocks(contexts, self.width), self.bias_ivn, self.bias)

    def _observational_weight(self) -> torch.Tensor:
        if self.observational_mixing == "block":
            return self.weight_obs * self.mask
        return self.weight_obs

    def effective_weight(self, contexts: torch.Tensor) -> torch.Tensor:
        """``(U, K)`` context masks -> ``(U, K*w, K*w)`` effective weights."""
        rows = expand_blocks(contexts, self.width).unsqueeze(-1)
        blockwise = self.mask * torch.where(rows, self.weight_ivn, self.weight_obs)
        observational = ~contexts.any(dim=-1)
        return torch.where(observational[:, None, None], self._observational_weight(), blockwise)

    def forward(self, z: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """``z`` ``(N, K*w)``, ``contexts`` ``(N, K)`` bool -> ``(N, K*w)``.

        Rows under an intervention only need the diagonal blocks: one batched product over the
        ``K`` blocks gives both weights' blocks (``2 K w^2`` multiply-adds per row, not
        ``2 (K w)^2``); the dense observational product runs on the observational rows only.
        """
        observational = ~contexts.any(dim=-1)
        dense = self.observational_mixing == "dense"
        if dense and bool(observational.all()):  # every row observational: the shared bias
            return F.gelu(F.linear(z, self.weight_obs, self.bias))
        k, w, n = self.num_concepts, self.width, z.shape[0]
        blocks = torch.cat(  # (K, 2w, w): each concept's obs block above its ivn block
            [
                p.view(k, w, k, w).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
                for p in (self.weight_obs, self.weight_ivn)
            ],
            dim=1,
        )
        products = torch.bmm(z.view(n, k, w).transpose(0, 1), blocks.transpose(1, 2))
        out = torch.where(contexts.T.unsqueeze(-1), products[..., w:], products[..., :w])
        out = out.transpose(0, 1).reshape(n, k * w)
        if dense and bool(observational.any()):
            rows = observational.nonzero().squeeze(1)
            out = out.index_put((rows,), F.linear(z[rows], self.weight_obs))
        return F.gelu(out + self.effective_bias(contexts))


def expressive_widths(in_width: int, out_width: int, depth: int) -> list[int]:
    """``linspace(in_width, out_width, depth)`` truncated to integers.

    >>> expressive_widths(32, 8, 4)
    [32, 24, 16, 8]
    >>> expressive_widths(16, 32, 4)
    [16, 21, 26, 32]
    """
    if depth < 1:
        raise ValueError(f"expressive_depth must be >= 1, got {depth}")
    if depth == 1:
        if in_width != out_width:
            raise ValueError(
                f"expressive_depth=1 means no expressive layer, so exogenous_width ({in_width}) "
                f"must equal concept_width ({out_width})"
            )
        return [in_width]
    step = (out_width - in_width) / (depth - 1)
    return [int(in_width + i * step) for i in range(depth - 1)] + [out_width]


class BlockLinear(nn.Module):
    """A block-diagonal linear map ``(N, K*a)`` -> ``(N, K*b)``: a dense weight times
    ``Bmask(b, a)``, so concept ``k``'s output block only reads its own input block."""

    def __init__(self, num_concepts: int, in_width: int, out_width: int):
        super().__init__()
        bound = 1 / math.sqrt(in_width)
        self.weight = nn.Parameter(
            _uniform_(torch.empty(num_concepts * out_width, num_concepts * in_width), bound)
        )
        self.bias = nn.Parameter(_uniform_(torch.empty(num_concepts * out_width), bound))
        self.register_buffer(
            "mask", block_mask(num_concepts, out_width, in_width), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class ExpressiveLayers(nn.Sequential):
    """Layer 2: per-concept MLPs ``(N, K*w_in)`` -> ``(N, K*w_out)``, context-independent.

    For each consecutive pair of widths ``(a, b)`` from ``expressive_widths``: a
    ``BlockLinear``, ``BatchNorm1d(K*b)`` and GELU. Depth 1 is the identity.
    """

    def __init__(self, num_concepts: int, in_width: int, out_width: int, depth: int):
        widths = expressive_widths(in_width, out_width, depth)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=False):
            layers += [BlockLinear(num_concepts, a, b), nn.BatchNorm1d(num_concepts * b), nn.GELU()]
        super().__init__(*layers)
        self.widths = widths


class CausalLayer(nn.Module):
    """Layer 3: a reduced-form linear SCM, ``c = W_S eps + b``, ``(N, K*w)`` -> ``(N, K*w)``.

    ``Bo = I + weight_obs * (1 - M)`` and ``Bi = I + weight_ivn * (1 - M)`` with ``M`` the block
    mask, so diagonal blocks are always the identity. Block ``(i, j)`` of ``W_S`` is ``Bi[i, j]``
    if ``j`` is in ``S``; ``Bo[i, j]`` if neither ``i`` nor ``j`` is in ``S``; else ``0``.
    With ``composition="strict"`` (a ctxadapter variant, ``AdapterConfig``'s default) edges
    among jointly intervened concepts are cut too: block ``(i, j)`` with both in ``S`` and
    ``i != j`` is ``0``, as a joint intervention in an SCM cuts every effect into its concepts.

    ``effects="separate"`` is the reference: the effects of an intervened concept on the others
    have their own weight ``weight_ivn``. With ``effects="shared"`` (a ctxadapter variant) there
    is no ``weight_ivn`` and ``Bi = Bo``: an intervention on ``S`` cuts the effects *on* the
    concepts of ``S`` and keeps their effects on the others, as an intervention in an SCM
    changes the intervened concept's own mechanism and not its children's. The effect of
    concept ``j`` on concept ``i`` is then one weight, learned from every context, and a
    counterfactual under ``do(j)`` moves concept ``i`` by ``Bo[i, j]`` times the move of
    ``eps_j``.
    """

    def __init__(
        self,
        num_concepts: int,
        width: int,
        composition: str = "reference",
        effects: str = "separate",
    ):
        super().__init__()
        _check_choice("composition", composition, COMPOSITIONS)
        _check_choice("effects", effects, CAUSAL_EFFECTS)
        self.num_concepts, self.width = num_concepts, width
        self.composition, self.effects = composition, effects
        size = num_concepts * width
        bound = 1.0 if num_concepts == 1 else 1 / math.sqrt((num_concepts - 1) * width)
        self.weight_obs = nn.Parameter(_uniform_(torch.empty(size, size), bound))
        if effects == "separate":
            self.weight_ivn = nn.Parameter(_uniform_(torch.empty(size, size), bound))
        self.bias = nn.Parameter(_uniform_(torch.empty(size), bound))
        self.register_buffer(
            "off_diagonal", 1 - block_mask(num_concepts, width, width), persistent=False
        )
        self.register_buffer("identity", torch.eye(size), persistent=False)

    def _ivn_weight(self) -> torch.Tensor:
        """The learnable effects of intervened sources: ``weight_ivn``, or ``weight_obs`` when
        shared."""
        return self.weight_obs if self.effects == "shared" else self.weight_ivn

    def observational_matrix(self) -> torch.Tensor:
        """``Bo`` ``(K*w, K*w)``."""
        return self.identity + self.weight_obs * self.off_diagonal

    def interventional_matrix(self) -> torch.Tensor:
        """``Bi`` ``(K*w, K*w)`` (``Bo`` with ``effects="shared"``)."""
        return self.identity + self._ivn_weight() * self.off_diagonal

    def effective_weight(self, contexts: torch.Tensor) -> torch.Tensor:
        """``(U, K)`` context masks -> ``(U, K*w, K*w)`` effective weights, block by block."""
        s = expand_blocks(contexts, self.width).to(self.weight_obs.dtype)
        source_in, target_in = s[:, None, :], s[:, :, None]
        ivn = self.interventional_matrix() * source_in
        if self.composition == "strict":
            ivn = ivn - self._ivn_weight() * self.off_diagonal * source_in * target_in
        obs = self.observational_matrix() * (1 - source_in) * (1 - target_in)
        return ivn + obs

    def forward(self, eps: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """``eps`` ``(N, K*w)``, ``contexts`` ``(N, K)`` bool -> ``(N, K*w)``.

        Row by row this is ``W_S eps + b``, computed as
        ``Bi (s*eps) + (1-s) * Bo ((1-s)*eps) + b`` with ``s`` the sample's expanded mask.
        """
        if not bool(contexts.any()):
            return F.linear(eps, self.observational_matrix(), self.bias)
        s = expand_blocks(contexts, self.width).to(eps.dtype)
        kept = 1 - s
        intervened = F.linear(s * eps, self.interventional_matrix())
        if self.composition == "strict":
            intervened = intervened - s * F.linear(s * eps, self._ivn_weight() * self.off_diagonal)
        return intervened + kept * F.linear(kept * eps, self.observational_matrix()) + self.bias

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the learnable off-diagonal entries into the box ``[0, 1]``.

        The whole parameters are clamped: their diagonal blocks are never used (the effective
        diagonal blocks are the identity), so this is the same as clamping the off-diagonal ones.
        """
        self.weight_obs.clamp_(0.0, 1.0)
        if self.effects == "separate":
            self.weight_ivn.clamp_(0.0, 1.0)
