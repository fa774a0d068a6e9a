"""The adapter's two heads: the *posterior head* maps a model-space latent ``(C, h, w)`` to the
mean and log-variance of the noise, the *latent head* maps the concept values back to a latent.
The context layers between them keep their exact semantics; the heads are ours to choose:

- ``"linear"``: one linear map each way (the paper's);
- ``"mlp"``: two hidden GELU layers of ``width`` each way;
- ``"conv"``: spatial heads for large latents. The posterior head is a convolution followed by
  stride-2 convolutions down to a grid of at most ``CONV_GRID`` x ``CONV_GRID``, then a GELU
  MLP; the latent head mirrors it (an MLP to that grid, then nearest-neighbour upsampling and
  convolutions). Channels double at each halving (``conv_channels``), from
  ``CONV_MIN_CHANNELS`` at the latent's resolution to at most ``CONV_MAX_CHANNELS``, so the
  work per latent value stays small and the number of weights hardly grows with height and
  width;
- ``"auto"``: ``"mlp"`` for latents of at most ``AUTO_CONV_SIZE`` values, ``"conv"`` above.

Every head takes and returns flat vectors: ``(N, C*h*w)`` in, or out, so that all kinds share
the adapter's code and the linear and MLP heads keep the state-dict keys they always had.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEADS = ("linear", "mlp", "conv", "auto")
"""The kinds of head (``"auto"`` is resolved to one of the others by ``resolve_heads``)."""

AUTO_CONV_SIZE = 4096
"""``"auto"`` heads are spatial above this many latent values (SD's 4 x 32 x 32 at 256 px)."""

CONV_MIN_CHANNELS = 16
"""Channels of ``"conv"`` heads at the latent's own resolution."""

CONV_MAX_CHANNELS = 64
"""The most channels of ``"conv"`` heads (at their coarsest grids)."""

CONV_GRID = 4
"""The coarsest grid of ``"conv"`` heads (the latent is halved down to at most this)."""


def resolve_heads(kind: str, latent_shape: tuple[int, int, int]) -> str:
    """``kind``, with ``"auto"`` replaced by ``"mlp"`` or ``"conv"`` for ``latent_shape``."""
    if kind not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "conv" if math.prod(latent_shape) > AUTO_CONV_SIZE else "mlp"


def _mlp(size_in: int, width: int, size_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(size_in, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, size_out),
    )


def conv_channels(steps: int) -> list[int]:
    """Channels of ``"conv"`` heads at each of ``steps + 1`` resolutions, finest first."""
    return [min(CONV_MAX_CHANNELS, CONV_MIN_CHANNELS * 2**i) for i in range(steps + 1)]


def _halvings(latent_shape: tuple[int, int, int]) -> int:
    """How many times ``"conv"`` heads halve the latent's height and width."""
    _, height, width = latent_shape
    steps = 0
    while max(height, width) > CONV_GRID and height % 2 == 0 and width % 2 == 0:
        height, width, steps = height // 2, width // 2, steps + 1
    return steps


class ConvPosteriorHead(nn.Module):
    """Flat latents ``(N, C*h*w)`` -> ``(N, size_out)`` through convolutions (see the module
    docstring)."""

    def __init__(self, latent_shape: tuple[int, int, int], width: int, size_out: int):
        super().__init__()
        self.latent_shape = tuple(latent_shape)
        channels, height, width_px = latent_shape
        steps = _halvings(self.latent_shape)
        ch = conv_channels(steps)
        layers: list[nn.Module] = [nn.Conv2d(channels, ch[0], 3, padding=1), nn.GELU()]
        for i in range(steps):
            layers += [nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.mlp = _mlp(ch[-1] * (height >> steps) * (width_px >> steps), width, size_out)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        spatial = latents.view(-1, *self.latent_shape)
        return self.mlp(self.convs(spatial).flatten(1))


class ConvLatentHead(nn.Module):
    """Concept values ``(N, size_in)`` -> flat latents ``(N, C*h*w)``, mirroring
    ``ConvPosteriorHead``."""

    def __init__(self, size_in: int, width: int, latent_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width_px = latent_shape
        steps = _halvings(tuple(latent_shape))
        ch = conv_channels(steps)
        self.grid = (ch[-1], height >> steps, width_px >> steps)
        self.mlp = _mlp(size_in, width, math.prod(self.grid))
        layers: list[nn.Module] = [nn.GELU()]
        for i in reversed(range(steps)):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch[i + 1], ch[i], 3, padding=1),
                nn.GELU(),
            ]
        layers.append(nn.Conv2d(ch[0], channels, 3, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, concepts: torch.Tensor) -> torch.Tensor:
        return self.convs(self.mlp(concepts).view(-1, *self.grid)).flatten(1)


def posterior_head(
    kind: str, latent_shape: tuple[int, int, int], width: int, size_out: int
) -> nn.Module:
    """The posterior head of ``kind`` (resolved): flat latents -> ``(N, size_out)``."""
    size_in = math.prod(latent_shape)
    if kind == "linear":
        return nn.Linear(size_in, size_out)
    if kind == "mlp":
        return _mlp(size_in, width, size_out)
    return ConvPosteriorHead(latent_shape, width, size_out)


def latent_head(
    kind: str, size_in: int, width: int, latent_shape: tuple[int, int, int]
) -> nn.Module:
    """The latent head of ``kind`` (resolved): ``(N, size_in)`` -> flat latents."""
    size_out = math.prod(latent_shape)
    if kind == "linear":
        return nn.Linear(size_in, size_out)
    if kind == "mlp":
        return _mlp(size_in, width, size_out)
    return ConvLatentHead(size_in, width, latent_shape)
