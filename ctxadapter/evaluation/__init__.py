"""Evaluation of a trained adapter: every score computed once, in one place
(``docs/evaluation.md``).

- ``wasserstein``: exact 1-D, sliced and grouped sliced Wasserstein distances (the objective's
  sample matching uses the grouped one);
- ``metrics``: Concept / Compo (SW2 per context), Recon (bits per pixel), PSNR, MSE: pure
  functions of images;
- ``paper_scores``: ``evaluate`` (Concept, Compo, Recon and PSNR of a model on held-out images,
  the paper's protocol) and ``format_table``;
- ``edits``: ``edit_scores``, how counterfactual edits keep and change images of any data;
- ``causal``: scores against a known truth: ``counterfactual_success`` (case by case),
  ``graph_auroc`` (a concept graph against the true relations), ``block_identifiability``
  (own-block linear probes);
- ``quad``: what only the quad dataset allows: its held-out images, its quadrants' corners and
  ``counterfactual_shifts``;
- ``quad_counterfactuals``: its quadrants' colours read back (``quadrant_values``) and per-image
  ``quad_counterfactual_accuracy``.

Every name below is importable from here; the submodules load when a name is first used, so
that the core (``ctxadapter.objective`` imports ``ctxadapter.evaluation.wasserstein``) never
loads the model-dependent scores::

    from ctxadapter import ContextAutoencoder
    from ctxadapter.evaluation import evaluate, format_table, heldout_quad_images

    model = ContextAutoencoder.from_pretrained("my-adapter")
    results = evaluate(model, heldout_quad_images(400, dependent=True))
    print(format_table(results))
"""

from __future__ import annotations

import importlib

_SUBMODULE = {
    "evaluate": ".paper_scores",
    "format_table": ".paper_scores",
    "generation_seed": ".paper_scores",
    "ConceptCompoScores": ".metrics",
    "concept_compo_scores": ".metrics",
    "mse": ".metrics",
    "psnr": ".metrics",
    "recon_bits_per_pixel": ".metrics",
    "random_projections": ".wasserstein",
    "sliced_wasserstein": ".wasserstein",
    "wasserstein_1d": ".wasserstein",
    "edit_scores": ".edits",
    "block_identifiability": ".causal",
    "counterfactual_success": ".causal",
    "graph_auroc": ".causal",
    "QUADRANTS": ".quad",
    "corner_masks": ".quad",
    "counterfactual_shifts": ".quad",
    "heldout_quad_images": ".quad",
    "quad_counterfactual_accuracy": ".quad_counterfactuals",
    "quadrant_values": ".quad_counterfactuals",
    "DEFAULT_BATCH_SIZE": "..images",
    "prepare_images": "..images",
}
"""Each public name -> the module that defines it, relative to this package."""

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str):
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SUBMODULE[name], __name__), name)
    globals()[name] = value  # found once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULE})
