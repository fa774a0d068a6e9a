"""Drawing the quad images (``ctxadapter.data.quad``): latent values in [0, 1] -> 64 x 64 RGB.

``render`` takes one row of ``values`` in [0, 1] per image, in the order of
``ctxadapter.data.quad.LATENT_NAMES``, and paints:

1. the four quadrants in the colours of ``quad1`` (bottom-left), ``quad2`` (bottom-right),
   ``quad3`` (top-left) and ``quad4`` (top-right) through ``colormap``;
2. a disc, square, triangle or ellipse (``shape``) of side ``s = 48 * (0.2 + 0.8 * size)``
   pixels, angle ``theta = 2 * pi * orientation``, in the colour of ``color``, centred on the
   image.

Geometry conventions (the paper leaves them open):

- Pixel centres: pixel (row ``r``, column ``c``) is the unit square ``[c, c + 1] x [r, r + 1]``
  and is painted iff its centre lies in the shape (closed set, no anti-aliasing). Its offset from
  the image centre (32, 32) is ``dx = c + 0.5 - 32``, ``dy = r + 0.5 - 32``, so shapes are
  symmetric on the pixel grid and the centre is the point where the four quadrants meet.
- ``dy`` points down (image rows). With the rotated coordinates
  ``x' = dx cos(-theta) - dy sin(-theta)``, ``y' = dx sin(-theta) + dy cos(-theta)``, a growing
  ``theta`` therefore turns shapes clockwise on screen; ``theta = 0`` puts the ellipse's long
  axis and a triangle vertex along +x (to the right).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["COLOURS", "IMAGE_SIZE", "RENDER_CHUNK", "colormap", "render"]

IMAGE_SIZE = 64
"""Side of a quad image, in pixels."""
RENDER_CHUNK = 1024
"""Images per vectorised rendering step (bounds peak memory); also the chunk of the dataset
writers."""

COLOURS = np.array(
    [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=np.float64
)
"""The corners of the colour map's path, RGB in [0, 1]: red, yellow, green, cyan, blue,
magenta."""


def colormap(v: np.ndarray) -> np.ndarray:
    """Colours of ``v`` in [0, 1] (clipped), shape [...] -> uint8 [..., 3].

    Piecewise linear through red, yellow, green, cyan, blue, magenta in five equal segments,
    times 255, truncated: ``colormap(0.1) == (255, 127, 0)``.
    """
    t = 5.0 * np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    segment = np.minimum(np.floor(t), 4).astype(np.intp)
    frac = (t - segment)[..., None]
    rgb = (1.0 - frac) * COLOURS[segment] + frac * COLOURS[segment + 1]
    return (255.0 * rgb).astype(np.uint8)


def _shape_mask(kind: int, xr: np.ndarray, yr: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Pixels inside shape ``kind`` given rotated offsets [b, H, W] and half-sizes [b, 1, 1]."""
    if kind == 0:  # disc of radius s/2
        return xr**2 + yr**2 <= half**2
    if kind == 1:  # square of half-side s/2
        return (np.abs(xr) <= half) & (np.abs(yr) <= half)
    if kind == 2:  # triangle, vertices at radius s/2 and rotated angles 0, 2pi/3, 4pi/3
        # Inside iff on the inner side of the three edges; the edge opposite the vertex at
        # angle a has outward normal at angle a + pi and lies at distance s/4 (the inradius).
        inside = np.ones(xr.shape, dtype=bool)
        for k in range(3):
            angle = 2.0 * math.pi * k / 3.0
            inside &= xr * math.cos(angle) + yr * math.sin(angle) >= -half / 2.0
        return inside
    return (xr / half) ** 2 + (yr / (half / 2.0)) ** 2 <= 1.0  # ellipse, semi-axes s/2, s/4


def render(values: np.ndarray) -> np.ndarray:
    """Images of latent ``values`` in [0, 1] (Phi of the standardised latents): [n, 8] -> uint8.

    ``values`` (clipped to [0, 1]) has columns in :data:`LATENT_NAMES` order; the result has
    shape [n, 64, 64, 3]. ``size -> 0.2 + 0.8 * size``, ``shape -> round(3 * shape)`` (0 disc,
    1 square, 2 triangle, 3 ellipse; halves round to even) and ``theta = 2 pi orientation``.
    See the module docstring for the pixel-centre and orientation conventions.
    """
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    images = np.empty((len(values), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    mid = IMAGE_SIZE // 2
    offsets = np.arange(IMAGE_SIZE) + 0.5 - mid
    dx, dy = offsets[None, None, :], offsets[None, :, None]
    for start in range(0, len(values), RENDER_CHUNK):
        chunk = values[start : start + RENDER_CHUNK]
        out = images[start : start + RENDER_CHUNK]
        quads = colormap(chunk[:, :4])[:, :, None, None, :]  # [b, 4, 1, 1, 3]
        out[:, mid:, :mid] = quads[:, 0]
        out[:, mid:, mid:] = quads[:, 1]
        out[:, :mid, :mid] = quads[:, 2]
        out[:, :mid, mid:] = quads[:, 3]
        half = (48.0 * (0.2 + 0.8 * chunk[:, 4]) / 2.0)[:, None, None]
        kinds = np.rint(3.0 * chunk[:, 6]).astype(np.intp)
        theta = (2.0 * math.pi * chunk[:, 7])[:, None, None]
        cos, sin = np.cos(-theta), np.sin(-theta)
        xr = dx * cos - dy * sin
        yr = dx * sin + dy * cos
        mask = np.zeros(xr.shape, dtype=bool)
        for kind in range(4):
            rows = np.flatnonzero(kinds == kind)
            mask[rows] = _shape_mask(kind, xr[rows], yr[rows], half[rows])
        np.copyto(out, colormap(chunk[:, 5])[:, None, None, :], where=mask[..., None])
    return images
