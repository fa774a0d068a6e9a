"""Evaluation metrics: Concept / Compo (sliced Wasserstein-2), bits per pixel (Recon), PSNR, MSE.

All functions are pure and torch-based. Images are compared in pixel space with values in
``[0, 1]``; ``uint8`` tensors are accepted wherever images are and are converted to ``[0, 1]``
floats (``x / 255``). Floating inputs are used as they are (``float16``/``bfloat16`` are upcast to
``float32``); computations run in ``float64`` when an input is ``float64`` and in ``float32``
otherwise (``ctxadapter.images.to_float`` and ``compute_dtype``).

The scores follow the paper's evaluation (``docs/evaluation.md``):

- **Concept**: mean, over single contexts (``"obs"`` and one-concept interventions), of the
  sliced Wasserstein-2 distance (``ctxadapter.evaluation.wasserstein.sliced_wasserstein``)
  between real and generated images of that context.
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

from ..contexts import is_composition
from ..images import compute_dtype, to_float
from .wasserstein import check_order, flatten_pair, random_projections, sliced_wasserstein

__all__ = [
    "MIN_MSE",
    "ConceptCompoScores",
    "concept_compo_scores",
    "mse",
    "psnr",
    "recon_bits_per_pixel",
]

MIN_MSE = 1e-10
"""The floor of a per-image mean squared error (relative to the squared data range) in
``psnr``: identical images score 100 dB instead of infinity."""

# --------------------------------------------------------------------------------------------
# Concept / Compo
# --------------------------------------------------------------------------------------------


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
    check_order(p)
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
            xf, yf = flatten_pair(x, y)
        except ValueError as err:
            raise ValueError(f"context {context!r}: {err}") from None
        n = min(xf.shape[0], yf.shape[0])
        if max_images is not None:
            n = min(n, int(max_images))
        dtype = compute_dtype(x, y)
        key = (xf.shape[1], dtype, xf.device)
        if key not in thetas:
            thetas[key] = random_projections(
                xf.shape[1], num_projections, seed, dtype=dtype, device=xf.device
            )
        with torch.no_grad():
            sw = sliced_wasserstein(xf[:n], yf[:n], p=p, projections=thetas[key])
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
    dtype = compute_dtype(probs, target)
    q = to_float(probs, dtype)
    t = to_float(target, dtype).to(q.device)
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
    dtype = compute_dtype(x, y)
    return (to_float(x, dtype) - to_float(y, dtype).to(x.device)).square().mean()


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, *, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB, computed per image (and averaged over the batch).

    ``PSNR_i = 10 log10(data_range^2 / max(MSE_i, MIN_MSE * data_range^2))``, ``MSE_i`` the mean
    squared error of image ``i``: identical images score ``-10 log10(MIN_MSE)`` = 100 dB, so a
    mean over images stays finite.

    Args:
        x: ``(B, ...)`` images (``uint8`` is divided by 255, so keep ``data_range=1``).
        y: same shape as ``x``.
        data_range: the span of pixel values (1 for ``[0, 1]`` images, 2 for ``[-1, 1]``).
        reduction: ``"mean"`` (over the batch; 0-d tensor) or ``"none"`` (``(B,)``).

    Returns:
        dB (``float64`` if an input is ``float64``, else ``float32``).
    """
    _check_same_shape(x, y)
    if x.dim() < 1:
        raise ValueError("psnr expects a batch dimension, got a 0-d tensor")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    dtype = compute_dtype(x, y)
    diff = (to_float(x, dtype) - to_float(y, dtype).to(x.device)) / data_range
    per_image = diff.reshape(diff.shape[0], -1).square().mean(dim=1)
    db = -10 * torch.log10(per_image.clamp_min(MIN_MSE))
    return db.mean() if reduction == "mean" else db
