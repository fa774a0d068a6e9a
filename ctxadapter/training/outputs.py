"""The output folder of a fine-tuning run: pictures, the adapter, ``metrics.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from accelerate import Accelerator

from ..images import prepare_images, to_float
from ..model import ContextAutoencoder
from ..viz import concept_graph_image, write_report
from .finetune_args import PRESETS, FinetuneArguments
from .flags import SECRET_FLAGS
from .inputs import FinetuneInputs
from .output_dir import staged_folder
from .state import trainable_state
from .tracking import log_image

EDIT_EXAMPLES = 8
"""Held-out images edited in ``counterfactuals.png`` of a run on quad."""


def quad_references(args: FinetuneArguments, model: ContextAutoencoder, concepts) -> dict:
    """For the built-in quad data, what the pictures can show beside the adapter's own:
    ``EDIT_EXAMPLES`` held-out observational images to edit, their true counterfactuals under
    each concept, and the true ancestral relation among the concepts (``write_report``'s
    ``images``, ``truths`` and ``true_graph``); nothing for other data."""
    if not args.uses_quad:
        return {}
    from ..data import quad

    dependent = args.quad_variant == "dependent"
    images, truths = quad.counterfactual_examples(
        EDIT_EXAMPLES, concepts, seed=args.seed, dependent=dependent
    )

    def pixels(batch) -> torch.Tensor:
        return to_float(prepare_images(torch.from_numpy(batch), model.resolution))

    return {
        "images": pixels(images),
        "truths": {name: pixels(batch) for name, batch in truths.items()},
        "true_graph": quad.ancestral_relation(concepts, dependent),
    }


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
        **quad_references(args, model, inputs.concepts),
    )
    graph = concept_graph_image(model.adapter.concept_graph(), inputs.concepts)
    log_image(accelerator, "concept_graph", graph, outcome["steps"])
    metrics = outcome | {
        "concepts": inputs.concepts,
        "train_images": len(inputs.train_contexts),
        "validation_images": len(inputs.validation_contexts),
        "pictures": sorted(Path(p).name for p in files.values()),
    }
    card = {
        "repo_id": args.output_dir,  # push_to_hub names the Hub repository instead
        "sample_grid": "contexts.png",
        "training_command": training_command(args),
        "results": {
            "optimizer steps": outcome["steps"],
            "best validation loss": f"{outcome['best_validation_loss']:.5g}",
            "training / validation images": (
                f"{len(inputs.train_contexts)} / {len(inputs.validation_contexts)}"
            ),
        },
        "dataset": args.dataset_name,
    }
    with staged_folder(output) as partial:
        model.save_pretrained(partial, model_card_kwargs=card)
        text = json.dumps(metrics, indent=2, allow_nan=False)
        (partial / "metrics.json").write_text(text + "\n")
    if args.push_to_hub:
        model.push_to_hub(
            args.hub_model_id or output.name,
            token=args.hub_token,
            base_model_id=args.hub_base_model_id,
            extra_files=[output / Path(p).name for p in files.values()],
            model_card_kwargs=card,
        )


NOT_IN_COMMAND = (*SECRET_FLAGS, "overwrite_output_dir", "resume_from_checkpoint")
"""Flags left out of the training command of the model card (secret, or about this folder)."""


def training_command(args: FinetuneArguments) -> str:
    """The command that trains ``args``: ``accelerate launch examples/finetune.py``, its
    ``--preset`` unless it is the default one, and each flag that differs from the preset's
    default."""
    defaults = FinetuneArguments(**PRESETS[args.preset])
    parts = ["accelerate launch examples/finetune.py"]
    if args.preset != FinetuneArguments.preset:
        parts.append(f"--preset {args.preset}")
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if f.name in NOT_IN_COMMAND + ("preset",) or value == getattr(defaults, f.name):
            continue
        if isinstance(value, bool):
            parts.append(f"--{f.name}" if value else "")
        elif isinstance(value, list):
            parts.append(f"--{f.name} " + " ".join(map(str, value)))
        else:
            parts.append(f"--{f.name} {value}")
    return " \\\n    ".join(p for p in parts if p)
