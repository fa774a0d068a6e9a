"""Evaluation metrics: sliced Wasserstein (Concept / Compo), bits per pixel (Recon), PSNR, MSE.

All functions are pure and torch-based. Images are compared in pixel space with values in
``[0, 1]``; ``uint8`` tensors are accepted wherever images are and are converted to ``[0, 1]``
floats (``x / 255``). Floating inputs are used as they are (``float16``/``bfloat16`` are upcast to
``float32``); computations run in ``float64`` when an input is ``float64`` and in ``float32``
otherwise.

The scores follow the paper's evaluation (``docs/evaluation.md``):

- **Concept**: mean, over single contexts (``"obs"`` and one-concept interventions), of the
  sliced Wasserstein-2 distance between real and generated images of that context.
- **Compo**: the same mean over held-out compositions (context names joined with ``"+"``).
- **Recon**: negative ELBO in bits per pixel, ``nats / (H * W * ln 2)`` with a Bernoulli
  likelihood (channels are summed in the numerator, not counted in the denominator).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ConceptCompoScores",
    "concept_compo_scores",
    "is_composition",
    "mse",
    "psnr",
    "random_projections",
    "recon_bits_per_pixel",
    "sliced_wasserstein",
    "wasserstein_1d",
]

# Number of input elements converted and projected at once (16 MiB of float32): bounds the
# memory of the sliced Wasserstein distance independently of the number of images.
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """``float64`` if any input is ``float64``, else ``float32``."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _to_float(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Convert ``uint8`` images to ``[0, 1]`` floats; cast floating tensors to ``dtype``."""
    if x.dtype == torch.uint8:
        return x.to(dtype) / 255.0
    if x.is_floating_point():
        return x.to(dtype)
    raise TypeError(
        f"expected a floating tensor or uint8 images, got dtype {x.dtype}; "
        "convert to float in [0, 1] first"
    )


