"""Causal fidelity of a trained adapter on any data whose truth is known
(``docs/evaluation.md``); quad's own readings of these are in ``ctxadapter.evaluation.quad``.

- ``counterfactual_success``: does each edit move each measured variable by the *true*
  counterfactual shift of that image? Case by case, against a tolerance.
- ``graph_auroc``: how well the magnitudes of a learned concept graph rank the true
  (ancestral) relations above the absent ones.
- ``block_identifiability``: how well each concept's true value is predicted, by a
  cross-validated linear probe, from that concept's own block of the posterior concept values,
  from the other blocks and from all of them.

    from ctxadapter import ContextAutoencoder
    from ctxadapter.data import quad
    from ctxadapter.evaluation import block_identifiability, graph_auroc

    model = ContextAutoencoder.from_pretrained("my-adapter")
    truth = quad.ancestral_relation(model.adapter.concepts, dependent=True)
    print(graph_auroc(model.adapter.concept_graph(), truth))
    images, latents = quad.sample("obs", 200, split="test")
    print(block_identifiability(model, images, quad.concept_values(latents))["summary"])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..contexts import OBSERVATIONAL
from ..images import DEFAULT_BATCH_SIZE, model_input
from ..model import eval_mode

__all__ = [
    "ABSOLUTE_TOLERANCE",
    "block_identifiability",
    "counterfactual_success",
    "graph_auroc",
]

ABSOLUTE_TOLERANCE = 0.25
"""A case also succeeds when its error is below this (standardised units): the tolerance for
true shifts near 0 (non-descendants), where half the shift would ask for exactness."""


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


def graph_auroc(graph: Tensor, truth: Tensor) -> float:
    """AUROC of the off-diagonal magnitudes ``|graph[i, j]|`` as scores of ``truth[i, j]``.

    The Mann-Whitney statistic over every (positive, negative) pair of off-diagonal entries,
    a tie counting 1/2, divided by ``n_pos * n_neg``: 1.0 when every true relation has a larger
    magnitude than every absent one, 0.0 when every one has a smaller magnitude, 0.5 for all
    ties.

    Args:
        graph: ``(K, K)`` finite learned effects, e.g. ``CtxAdapter.concept_graph()`` (entry
            ``(i, j)``: effect of concept ``j`` on concept ``i``).
        truth: ``(K, K)`` bool (or 0/1) true relations in the same layout, e.g.
            ``quad.ancestral_relation``; its off-diagonal must hold both values.

    Returns:
        The AUROC, in ``[0, 1]``.
    """
    graph = torch.as_tensor(graph).detach().cpu()
    truth = torch.as_tensor(truth).detach().cpu()
    if graph.ndim != 2 or graph.shape[0] != graph.shape[1] or graph.shape[0] < 2:
        raise ValueError(f"graph must be square (K, K) with K >= 2, got shape {tuple(graph.shape)}")
    if truth.shape != graph.shape:
        raise ValueError(
            f"truth has shape {tuple(truth.shape)}, the graph {tuple(graph.shape)}; they must match"
        )
    if not bool(torch.isfinite(graph).all()):
        raise ValueError(f"graph holds non-finite values: {graph.tolist()}")
    if truth.dtype != torch.bool:
        if not bool(((truth == 0) | (truth == 1)).all()):
            raise ValueError(f"truth must be bool or 0/1, got values {truth.unique().tolist()}")
        truth = truth == 1
    off = ~torch.eye(graph.shape[0], dtype=torch.bool)
    scores, labels = graph.abs().double()[off], truth[off]
    positives, negatives = scores[labels], scores[~labels]
    if positives.numel() == 0 or negatives.numel() == 0:
        raise ValueError(
            f"the off-diagonal of truth has {positives.numel()} positives and "
            f"{negatives.numel()} negatives; AUROC needs at least one of each"
        )
    above = (positives[:, None] > negatives[None, :]).sum().item()
    ties = (positives[:, None] == negatives[None, :]).sum().item()
    return (above + 0.5 * ties) / (positives.numel() * negatives.numel())


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
            pixels = model_input(images[start : start + batch_size], model.resolution)
            mean = model.encode_noise(pixels)
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
