"""Deprecated: ``ctxadapter.edit_scores`` moved to ``ctxadapter.evaluation.edits``; this alias
warns and will be removed in the next release."""

import warnings

warnings.warn(
    "ctxadapter.edit_scores is deprecated and will be removed in the next release; import from "
    "ctxadapter.evaluation instead.",
    DeprecationWarning,
    stacklevel=2,
)

from .evaluation.edits import edit_scores  # noqa: E402

__all__ = ["edit_scores"]
