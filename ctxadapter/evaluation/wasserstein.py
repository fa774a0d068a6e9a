"""Wasserstein distances between sets of samples: exact 1-D, sliced, and sliced within groups.

- ``wasserstein_1d``: the exact Wasserstein-p distance between two 1-D empirical distributions
  (sets of any sizes, matched through their quantile functions).
- ``sliced_wasserstein``: the mean of ``W_p^p`` along random unit directions
  (``random_projections``), to the power ``1 / p``; the Concept and Compo scores of
  ``ctxadapter.evaluation.metrics`` are its ``p = 2`` case between real and generated images.
- ``grouped_sliced_wasserstein``: the squared sliced Wasserstein-2 distance within groups of
  rows, differentiable, for the training objective's sample matching
  (``ctxadapter.objective``).

All three sort the projected samples and compare them rank by rank. The directions of the first
two are fixed by a seed (the same for every data set and machine); the grouped distance takes
the directions it is given (the objective draws them from the training generator).
``uint8`` inputs are read as images and divided by 255 (``ctxadapter.images.to_float``);
computations run in ``float64`` when an input is ``float64`` and in ``float32`` otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..images import compute_dtype, to_float

__all__ = [
    "check_order",
    "flatten_pair",
    "grouped_sliced_wasserstein",
    "random_projections",
    "sliced_wasserstein",
    "wasserstein_1d",
]

# Number of input elements converted and projected at once (16 MiB of float32): bounds the
# memory of the sliced Wasserstein distance independently of the number of images.
_CHUNK_ELEMENTS = 1 << 22


def check_order(p: float) -> None:
    """Raise ``ValueError`` unless ``p`` is a finite number ``>= 1`` (the order of a distance)."""
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")


def _as_samples(x: Tensor, name: str) -> Tensor:
    """View ``(N, ...)`` as ``(N, D)``; a 1-D ``(N,)`` tensor is ``N`` scalar samples."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a sample dimension, got a 0-d tensor")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)} (0 samples)")
    if x.dim() == 1:
        return x.reshape(-1, 1)
    if x[0].numel() == 0:
        raise ValueError(f"{name} has empty samples: got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


# --------------------------------------------------------------------------------------------
# 1-D Wasserstein
# --------------------------------------------------------------------------------------------


def _quantile_grid(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Common grid of the quantile functions of two empirical distributions of sizes n, m.

    The quantile function of ``n`` sorted samples ``u`` is the step function
    ``Q(t) = u[ceil(t n) - 1]`` on ``(0, 1]``; it jumps at the levels ``i / n``. Between two
    consecutive points of the merged set ``{i / n} U {j / m}`` both quantile functions are
    constant, so ``W_p^p = sum_k w_k |u[a_k] - v[b_k]|^p`` exactly, with ``w_k`` the interval
    lengths. Levels are handled as integers in units of ``1 / (n m)`` (no rounding):
    ``i / n = i m / (n m)``; on the interval starting at integer level ``s`` the indices are
    ``s // m`` into ``u`` and ``s // n`` into ``v``.

    Returns:
        ``(u_index, v_index, counts)``: int64 tensors of shape ``(K,)``, ``K <= n + m - 1``;
        ``counts / (n * m)`` are the interval lengths (summing to 1).
    """
    levels = torch.cat(
        [
            torch.arange(n + 1, device=device, dtype=torch.int64) * m,
            torch.arange(m + 1, device=device, dtype=torch.int64) * n,
        ]
    )
    levels = torch.unique(levels, sorted=True)
    starts = levels[:-1]
    return starts // m, starts // n, levels[1:] - starts


def _wasserstein_pp_sorted(u: Tensor, v: Tensor, p: float) -> Tensor:
    """``W_p^p`` between sorted samples ``u (*B, n)`` and ``v (*B, m)``; returns ``(*B,)``."""
    n, m = u.shape[-1], v.shape[-1]
    if n == m:
        diff = u - v
        return diff.square().mean(-1) if p == 2 else diff.abs().pow(p).mean(-1)
    u_idx, v_idx, counts = _quantile_grid(n, m, u.device)
    diff = u[..., u_idx] - v[..., v_idx]
    cost = diff.square() if p == 2 else diff.abs().pow(p)
    weights = counts.to(u.dtype) / (n * m)
    return (cost * weights).sum(-1)


def wasserstein_1d(u: Tensor, v: Tensor, p: float = 2) -> Tensor:
    """Exact Wasserstein-p distance between two 1-D empirical distributions.

    Each sample carries equal mass (``1 / n`` in ``u``, ``1 / m`` in ``v``). For ``n == m`` this
    is ``(mean |sort(u) - sort(v)|^p)^(1/p)``; for ``n != m`` both quantile functions are
    evaluated on the merged set of their breakpoints ``{i / n} U {j / m}``, which is exact for
    empirical distributions (at most ``n + m - 1`` pieces).

    Args:
        u: samples, shape ``(n,)`` or batched ``(*B, n)``; any real values.
        v: samples, shape ``(m,)`` or ``(*B, m)`` with the same batch shape ``B`` as ``u``.
        p: order, a number ``>= 1``.

    Returns:
        ``W_p`` as a tensor of shape ``B`` (0-d for 1-D inputs), ``>= 0``, in the units of the
        samples; ``float64`` if an input is ``float64``, else ``float32``.

    Raises:
        ValueError: for ``p < 1``, empty inputs, 0-d inputs or mismatched batch shapes.
    """
    check_order(p)
    for name, t in (("u", u), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"{name} must have at least one dimension, got a 0-d tensor")
        if t.shape[-1] == 0:
            raise ValueError(f"{name} is empty: got shape {tuple(t.shape)}")
    if u.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"batch shapes differ: u {tuple(u.shape)} vs v {tuple(v.shape)} "
            "(only the last dimension may differ)"
        )
    dtype = compute_dtype(u, v)
    u_sorted = to_float(u, dtype).sort(dim=-1).values
    v_sorted = to_float(v, dtype).to(u.device).sort(dim=-1).values
    return _wasserstein_pp_sorted(u_sorted, v_sorted, p).pow(1.0 / p)


# --------------------------------------------------------------------------------------------
# sliced Wasserstein
# --------------------------------------------------------------------------------------------


def random_projections(
    dim: int,
    num_projections: int = 50,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random directions, uniform on the unit sphere of ``R^dim``, fixed by ``seed``.

    Drawn as normalized standard Gaussians in ``float64`` from a CPU ``torch.Generator`` seeded
    with ``seed``, then cast to ``dtype`` and moved to ``device``: the same ``(dim, seed)`` gives
    the same directions on every machine and for every data set, and the first ``k`` rows do not
    depend on ``num_projections`` (more projections extend the set).

    Returns:
        Tensor of shape ``(num_projections, dim)``, rows of unit Euclidean norm. For ``dim == 1``
        each row is ``+1`` or ``-1``.
    """
    if int(num_projections) != num_projections or num_projections < 1:
        raise ValueError(f"num_projections must be an integer >= 1, got {num_projections!r}")
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    # One draw per direction: direction k does not depend on how many are drawn after it.
    theta = torch.stack(
        [
            torch.randn(int(dim), generator=generator, dtype=torch.float64)
            for _ in range(int(num_projections))
        ]
    )
    theta = theta / theta.norm(dim=1, keepdim=True)
    return theta.to(dtype=dtype, device=device)


def _project(x: Tensor, theta: Tensor) -> Tensor:
    """Project ``x (N, D)`` onto ``theta (P, D)`` in row chunks; returns ``(P, N)``.

    ``uint8`` rows are projected as integers (exact in float) and the ``(N, P)`` result divided
    by 255, which equals projecting ``x / 255`` up to rounding and saves a pass over the images.
    """
    rows = max(1, _CHUNK_ELEMENTS // x.shape[1])
    is_uint8 = x.dtype == torch.uint8
    chunks = []
    for i in range(0, x.shape[0], rows):
        chunk = x[i : i + rows].to(theta.device)
        chunk = chunk.to(theta.dtype) if is_uint8 else to_float(chunk, theta.dtype)
        chunks.append(chunk @ theta.T)
    out = torch.cat(chunks, dim=0)
    return (out / 255.0 if is_uint8 else out).T


def flatten_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Two sets of samples ``(N, ...)`` and ``(M, ...)`` as ``(N, D)`` and ``(M, D)``.

    A 1-D ``(N,)`` tensor is ``N`` scalar samples.

    Raises:
        ValueError: for empty sets, different feature sizes ``D``, or per-sample shapes that
            differ although both have several dimensions (e.g. channels first and last).
    """
    xf, yf = _as_samples(x, "x"), _as_samples(y, "y")
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(
            f"feature sizes differ: x has {xf.shape[1]} values per sample (shape "
            f"{tuple(x.shape)}), y has {yf.shape[1]} (shape {tuple(y.shape)})"
        )
    if x.dim() > 2 and y.dim() > 2 and x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"per-sample shapes differ: x {tuple(x.shape[1:])} vs y {tuple(y.shape[1:])}; "
            "use the same layout (e.g. both channels-first) for both sets"
        )
    return xf, yf


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    num_projections: int = 50,
    seed: int = 0,
    p: float = 2,
    *,
    projections: Tensor | None = None,
) -> Tensor:
    """Sliced Wasserstein-p distance between two sets of samples (e.g. images).

    ``SW_p = (mean_k W_p^p(<theta_k, x>, <theta_k, y>))^(1/p)`` over random unit directions
    ``theta_k`` (see ``random_projections``), with each 1-D ``W_p`` computed exactly from
    the sorted projections (``wasserstein_1d``; sets of different sizes are matched through
    their quantile functions). Samples are flattened, so images of shape ``(3, 64, 64)`` are
    points of ``R^12288``. Projection runs over chunks of samples, so memory stays bounded
    (``uint8`` images are converted chunk by chunk).

    Args:
        x: ``(N, ...)`` samples, e.g. ``(N, 3, H, W)`` floats in ``[0, 1]`` or ``(N, H, W, 3)``
            ``uint8`` (divided by 255); a 1-D ``(N,)`` tensor is ``N`` scalar samples.
        y: ``(M, ...)`` samples with the same values per sample (same layout) as ``x``.
            ``M`` may differ from ``N``, but the estimate depends on the sample size: compare
            scores only at equal sizes.
        num_projections: number of random directions, ``>= 1``.
        seed: seed of the directions; the same seed gives the same directions whatever the data.
        p: order, ``>= 1``.
        projections: optional ``(P, D)`` unit directions to use instead of drawing them
            (``num_projections`` and ``seed`` are then ignored).

    Returns:
        0-d tensor, ``>= 0`` (``0`` for identical sets), in pixel units (for images in
        ``[0, 1]``, at most ``sqrt(D)``); ``float64`` if an input is ``float64``, else
        ``float32``; on ``x``'s device. Differentiable with respect to floating inputs.

    Raises:
        ValueError: for empty sets, mismatched feature sizes, ``num_projections < 1`` or
            ``p < 1``, naming the offending value.
    """
    check_order(p)
    xf, yf = flatten_pair(x, y)
    dtype = compute_dtype(x, y)
    if projections is None:
        theta = random_projections(
            xf.shape[1], num_projections, seed, dtype=dtype, device=xf.device
        )
    else:
        if projections.dim() != 2 or projections.shape[1] != xf.shape[1]:
            raise ValueError(
                f"projections must have shape (P, {xf.shape[1]}), got {tuple(projections.shape)}"
            )
        if projections.shape[0] < 1:
            raise ValueError("projections is empty: got 0 directions")
        theta = projections.to(dtype=dtype, device=xf.device)
    return _sliced_wasserstein_theta(xf, yf, theta, p)


def _sliced_wasserstein_theta(xf: Tensor, yf: Tensor, theta: Tensor, p: float) -> Tensor:
    """SW_p of flattened ``xf (N, D)``, ``yf (M, D)`` along ``theta (P, D)``; 0-d tensor."""
    px = _project(xf, theta).sort(dim=-1).values
    py = _project(yf, theta).sort(dim=-1).values
    return _wasserstein_pp_sorted(px, py, p).mean().pow(1.0 / p)


def grouped_sliced_wasserstein(
    real: Tensor, fake: Tensor, groups: Tensor, directions: Tensor
) -> Tensor:
    """Squared sliced Wasserstein-2 distance between ``real`` and ``fake`` within each group.

    Row ``n`` of ``fake`` belongs to the same group as row ``n`` of ``real``, so each group has
    as many rows on both sides. Along every direction both sides are sorted within their group
    and matched rank by rank (the optimal 1-D coupling). Differentiable; no chunking, no dtype
    conversion (the training objective's inputs are latents).

    Args:
        real, fake: ``(N, D)``.
        groups: ``(N,)`` integer group of each row (e.g. the index of its context).
        directions: ``(D, P)`` unit directions.

    Returns:
        A scalar: the mean over rows and directions of the squared matched differences (each
        group weighted by its size).
    """
    projected_real, projected_fake = real @ directions, fake @ directions
    # Both sides side by side, sorted in one call (columns are sorted independently; on the
    # CPU a sort costs about the same for 64 columns as for 128). Sort by (group, value):
    # adding group * span keeps the groups apart and in order.
    both = torch.cat([projected_real, projected_fake], dim=1)
    span = both.detach().abs().amax().mul(2).add(1)
    both = both + groups.to(real.dtype).unsqueeze(1) * span
    sorted_real, sorted_fake = both.sort(dim=0).values.chunk(2, dim=1)
    # Equal group sizes on both sides: rank n of one side meets rank n of the other (the
    # equal-size case of _wasserstein_pp_sorted, reduced over rows and directions at once).
    return (sorted_real - sorted_fake).pow(2).mean()
