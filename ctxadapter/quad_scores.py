"""Deprecated: ``ctxadapter.quad_scores`` moved to ``ctxadapter.evaluation.quad`` and
``ctxadapter.evaluation.causal``; this alias warns and will be removed in the next release."""

import warnings

warnings.warn(
    "ctxadapter.quad_scores is deprecated and will be removed in the next release; import from "
    "ctxadapter.evaluation instead.",
    DeprecationWarning,
    stacklevel=2,
)

from .evaluation.causal import graph_auroc  # noqa: E402
from .evaluation.quad import (  # noqa: E402
    CORNER_RADIUS,
    MIN_TARGET_DISTANCE,
    QUADRANTS,
    corner_masks,
    counterfactual_shifts,
)

__all__ = [
    "CORNER_RADIUS",
    "MIN_TARGET_DISTANCE",
    "QUADRANTS",
    "corner_masks",
    "counterfactual_shifts",
    "graph_auroc",
]
