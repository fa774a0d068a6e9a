"""Per-image counterfactual accuracy on quad: every edit against the true counterfactual of
its image (``ctxadapter.data.quad.counterfactual_latents``), read from the quadrants' colours.

- ``quadrant_values``: the quadrants' standardised values read back from an image's colours;
- ``quad_counterfactual_accuracy``: the edits of ``ContextAutoencoder.counterfactual`` scored
  case by case by ``ctxadapter.evaluation.causal.counterfactual_success``.

    from ctxadapter import ContextAutoencoder
    from ctxadapter.data import quad
    from ctxadapter.evaluation import quad_counterfactual_accuracy

    model = ContextAutoencoder.from_pretrained("my-adapter")
    images, latents = quad.sample("obs", 200, split="test")
    print(quad_counterfactual_accuracy(model, images, latents)["summary"])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..contexts import OBSERVATIONAL
from ..data import quad, quad_render
from ..images import DEFAULT_BATCH_SIZE, model_input
from ..model import eval_mode
from .causal import ABSOLUTE_TOLERANCE, counterfactual_success
from .quad import QUADRANTS, corner_masks

__all__ = ["VALUE_LIMIT", "quad_counterfactual_accuracy", "quadrant_values"]

VALUE_LIMIT = 3.0
"""Standardised values read from colours are clipped to ``[-VALUE_LIMIT, VALUE_LIMIT]`` (and
so are the true values they are compared with): past 3 standard deviations the colour moves by
less than an 8-bit level, so the value cannot be read back."""
_PATH_POINTS = 4001


def _colour_path() -> tuple[Tensor, Tensor]:
    """Points ``v`` in [0, 1] and their colours ``(P, 3)`` in [0, 1] along quad's colour map
    (``quad_render.colormap`` before its 8-bit truncation)."""
    v = torch.linspace(0, 1, _PATH_POINTS, dtype=torch.float64)
    t = 5 * v
    segment = torch.clamp(t.floor(), max=4).long()
    frac = (t - segment)[:, None]
    corners = torch.from_numpy(quad_render.COLOURS)
    return v, (1 - frac) * corners[segment] + frac * corners[segment + 1]


def quadrant_values(images: Tensor) -> Tensor:
    """Read the standardised values of ``quad1`` ... ``quad4`` back from quad images.

    Each quadrant's mean colour over its corner region (``corner_masks``, which no
    shape reaches) is mapped to the nearest point of the colour map's path, whose position
    ``v`` in [0, 1] is ``Phi`` of the standardised value; the value is ``Phi^-1(v)`` clipped to
    ``[-VALUE_LIMIT, VALUE_LIMIT]``.

    Args:
        images: float ``(N, 3, H, W)`` in ``[0, 1]``.

    Returns:
        float64 ``(N, 4)``, columns in the order of :data:`QUADRANTS`.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    masks = corner_masks(tuple(images.shape[-2:]))
    v, path = _colour_path()
    columns = []
    for name in QUADRANTS:
        colour = images[:, :, masks[name]].double().mean(dim=2)  # (N, 3)
        nearest = torch.cdist(colour, path).argmin(dim=1)
        columns.append(v[nearest])
    normal = torch.distributions.Normal(0.0, 1.0)
    values = normal.icdf(torch.stack(columns, dim=1).clamp(1e-12, 1 - 1e-12))
    return values.clamp(-VALUE_LIMIT, VALUE_LIMIT)


def _quadrant_truth(latents: np.ndarray, dependent: bool) -> Tensor:
    """The standardised values of the quadrants of raw latents, clipped as read: ``(N, 4)``."""
    columns = [quad.LATENT_NAMES.index(name) for name in QUADRANTS]
    values = torch.from_numpy(quad.standardize(latents, dependent)[:, columns])
    return values.clamp(-VALUE_LIMIT, VALUE_LIMIT)


