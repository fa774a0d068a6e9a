"""Deprecated: ``ctxadapter.causal_scores`` moved to ``ctxadapter.evaluation.causal`` and
``ctxadapter.evaluation.quad``; this alias warns and will be removed in the next release."""

import warnings

warnings.warn(
    "ctxadapter.causal_scores is deprecated and will be removed in the next release; import from "
    "ctxadapter.evaluation instead.",
    DeprecationWarning,
    stacklevel=2,
)

from .evaluation.causal import (  # noqa: E402
    ABSOLUTE_TOLERANCE,
    block_identifiability,
    counterfactual_success,
)
from .evaluation.quad import (  # noqa: E402
    VALUE_LIMIT,
    quad_counterfactual_accuracy,
    quadrant_values,
)

__all__ = [
    "ABSOLUTE_TOLERANCE",
    "VALUE_LIMIT",
    "block_identifiability",
    "counterfactual_success",
    "quad_counterfactual_accuracy",
    "quadrant_values",
]
