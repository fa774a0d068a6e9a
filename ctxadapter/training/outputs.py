"""The output folder of a fine-tuning run: pictures, the adapter, ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator

from ..model import ContextAutoencoder
from ..viz import concept_graph_image, write_report
from .args import FinetuneArguments
from .inputs import FinetuneInputs
from .state import staged_folder, trainable_state
from .tracking import log_image


def write_outputs(
    args: FinetuneArguments,
    model: ContextAutoencoder,
    inputs: FinetuneInputs,
    outcome: dict,
    accelerator: Accelerator,
) -> None:
    """Write the output folder: the pictures of ``write_report``, the adapter
    (``save_pretrained``, with its model card) and ``metrics.json`` (``outcome`` and a summary
    of the data); then push the adapter to the Hub if ``--push_to_hub``.

    Non-finite weights are an error before anything is written. The adapter and
    ``metrics.json`` are written through ``staged_folder``, so a failed write (a full disk)
    leaves a previous adapter as it was."""
    diverged = [k for k, v in trainable_state(model).items() if not torch.isfinite(v).all()]
    if diverged:
        raise FloatingPointError(
            f"Training diverged: non-finite weights in {diverged[:5]}. Nothing was saved; try a "
            f"lower --learning_rate."
        )
    output = Path(args.output_dir)
    files = write_report(
        model,
        output,
        num_samples=args.num_validation_images,
        seed=args.seed,
        compositions=inputs.compositions,
    )
    graph = concept_graph_image(model.adapter.concept_graph(), inputs.concepts)
    log_image(accelerator, "concept_graph", graph, outcome["steps"])
    metrics = outcome | {
        "concepts": inputs.concepts,
        "train_images": len(inputs.train),
        "validation_images": len(inputs.validation),
        "pictures": sorted(Path(p).name for p in files.values()),
    }
    with staged_folder(output) as partial:
        model.save_pretrained(partial, model_card_kwargs={"sample_grid": "contexts.png"})
        text = json.dumps(metrics, indent=2, allow_nan=False)
        (partial / "metrics.json").write_text(text + "\n")
    if args.push_to_hub:
        model.push_to_hub(args.hub_model_id or output.name, token=args.hub_token)
