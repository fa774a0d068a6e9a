"""The model card of a saved adapter (``README.md``), built with ``huggingface_hub``'s card
utilities: YAML metadata the Hub reads (``library_name``, ``tags``, ``license``,
``base_model`` with ``base_model_relation: adapter``, ``datasets``), then what the adapter is,
how to load it, how it was trained and what was measured."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from huggingface_hub import ModelCard, ModelCardData

PAPER_URL = "https://arxiv.org/abs/2507.04754"
"""Markham et al., "Intervening to Learn and Compose Causally Disentangled Representations"."""

TAGS = ["ctxadapter", "causal-representation-learning", "autoencoder", "context-module"]
"""The Hub tags of every adapter."""

PICTURE_CAPTIONS = {
    "contexts.png": "Real images and samples under each context",
    "compositions.png": "Samples under compositions of concepts",
    "concept_graph.png": "The learned concept graph",
    "counterfactuals.png": "Counterfactual edits of real images",
}
"""Captions of the pictures a training run writes, by file name."""
LOCAL_FOLDER = "my-adapter"
"""The folder named by the usage snippet of a card that names no repository."""


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
    pictures: Sequence[str] = (),
) -> ModelCard:
    """The model card of an adapter.

    Args:
        config: the adapter's config (``CtxAdapter.config``): its concepts, latent shape and
            base autoencoder.
        repo_id: the Hub repository (or folder) the adapter is loaded from, used in the usage
            snippet (default: a local folder, ``LOCAL_FOLDER``).
        sample_grid: the file name of a sample picture in the same folder, shown in the card.
        training_command: the command that trained the adapter.
        results: measured numbers (name -> value), shown as a table.
        dataset: the training dataset; listed in the metadata when it is a Hub id.
        license: the adapter's license (the project's own, Apache-2.0, by default).
        pictures: file names of more pictures in the same folder, shown under "Pictures"
            with their ``PICTURE_CAPTIONS``.
    """
    record = config.get("base_model") or {}
    base = record.get("pretrained_model_name_or_path")
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
        base_pin(record),
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
        f'model = ContextAutoencoder.from_pretrained("{repo_id or LOCAL_FOLDER}")',
        f'images = model.generate("{concepts[0]}", num_samples=8)  # one concept',
        f'composed = model.generate("{example}", num_samples=8)  # a composition',
        f'edited = model.counterfactual(photos, "{concepts[0]}")  # photos: PIL or [0, 1] tensors',
        "graph = model.adapter.concept_graph()  # K x K effects between concepts",
        "```",
        "",
    ]
    if pictures:
        body += ["## Pictures", ""]
        for name in pictures:
            caption = PICTURE_CAPTIONS.get(name, name)
            body += [f"**{caption}**", "", f"![{caption}]({name})", ""]
    if training_command:
        body += ["## Training", "", "```bash", training_command, "```", ""]
    if results:
        body += ["## Results", "", "| measure | value |", "|---|---|"]
        body += [f"| {name} | {value} |" for name, value in results.items()] + [""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def base_pin(record: Mapping) -> str:
    """A sentence naming the base autoencoder an adapter's ``base_model`` ``record`` pins:
    where it loads from, its class, the revision and the weights fingerprint."""
    name = record.get("pretrained_model_name_or_path")
    if not name:
        return "Base autoencoder: not recorded (pass it to `from_pretrained` with `autoencoder=`)."
    where = " (ships with ctxadapter)" if name.startswith("ctxadapter:") else ""
    pins = [f"class `{record.get('class_name')}`"]
    if record.get("revision"):
        pins.append(f"revision `{record['revision']}`")
    if record.get("fingerprint"):
        pins.append(f"weights fingerprint `{record['fingerprint']}`")
    return (
        f"Base autoencoder: `{name}`{where}, {', '.join(pins)}. `from_pretrained` loads it and "
        f"refuses a base with other weights."
    )


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"12 s"``, ``"3 min 35 s"`` or ``"1 h 02 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def card_kwargs(metrics: Mapping) -> dict:
    """``model_card`` keyword arguments for a training run's ``metrics.json`` (``metrics``):
    ``contexts.png`` as the sample grid, its other pictures, the training command, the
    dataset and a results table of what the run measured."""
    pictures = list(metrics.get("pictures", []))
    rows = {
        "stopped by": metrics.get("stop_reason"),
        "optimizer steps": metrics.get("steps"),
        "batch size": metrics.get("train_batch_size"),
        "best validation loss": metrics.get("best_validation_loss"),
        "training / validation images": (
            f"{metrics['train_images']} / {metrics['validation_images']}"
            if "train_images" in metrics
            else None
        ),
        "base reconstruction MSE (validation)": metrics.get("base_reconstruction_mse"),
        "training time": metrics.get("wall_time_s"),
    }
    formats = {
        "optimizer steps": "{:,}",
        "best validation loss": "{:.5g}",
        "base reconstruction MSE (validation)": "{:.3g}",
    }
    results = {
        name: format_duration(value)
        if name == "training time"
        else formats.get(name, "{}").format(value)
        for name, value in rows.items()
        if value is not None
    }
    return dict(
        sample_grid="contexts.png" if "contexts.png" in pictures else None,
        pictures=[name for name in pictures if name != "contexts.png"],
        training_command=metrics.get("training_command"),
        results=results,
        dataset=metrics.get("dataset"),
    )