def _check_p(p: float) -> None:
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
    _check_p(p)
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
    dtype = _compute_dtype(u, v)
    u_sorted = _to_float(u, dtype).sort(dim=-1).values
    v_sorted = _to_float(v, dtype).to(u.device).sort(dim=-1).values
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
        chunk = chunk.to(theta.dtype) if is_uint8 else _to_float(chunk, theta.dtype)
        chunks.append(chunk @ theta.T)
    out = torch.cat(chunks, dim=0)
    return (out / 255.0 if is_uint8 else out).T


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten two sample sets to ``(N, D)`` and ``(M, D)``, checking their feature sizes."""
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
    _check_p(p)
    xf, yf = _check_pair(x, y)
    dtype = _compute_dtype(x, y)
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


# --------------------------------------------------------------------------------------------
# Concept / Compo
# --------------------------------------------------------------------------------------------


def is_composition(context: str) -> bool:
    """Whether a context name intervenes on two or more concepts (``"a+b"``).

    ``"obs"`` (or ``""``) and a single concept name are single contexts.
    """
    names = [part for part in context.split("+") if part.strip() and part.strip() != "obs"]
    return len(names) >= 2


@dataclass(frozen=True)
class ConceptCompoScores:
    """Result of ``concept_compo_scores``.

    Attributes:
        concept: mean SW over single contexts, or ``None`` when there is none.
        compo: mean SW over composition contexts, or ``None`` when there is none.
        per_context: SW per context name (every evaluated context).
        num_images: images used per side for each context (``min`` of the two set sizes,
            capped by ``max_images``).
        concept_contexts: contexts averaged into ``concept``.
        compo_contexts: contexts averaged into ``compo``.
        num_projections: number of random directions (the same for every context).
        seed: seed of the directions.
        p: order of the sliced Wasserstein distance (2 for the paper's SW2).
    """

    concept: float | None
    compo: float | None
    per_context: dict[str, float]
    num_images: dict[str, int]
    concept_contexts: tuple[str, ...]
    compo_contexts: tuple[str, ...]
    num_projections: int
    seed: int
    p: float = 2

    def to_dict(self) -> dict[str, object]:
        """A JSON-serializable dictionary (e.g. for ``metrics.json``)."""
        return {
            "concept": self.concept,
            "compo": self.compo,
            "per_context": dict(self.per_context),
            "num_images": dict(self.num_images),
            "concept_contexts": list(self.concept_contexts),
            "compo_contexts": list(self.compo_contexts),
            "num_projections": self.num_projections,
            "seed": self.seed,
            "p": self.p,
        }


def concept_compo_scores(
    real: Mapping[str, Tensor],
    generated: Mapping[str, Tensor],
    compositions: Iterable[str] | None = None,
    num_projections: int = 50,
    seed: int = 0,
    *,
    max_images: int | None = None,
    p: float = 2,
) -> ConceptCompoScores:
    """Concept and Compo scores: per-context sliced Wasserstein between real and generated images.

    For every context the first ``n = min(N_real, N_generated)`` images of each side are
    compared (also capped by ``max_images``), since the sliced Wasserstein estimate depends on
    the sample size; ``n`` is reported in ``num_images``. Images should be in random order
    (held-out real images, independently generated samples). Every context uses the SAME
    directions (one draw from ``seed`` per image size).

    Contexts are classified by name: ``"obs"`` and single concept names are single contexts
    (averaged into ``concept``); names joining two or more concepts with ``"+"`` are
    compositions. If ``compositions`` is given, exactly those contexts are averaged into
    ``compo`` (they must be present); other composition names are still scored in
    ``per_context`` but enter neither mean (e.g. compositions seen in training).

    Args:
        real: context name -> held-out real images ``(N, ...)`` (``[0, 1]`` floats or
            ``uint8``).
        generated: context name -> generated images ``(M, ...)``, same per-image shape; must
            have the same context names as ``real``.
        compositions: held-out composition names, or ``None`` to use every ``"+"`` context.
        num_projections: number of random directions, ``>= 1`` (the paper uses 50).
        seed: seed of the directions.
        max_images: optional cap on the images per side and context (the paper used 1,280).
        p: order of the distance (2: SW2).

    Returns:
        A ``ConceptCompoScores``.

    Raises:
        ValueError: for differing context names, unknown or single ``compositions``, empty
            image sets, mismatched image shapes or invalid ``num_projections``/``max_images``.
    """
    _check_p(p)
    if int(num_projections) != num_projections or num_projections < 1:
        raise ValueError(f"num_projections must be an integer >= 1, got {num_projections!r}")
    if max_images is not None and (int(max_images) != max_images or max_images < 1):
        raise ValueError(f"max_images must be an integer >= 1 or None, got {max_images!r}")
    if set(real) != set(generated):
        raise ValueError(
            "real and generated must have the same contexts: only in real "
            f"{sorted(set(real) - set(generated))}, only in generated "
            f"{sorted(set(generated) - set(real))}"
        )
    if not real:
        raise ValueError("no contexts to evaluate: real and generated are empty")
    contexts = list(real)
    if compositions is None:
        compo_contexts = tuple(c for c in contexts if is_composition(c))
    else:
        compo_contexts = tuple(dict.fromkeys(compositions))
        unknown = [c for c in compo_contexts if c not in real]
        if unknown:
            raise ValueError(f"compositions not found in real/generated: {unknown}")
        single = [c for c in compo_contexts if not is_composition(c)]
        if single:
            raise ValueError(f"compositions must join two or more concepts with '+': {single}")
    concept_contexts = tuple(c for c in contexts if not is_composition(c))

    per_context: dict[str, float] = {}
    num_images: dict[str, int] = {}
    thetas: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
    for context in contexts:
        x, y = real[context], generated[context]
        try:
            xf, yf = _check_pair(x, y)
        except ValueError as err:
            raise ValueError(f"context {context!r}: {err}") from None
        n = min(xf.shape[0], yf.shape[0])
        if max_images is not None:
            n = min(n, int(max_images))
        dtype = _compute_dtype(x, y)
        key = (xf.shape[1], dtype, xf.device)
        if key not in thetas:
            thetas[key] = random_projections(
                xf.shape[1], num_projections, seed, dtype=dtype, device=xf.device
            )
        with torch.no_grad():
            sw = _sliced_wasserstein_theta(xf[:n], yf[:n], thetas[key], p)
        per_context[context] = float(sw)
        num_images[context] = n

    def _mean(names: tuple[str, ...]) -> float | None:
        return sum(per_context[c] for c in names) / len(names) if names else None

    return ConceptCompoScores(
        concept=_mean(concept_contexts),
        compo=_mean(compo_contexts),
        per_context=per_context,
        num_images=num_images,
        concept_contexts=concept_contexts,
        compo_contexts=compo_contexts,
        num_projections=int(num_projections),
        seed=int(seed),
        p=p,
    )


# --------------------------------------------------------------------------------------------
# Recon, PSNR, MSE
# --------------------------------------------------------------------------------------------


def recon_bits_per_pixel(
    probs: Tensor,
    target: Tensor,
    kl: Tensor | float | None = None,
    *,
    eps: float = 1e-6,
    channels_last: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Negative ELBO in bits per pixel with a Bernoulli likelihood (the paper's Recon).

    Per image: ``(sum_{c,h,w} BCE(probs, target) + kl) / (H * W * ln 2)``, where
    ``BCE(q, t) = -(t ln q + (1 - t) ln(1 - q))`` in nats. Channels are summed in the
    numerator and NOT counted in the denominator, so an RGB image costs up to 3x a grey one.
    Targets may be continuous in ``[0, 1]`` (the continuous-target Bernoulli of the paper).

    Args:
        probs: decoder outputs taken as Bernoulli means, ``(B, C, H, W)`` (or ``(B, H, W, C)``
            with ``channels_last``; ``(B, H, W)`` for one channel), in ``[0, 1]``; clamped to
            ``[eps, 1 - eps]`` so the log-likelihood stays finite. Values outside
            ``[-1e-3, 1 + 1e-3]`` raise (e.g. ``[-1, 1]`` images: pass ``(x + 1) / 2``).
            ``uint8`` is divided by 255.
        target: the images, same shape, in ``[0, 1]`` (or ``uint8``).
        kl: optional KL term in nats per image: shape ``(B,)``, or a scalar (the same for all
            images, e.g. a batch mean).
        eps: clamp of ``probs``; ``1e-6`` bounds the cost of a pixel at ``-ln(1e-6) = 13.8``
            nats.
        channels_last: whether the channel axis is last.
        reduction: ``"mean"`` (over the batch; 0-d tensor) or ``"none"`` (``(B,)``).

    Returns:
        Bits per pixel, ``>= 0``; ``float64`` if an input is ``float64``, else ``float32``.
    """
    if probs.shape != target.shape:
        raise ValueError(
            f"probs and target shapes differ: {tuple(probs.shape)} vs {tuple(target.shape)}"
        )
    if probs.dim() not in (3, 4):
        raise ValueError(
            f"expected images of shape (B, C, H, W), (B, H, W, C) or (B, H, W), "
            f"got {tuple(probs.shape)}"
        )
    if probs.shape[0] == 0 or probs.numel() == 0:
        raise ValueError(f"empty batch: got shape {tuple(probs.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    if probs.dim() == 3 or channels_last:
        height, width = probs.shape[1], probs.shape[2]
    else:
        height, width = probs.shape[2], probs.shape[3]
    dtype = _compute_dtype(probs, target)
    q = _to_float(probs, dtype)
    t = _to_float(target, dtype).to(q.device)
    q_min, q_max = float(q.min()), float(q.max())
    if q_min < -1e-3 or q_max > 1 + 1e-3:
        raise ValueError(
            f"probs must be in [0, 1], got values in [{q_min:.4g}, {q_max:.4g}]; "
            "map [-1, 1] decoder outputs with (x + 1) / 2"
        )
    t_min, t_max = float(t.min()), float(t.max())
    if t_min < 0 or t_max > 1:
        raise ValueError(f"target must be in [0, 1], got values in [{t_min:.4g}, {t_max:.4g}]")
    q = q.clamp(eps, 1 - eps)
    nll = -(t * q.log() + (1 - t) * torch.log1p(-q))
    nats = nll.reshape(nll.shape[0], -1).sum(dim=1)
    if kl is not None:
        kl_t = torch.as_tensor(kl, dtype=dtype, device=nats.device)
        if kl_t.dim() > 1 or (kl_t.dim() == 1 and kl_t.shape[0] != nats.shape[0]):
            raise ValueError(
                f"kl must be a scalar or of shape ({nats.shape[0]},), got {tuple(kl_t.shape)}"
            )
        nats = nats + kl_t
    bits = nats / (height * width * math.log(2))
    return bits.mean() if reduction == "mean" else bits


def _check_same_shape(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)} vs y {tuple(y.shape)}")
    if x.numel() == 0:
        raise ValueError(f"empty inputs: got shape {tuple(x.shape)}")


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error over all elements.

    Args:
        x: ``(B, ...)`` images in ``[0, 1]`` (``uint8`` is divided by 255).
        y: same shape as ``x``.

    Returns:
        0-d tensor, ``>= 0`` (``float64`` if an input is ``float64``, else ``float32``).
    """
    _check_same_shape(x, y)
    dtype = _compute_dtype(x, y)
    return (_to_float(x, dtype) - _to_float(y, dtype).to(x.device)).square().mean()


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, computed per image and averaged over the batch.

    ``PSNR_i = 10 log10(data_range^2 / MSE_i)``, ``MSE_i`` the mean squared error of image
    ``i``. Identical images give ``inf``.

    Args:
        x: ``(B, ...)`` images (``uint8`` is divided by 255, so keep ``data_range=1``).
        y: same shape as ``x``.
        data_range: the span of pixel values (1 for ``[0, 1]`` images, 2 for ``[-1, 1]``).

    Returns:
        0-d tensor in dB (``float64`` if an input is ``float64``, else ``float32``).
    """
    _check_same_shape(x, y)
    if x.dim() < 1:
        raise ValueError("psnr expects a batch dimension, got a 0-d tensor")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    dtype = _compute_dtype(x, y)
    diff = _to_float(x, dtype) - _to_float(y, dtype).to(x.device)
    per_image = diff.reshape(diff.shape[0], -1).square().mean(dim=1)
    return (10 * torch.log10(data_range**2 / per_image)).mean()
