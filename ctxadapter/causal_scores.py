"""Causal fidelity of a trained adapter, image by image (``docs/evaluation.md``).

- ``counterfactual_success``: does each edit move each measured variable by the *true*
  counterfactual shift of that image? Generic: any data whose true counterfactuals are known.
- ``quad_counterfactual_accuracy``: the same on quad, where the true counterfactual of every
  image is known (``ctxadapter.data.quad.counterfactual_latents``) and the four quadrants'
  values can be read back from an image's colours (``quadrant_values``).
- ``block_identifiability``: how well each concept's true value is predicted, by a
  cross-validated linear probe, from that concept's own block of the posterior concept values,
  from the other blocks and from all of them.

    from ctxadapter import ContextAutoencoder
    from ctxadapter.causal_scores import block_identifiability, quad_counterfactual_accuracy
    from ctxadapter.data import quad

    model = ContextAutoencoder.from_pretrained("my-adapter")
    images, latents = quad.sample("obs", 200, split="test")
    print(quad_counterfactual_accuracy(model, images, latents)["summary"])
    print(block_identifiability(model, images, quad.concept_values(latents))["summary"])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .contexts import OBSERVATIONAL
from .data import quad, quad_render
from .images import DEFAULT_BATCH_SIZE, prepare_images, to_float
from .model import eval_mode
from .quad_scores import QUADRANTS, corner_masks

__all__ = [
    "ABSOLUTE_TOLERANCE",
    "VALUE_LIMIT",
    "block_identifiability",
    "counterfactual_success",
    "quad_counterfactual_accuracy",
    "quadrant_values",
]

ABSOLUTE_TOLERANCE = 0.25
"""A case also succeeds when its error is below this (standardised units): the tolerance for
true shifts near 0 (non-descendants), where half the shift would ask for exactness."""
VALUE_LIMIT = 3.0
"""Standardised values read from colours are clipped to ``[-VALUE_LIMIT, VALUE_LIMIT]`` (and
so are the true values they are compared with): past 3 standard deviations the colour moves by
less than an 8-bit level, so the value cannot be read back."""
_PATH_POINTS = 4001


def counterfactual_success(
    edit_shift: Tensor, true_shift: Tensor, tolerance: float = ABSOLUTE_TOLERANCE
) -> dict[str, Tensor]:
    """Score edits against the true counterfactual shifts, case by case.

    A case (one image, one measured variable) succeeds when
    ``|edit_shift - true_shift| <= max(|true_shift| / 2, tolerance)``: the edit lands within
    half of the true shift, or within ``tolerance`` when the true shift is small.

    Args:
        edit_shift: the edit's change of each variable (edited minus unedited), any shape.
        true_shift: the true counterfactual change, the same shape.
        tolerance: the absolute tolerance, >= 0.

    Returns:
        ``error`` (``|edit_shift - true_shift|``), ``no_edit_error`` (``|true_shift|``, the error
        of leaving the image as it is) and ``success`` (bool), each of the input's shape.
    """
    edit_shift, true_shift = torch.as_tensor(edit_shift), torch.as_tensor(true_shift)
    if edit_shift.shape != true_shift.shape:
        raise ValueError(
            f"edit_shift has shape {tuple(edit_shift.shape)}, true_shift "
            f"{tuple(true_shift.shape)}; they must match"
        )
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    error = (edit_shift - true_shift).abs()
    no_edit = true_shift.abs()
    success = error <= torch.clamp(no_edit / 2, min=tolerance)
    return {"error": error, "no_edit_error": no_edit, "success": success}


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

    Each quadrant's mean colour over its corner region (``quad_scores.corner_masks``, which no
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


def _float_images(images, resolution: tuple[int, int]) -> Tensor:
    return to_float(prepare_images(torch.as_tensor(images), resolution))


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
            pixels = _float_images(images[start : start + batch_size], model.resolution)
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


def _ridge_r2(features: Tensor, target: Tensor, folds: int, ridge: float) -> float:
    """Cross-validated R^2 of a ridge regression of ``target`` ``(N,)`` on ``features``
    ``(N, D)`` (standardised on each training fold): ``1 - SSE / SST`` over the pooled
    held-out predictions, ``SST`` around the target's mean."""
    n = len(target)
    order = torch.arange(n)
    predictions = torch.empty(n, dtype=torch.float64)
    for fold in range(folds):
        test = order % folds == fold
        x, y = features[~test], target[~test]
        mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
        x = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        penalty = ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
        penalty[-1, -1] = 0  # the intercept is not shrunk
        coef = torch.linalg.solve(x.T @ x + penalty, x.T @ y)
        x_test = (features[test] - mean) / std
        predictions[test] = x_test @ coef[:-1] + coef[-1]
    sst = (target - target.mean()).pow(2).sum()
    return (1 - (target - predictions).pow(2).sum() / sst).item()


