"""Deprecated: ``ctxadapter.metrics`` moved to ``ctxadapter.evaluation.metrics``; this alias warns
and will be removed in the next release."""

import warnings

warnings.warn(
    "ctxadapter.metrics is deprecated and will be removed in the next release; import from "
    "ctxadapter.evaluation instead.",
    DeprecationWarning,
    stacklevel=2,
)

from .evaluation.metrics import (  # noqa: E402
    ConceptCompoScores,
    concept_compo_scores,
    mse,
    psnr,
    recon_bits_per_pixel,
)

__all__ = ["ConceptCompoScores", "concept_compo_scores", "mse", "psnr", "recon_bits_per_pixel"]
