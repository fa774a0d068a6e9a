"""The adapter's two heads: the *posterior head* maps a model-space latent ``(C, h, w)`` to the
mean and log-variance of the noise, the *latent head* maps the concept values back to a latent.
The context layers between them keep their exact semantics; the heads are ours to choose:

- ``"linear"``: one linear map each way (the paper's);
- ``"mlp"``: two hidden GELU layers of ``width`` each way;
- ``"conv"``: spatial heads for large latents. The posterior head cuts the latent into
  ``P x P`` patches with a strided convolution (``P`` the power of two that leaves a grid of at
  most ``CONV_GRID`` x ``CONV_GRID``), mixes neighbouring patches with a 3 x 3 convolution, then
  a GELU MLP; the latent head mirrors it (an MLP to the grid, a 3 x 3 convolution, a transposed
  convolution back to the patches, a 3 x 3 convolution that smooths the patch borders). Their
  weights and their work grow far slower than the latent's height and width;
- ``"additive"``: an MLP posterior head and a block-additive latent head: each concept's
  block of the concept values goes through its own small MLP, the blocks' features are
  summed and one shared linear map renders the sum, so what a block adds to the latent does
  not depend on the other blocks;
- ``"auto"``: ``"additive"`` for latents of fewer than ``AUTO_CONV_SIZE`` values, ``"conv"``
  from there.

Every head takes and returns flat vectors: ``(N, C*h*w)`` in, or out, so that all kinds share
the adapter's code and the linear and MLP heads keep the state-dict keys they always had.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEADS = ("linear", "mlp", "conv", "additive", "auto")
"""The kinds of head (``"auto"`` is resolved to one of the others by ``resolve_heads``)."""

AUTO_CONV_SIZE = 4096
"""``"auto"`` heads are spatial from this many latent values (SD's 4 x 32 x 32 at 256 px):
there they beat the MLP heads on photographs (docs/real-images.md)."""

CONV_CHANNELS = 32
"""Channels of ``"conv"`` heads on their grid of patches."""

CONV_GRID = 8
"""The largest side of the grid of patches of ``"conv"`` heads."""


def resolve_heads(kind: str, latent_shape: tuple[int, int, int]) -> str:
    """``kind``, with ``"auto"`` replaced by ``"additive"`` or ``"conv"`` for ``latent_shape``."""
    if kind not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "conv" if math.prod(latent_shape) >= AUTO_CONV_SIZE else "additive"


def _mlp(size_in: int, width: int, size_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(size_in, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, size_out),
    )


def patch_size(latent_shape: tuple[int, int, int]) -> int:
    """The side ``P`` of the patches of ``"conv"`` heads: the smallest power of two that leaves a
    grid of at most ``CONV_GRID`` patches each way and divides the latent's height and width."""
    _, height, width = latent_shape
    size = 1
    while (
        max(height, width) // size > CONV_GRID
        and height % (2 * size) == 0
        and width % (2 * size) == 0
    ):
        size *= 2
    return size


class ConvPosteriorHead(nn.Module):
    """Flat latents ``(N, C*h*w)`` -> ``(N, size_out)``: patches, a 3 x 3 convolution over
    them, an MLP (see the module docstring)."""

    def __init__(
        self, latent_shape: tuple[int, int, int], width: int, size_out: int, extra: int = 0
    ):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        self.size = math.prod(latent_shape)
        channels, height, width_px = latent_shape
        p = patch_size(self.latent_shape)
        self.convs = nn.Sequential(
            nn.Conv2d(channels, CONV_CHANNELS, p, stride=p),
            nn.GELU(),
            nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, 3, padding=1),
            nn.GELU(),
        )
        grid = CONV_CHANNELS * (height // p) * (width_px // p)
        self.mlp = _mlp(grid + extra, width, size_out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        spatial = features[:, : self.size].reshape(-1, *self.latent_shape)
        convolved = self.convs(spatial).flatten(1)
        return self.mlp(torch.cat([convolved, features[:, self.size :]], dim=1))


class ConvLatentHead(nn.Module):
    """Concept values ``(N, size_in)`` -> flat latents ``(N, C*h*w)``, mirroring
    ``ConvPosteriorHead``."""

    def __init__(self, size_in: int, width: int, latent_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width_px = latent_shape
        p = patch_size(tuple(latent_shape))
        self.grid = (CONV_CHANNELS, height // p, width_px // p)
        self.mlp = _mlp(size_in, width, math.prod(self.grid))
        self.convs = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(CONV_CHANNELS, channels, p, stride=p),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, concepts: torch.Tensor) -> torch.Tensor:
        return self.convs(self.mlp(concepts).view(-1, *self.grid)).flatten(1)


class AdditiveLatentHead(nn.Module):
    """Concept values ``(N, K*w)`` -> flat latents ``(N, D)``: ``W sum_k g_k(c_k) + bias``.

    Each block ``c_k`` goes through its own two-layer GELU MLP ``g_k`` (``w -> width ->
    width``); the blocks' features are summed and one linear map ``W`` (``width -> D``), shared
    by every block, renders them. A linear map of a sum is the sum of the maps, so the head is
    additive over blocks: what block ``k`` adds to the latent, ``W g_k(c_k)``, does not depend
    on the other blocks. All blocks are computed at once (batched products).
    """

    def __init__(self, num_blocks: int, block_width: int, width: int, size_out: int):
        super().__init__()
        self.num_blocks, self.block_width = num_blocks, block_width
        shapes = [(block_width, width), (width, width)]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_blocks, a, b).uniform_(-1, 1) / math.sqrt(a))
            for a, b in shapes
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(num_blocks, 1, b)) for _, b in shapes
        )
        self.output = nn.Linear(width, size_out)

    def block_features(self, concepts: torch.Tensor) -> torch.Tensor:
        """``(N, K*w)`` -> ``(K, N, width)``: ``g_k(c_k)`` of every block."""
        x = concepts.view(-1, self.num_blocks, self.block_width).transpose(0, 1)  # (K, N, w)
        for weight, bias in zip(self.weights, self.biases, strict=True):
            x = nn.functional.gelu(torch.baddbmm(bias, x, weight))
        return x

    def forward(self, concepts: torch.Tensor) -> torch.Tensor:
        return self.output(self.block_features(concepts).sum(dim=0))


