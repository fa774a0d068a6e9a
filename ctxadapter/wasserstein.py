"""Deprecated: ``ctxadapter.wasserstein`` moved to ``ctxadapter.evaluation.wasserstein``; this
alias warns and will be removed in the next release."""

import warnings

warnings.warn(
    "ctxadapter.wasserstein is deprecated and will be removed in the next release; import from "
    "ctxadapter.evaluation instead.",
    DeprecationWarning,
    stacklevel=2,
)

from .evaluation.wasserstein import (  # noqa: E402
    check_order,
    flatten_pair,
    grouped_sliced_wasserstein,
    random_projections,
    sliced_wasserstein,
    wasserstein_1d,
)

__all__ = [
    "check_order",
    "flatten_pair",
    "grouped_sliced_wasserstein",
    "random_projections",
    "sliced_wasserstein",
    "wasserstein_1d",
]