@torch.no_grad()
def quad_counterfactual_accuracy(
    model,
    obs_images,
    obs_latents,
    concepts: Sequence[str] = quad.CONCEPTS,
    *,
    dependent: bool = True,
    tolerance: float = ABSOLUTE_TOLERANCE,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Per-image counterfactual accuracy of ``model.counterfactual`` on quad images.

    For every observational image, every intervened concept ``q`` and every quadrant: the
    edit's shift is the quadrant's value read from ``model.counterfactual(image, q)`` minus the
    value read from ``model.counterfactual(image, "obs")`` (the identity edit); the true shift
    is the quadrant's standardised value in the SCM's counterfactual of that image
    (``quad.counterfactual_latents``) minus its value in the image (both clipped to
    ``VALUE_LIMIT``). Cases are scored by ``counterfactual_success``.

    Args:
        model: a ``ContextAutoencoder`` over quad's concepts (its modes are restored after).
        obs_images: observational quad images, ``uint8`` ``(N, 64, 64, 3)`` or float
            ``(N, 3, H, W)`` in ``[0, 1]``, resized to the model's resolution if needed.
        obs_latents: their raw latents ``(N, 8)``, as ``quad.sample("obs", ...)`` returns.
        concepts: the concepts to intervene on.
        dependent: the quad variant the images come from.
        tolerance: the absolute tolerance of ``counterfactual_success``.
        batch_size: images per pass.

    Returns:
        A JSON-serializable dict: ``summary`` with ``success_intervened`` (the rate over the
        quadrant of the intervened concept, for quadrant concepts), ``success_all`` (over every
        quadrant under every intervention), ``mean_error`` and ``no_edit_error`` (over every
        case); ``per_concept``: for each ``q``, the same four and per quadrant ``success``,
        ``mean_error``, ``no_edit_error`` and ``mean_true_shift``; ``num_images``,
        ``tolerance``, ``dependent``.
    """
    concepts = list(concepts)
    for q in concepts:
        if q not in quad.CONCEPTS:
            raise ValueError(f"unknown concept {q!r}; valid: {', '.join(quad.CONCEPTS)}")
    latents = np.asarray(obs_latents, dtype=np.float32)
    if len(obs_images) != len(latents) or len(latents) == 0:
        raise ValueError(
            f"obs_images ({len(obs_images)}) and obs_latents ({len(latents)}) must be equally "
            f"many, and at least one"
        )
    before = _quadrant_truth(latents, dependent)
    images = torch.as_tensor(obs_images)
    read = {q: [] for q in [OBSERVATIONAL, *concepts]}
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            pixels = model_input(images[start : start + batch_size], model.resolution)
            for q in read:
                read[q].append(quadrant_values(model.counterfactual(pixels, q).cpu()))
    unedited = torch.cat(read[OBSERVATIONAL])
    per_concept, cases = {}, []
    for q in concepts:
        truth = quad.counterfactual_latents(latents, q, dependent)
        after = _quadrant_truth(truth, dependent)
        scored = counterfactual_success(torch.cat(read[q]) - unedited, after - before, tolerance)
        scored["true_shift"] = after - before
        cases.append(scored)
        per_concept[q] = _summary([scored], q) | {
            region: {
                "success": scored["success"][:, r].double().mean().item(),
                "mean_error": scored["error"][:, r].mean().item(),
                "no_edit_error": scored["no_edit_error"][:, r].mean().item(),
                "mean_true_shift": scored["true_shift"][:, r].mean().item(),
            }
            for r, region in enumerate(QUADRANTS)
        }
    intervened = [cases[i] for i, q in enumerate(concepts) if q in QUADRANTS]
    summary = _summary(cases, None)
    summary["success_intervened"] = _summary(intervened, "all")["success_intervened"]
    return {
        "summary": summary,
        "per_concept": per_concept,
        "num_images": len(latents),
        "tolerance": tolerance,
        "dependent": bool(dependent),
    }


def _summary(cases: list[dict[str, Tensor]], concept: str | None) -> dict:
    """Rates and mean errors over ``cases`` (one dict of ``(N, 4)`` tensors per concept);
    ``success_intervened`` reads the column of ``concept`` (each case's own concept for
    ``"all"``; None for no quadrant concept)."""
    if not cases:
        return {"success_intervened": None}
    stacked = {k: torch.stack([c[k] for c in cases]) for k in ("success", "error", "no_edit_error")}
    out = {
        "success_all": stacked["success"].double().mean().item(),
        "mean_error": stacked["error"].mean().item(),
        "no_edit_error": stacked["no_edit_error"].mean().item(),
        "success_intervened": None,
    }
    if concept == "all":
        own = [c["success"][:, int(c["true_shift"].abs().mean(0).argmax())] for c in cases]
        out["success_intervened"] = torch.stack(own).double().mean().item()
    elif concept in QUADRANTS:
        own = cases[0]["success"][:, QUADRANTS.index(concept)]
        out["success_intervened"] = own.double().mean().item()
    return out