def _head(kind: str, size_in: int, width: int, size_out: int, conv) -> nn.Module:
    """A linear map, an MLP, or ``conv()`` (the spatial head), by ``kind``."""
    if kind == "linear":
        return nn.Linear(size_in, size_out)
    if kind in ("mlp", "additive"):
        return _mlp(size_in, width, size_out)
    return conv()


def posterior_head(
    kind: str, latent_shape: tuple[int, int, int], width: int, size_out: int, extra: int = 0
) -> nn.Module:
    """The posterior head of ``kind`` (resolved): flat latents, followed by ``extra`` more
    features (the context), ``(N, C*h*w + extra)`` -> ``(N, size_out)``."""
    spatial = lambda: ConvPosteriorHead(latent_shape, width, size_out, extra)  # noqa: E731
    return _head(kind, math.prod(latent_shape) + extra, width, size_out, spatial)


def latent_head(
    kind: str,
    size_in: int,
    width: int,
    latent_shape: tuple[int, int, int],
    num_blocks: int = 1,
) -> nn.Module:
    """The latent head of ``kind`` (resolved): ``(N, size_in)`` -> flat latents; ``"additive"``
    heads read ``size_in`` as ``num_blocks`` blocks."""
    if kind == "additive":
        return AdditiveLatentHead(num_blocks, size_in // num_blocks, width, math.prod(latent_shape))
    spatial = lambda: ConvLatentHead(size_in, width, latent_shape)  # noqa: E731
    return _head(kind, size_in, width, math.prod(latent_shape), spatial)