@torch.no_grad()
def block_identifiability(
    model,
    images,
    true_values,
    *,
    folds: int = 5,
    ridge: float = 1e-3,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Own-block identifiability: is concept ``k`` read from its own block of the adapter?

    The posterior concept values of each observational image are the causal layer's output
    ``c`` (``(N, K*w_out)``) for the posterior mean of its noise, in the observational context.
    For every concept ``k``, a ridge regression (``ridge`` times the row count, on standardised
    features) predicts its true value from block ``k`` of ``c`` (``own``), from every other
    block (``others``) and from all blocks (``all``, the ceiling); each is scored by its
    ``folds``-fold cross-validated R^2.

    Args:
        model: a ``ContextAutoencoder`` (its modes are restored afterwards).
        images: observational images, ``uint8`` ``(N, H, W, 3)`` or ``(N, 3, H, W)``, or float
            ``(N, 3, H, W)`` in ``[0, 1]``; resized to the model's resolution if needed.
        true_values: ``(N, K)`` true values of the adapter's concepts, in its order.
        folds: cross-validation folds (rows are assigned round-robin), >= 2.
        ridge: the ridge penalty per row, >= 0.
        batch_size: images per pass.

    Returns:
        ``per_concept``: ``{name: {"own", "others", "all"}}`` R^2 values; ``summary``:
        ``min_own`` over the concepts, ``num_images``, ``folds``.
    """
    adapter = model.adapter
    k, width = len(adapter.concepts), adapter.causal.width
    values = torch.as_tensor(np.asarray(true_values), dtype=torch.float64)
    if values.ndim != 2 or values.shape[1] != k or len(values) != len(images):
        raise ValueError(
            f"true_values must have shape ({len(images)}, {k}) (one row per image, one column "
            f"per concept of the adapter), got {tuple(values.shape)}"
        )
    if not (isinstance(folds, int) and 2 <= folds <= len(values)):
        raise ValueError(f"folds must be an integer in [2, {len(values)}], got {folds!r}")
    images = torch.as_tensor(images)
    chunks = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            mean = model.encode_noise(
                _float_images(images[start : start + batch_size], model.resolution)
            )
            chunks.append(adapter.concepts_from_noise(mean, OBSERVATIONAL).double().cpu())
    concepts = torch.cat(chunks)
    per_concept = {}
    for i, name in enumerate(adapter.concepts):
        own = torch.zeros(k * width, dtype=torch.bool)
        own[i * width : (i + 1) * width] = True
        target = values[:, i]
        per_concept[name] = {
            "own": _ridge_r2(concepts[:, own], target, folds, ridge),
            "others": _ridge_r2(concepts[:, ~own], target, folds, ridge),
            "all": _ridge_r2(concepts, target, folds, ridge),
        }
    return {
        "per_concept": per_concept,
        "summary": {"min_own": min(v["own"] for v in per_concept.values())},
        "num_images": len(values),
        "folds": folds,
    }
