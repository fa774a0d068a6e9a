"""The model card of a saved adapter (``README.md``), built with ``huggingface_hub``'s card
utilities: YAML metadata the Hub reads (``library_name``, ``tags``, ``license``,
``base_model`` with ``base_model_relation: adapter``, ``datasets``), then what the adapter is,
how to load it, how it was trained and what was measured."""

from __future__ import annotations

import os
from collections.abc import Mapping

from huggingface_hub import ModelCard, ModelCardData

PAPER_URL = "https://arxiv.org/abs/2507.04754"
"""Markham et al., "Intervening to Learn and Compose Causally Disentangled Representations"."""

TAGS = ["ctxadapter", "causal-representation-learning", "autoencoder", "context-module"]
"""The Hub tags of every adapter."""


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repository id (``"org/name"``) rather than a folder."""
    return (
        bool(name) and not os.path.isabs(name) and not os.path.isdir(name) and name.count("/") == 1
    )


def model_card(
    config: Mapping,
    *,
    repo_id: str | None = None,
    sample_grid: str | None = None,
    training_command: str | None = None,
    results: Mapping[str, object] | None = None,
    dataset: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The model card of an adapter.

    Args:
        config: the adapter's config (``CtxAdapter.config``): its concepts, latent shape and
            base autoencoder.
        repo_id: the Hub repository (or folder) the adapter is loaded from, used in the usage
            snippet (default: a placeholder).
        sample_grid: the file name of a sample picture in the same folder, shown in the card.
        training_command: the command that trained the adapter.
        results: measured numbers (name -> value), shown as a table.
        dataset: the training dataset; listed in the metadata when it is a Hub id.
        license: the adapter's license (the project's own, Apache-2.0, by default).
    """
    base = (config.get("base_model") or {}).get("pretrained_model_name_or_path")
    concepts = list(config["concepts"])
    data = ModelCardData(
        library_name="ctxadapter",
        license=license,
        tags=list(TAGS),
        base_model=base if is_hub_id(base) else None,
        base_model_relation="adapter" if is_hub_id(base) else None,
        datasets=[dataset] if is_hub_id(dataset) else None,
    )
    example = concepts[0] if len(concepts) < 2 else "+".join(concepts[:2])
    body = [
        "# ctxadapter context adapter",
        "",
        f"A context module ([paper]({PAPER_URL})) trained on top of the frozen autoencoder "
        f"`{base or 'unknown'}`: concepts that can be switched on one at a time, composed, read "
        f"as a concept graph and applied to images as counterfactual edits. Concepts: "
        f"{', '.join(f'`{c}`' for c in concepts)}. Latent shape: "
        f"`{list(config['latent_shape'])}`."
        + (" Pooled ablation: contexts ignored." if config.get("pooled") else ""),
        "",
    ]
    if sample_grid:
        body += [f"![Samples under each context]({sample_grid})", ""]
    body += [
        "## Usage",
        "",
        "```python",
        "from ctxadapter import ContextAutoencoder",
        "",
        f'model = ContextAutoencoder.from_pretrained("{repo_id or "<repo-id>"}")',
        f'images = model.generate("{concepts[0]}", num_samples=8)  # one concept',
        f'composed = model.generate("{example}", num_samples=8)  # a composition',
        f'edited = model.counterfactual(photos, "{concepts[0]}")  # photos: PIL or [0, 1] tensors',
        "graph = model.adapter.concept_graph()  # K x K effects between concepts",
        "```",
        "",
    ]
    if training_command:
        body += ["## Training", "", "```bash", training_command, "```", ""]
    if results:
        body += ["## Results", "", "| measure | value |", "|---|---|"]
        body += [f"| {name} | {value} |" for name, value in results.items()] + [""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
