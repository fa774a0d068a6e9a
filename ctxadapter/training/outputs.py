"""The output folder of a fine-tuning run: pictures, the adapter, ``metrics.json``."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import torch
from accelerate import Accelerator
from PIL import Image

from ..card import card_kwargs, format_duration
from ..domain import DOMAIN_IMAGES, reconstruction_mse
from ..images import model_input, preprocess_images
from ..model import ContextAutoencoder
from ..viz import write_report
from .finetune_args import GRID_IMAGES, PRESETS, FinetuneArguments
from .inputs import FinetuneInputs, select_rows
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
        return model_input(torch.from_numpy(batch), model.resolution)

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
    repo_id: str | None = None,
) -> None:
    """Write the output folder: the pictures of ``write_report`` (``contexts.png`` with a row
    of validation images per context), the adapter (``save_pretrained``, with its model card:
    ``ctxadapter.card.card_kwargs`` of the metrics) and ``metrics.json`` (``outcome``, a
    summary of the data, the training command and the base autoencoder's reconstruction error
    on the validation images, also recorded in the adapter for ``ctxadapter.domain``); then
    push the folder to the Hub repository ``repo_id`` if one is given (``--push_to_hub``).

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
    real = validation_images(inputs, args.image_column, GRID_IMAGES)
    files = write_report(
        model,
        output,
        num_samples=GRID_IMAGES,
        seed=args.seed,
        compositions=inputs.compositions,
        real=real,
        **quad_references(args, model, inputs.concepts),
    )
    # the graph costs forward passes: log the picture just written rather than compute it twice
    with Image.open(files["concept_graph"]) as graph:
        log_image(accelerator, "concept_graph", graph.convert("RGB"), outcome["steps"])
    base_mse = base_reconstruction_mse(inputs, args.image_column)
    model.adapter.config["base_model"]["reconstruction_mse"] = base_mse
    metrics = outcome | {
        "concepts": inputs.concepts,
        "train_images": len(inputs.train_contexts),
        "validation_images": len(inputs.validation_contexts),
        "base_reconstruction_mse": base_mse,
        "training_command": training_command(args),
        "dataset": args.dataset_name,
        "pictures": sorted(Path(p).name for p in files.values()),
    }
    card = card_kwargs(metrics) | {"repo_id": args.output_dir}
    with staged_folder(output) as partial:
        model.save_pretrained(partial, model_card_kwargs=card)
        text = json.dumps(metrics, indent=2, allow_nan=False)
        (partial / "metrics.json").write_text(text + "\n")
    if repo_id:
        model.name_or_path = str(output)  # push this folder, as a Python push of it would
        model.push_to_hub(repo_id, base_model_id=args.hub_base_model_id)


def validation_images(
    inputs: FinetuneInputs, image_column: str, count: int
) -> dict[str, torch.Tensor]:
    """The first ``count`` validation images of each context, ``(n, 3, H, W)`` in ``[0, 1]``
    at the run's resolution, by canonical context name."""
    rows: dict[str, list[int]] = {}
    for row, context in enumerate(inputs.validation_contexts):
        if len(rows.setdefault(context, [])) < count:
            rows[context].append(row)
    return {
        context: preprocess_images(
            list(
                select_rows(inputs.validation, picked, len(inputs.validation_contexts))[
                    image_column
                ]
            ),
            inputs.resolution,
            output="unit",
        )
        for context, picked in rows.items()
    }


def base_reconstruction_mse(inputs: FinetuneInputs, image_column: str) -> float:
    """The frozen autoencoder's reconstruction error (``ctxadapter.domain.reconstruction_mse``)
    on the first ``DOMAIN_IMAGES`` validation images."""
    count = len(inputs.validation_contexts)
    rows = select_rows(inputs.validation, list(range(min(DOMAIN_IMAGES, count))), count)
    pixels = preprocess_images(list(rows[image_column]), inputs.resolution)
    return reconstruction_mse(inputs.codec, pixels)


def run_summary(output: Path, outcome: dict, repo_id: str | None = None) -> str:
    """The lines a run ends with: where the adapter is (and where it was pushed), why it
    stopped after how many steps, the best validation loss and its step, the wall time, and
    the commands that come next."""
    history = outcome["validation_history"]
    best = min(history, key=lambda entry: entry["validation_loss"]) if history else None
    lines = [
        f"Saved the adapter to {output.resolve()}"
        + (f" and pushed it to https://huggingface.co/{repo_id}" if repo_id else "")
        + ".",
        f"Stopped: {outcome['stop_reason']}; {outcome['steps']:,} optimizer steps of batch "
        f"{outcome['train_batch_size']} in {format_duration(outcome['wall_time_s'])}.",
    ]
    if best is not None:
        lines.append(
            f"Best validation loss {best['validation_loss']:.5g} at step {best['step']:,} "
            f"(its weights were kept)."
        )
    lines += [
        f"Next: python examples/generate.py --adapter {output}",
        f"      python examples/evaluate.py --adapter {output}",
        f"      python examples/demo.py {output}",
    ]
    return "\n".join(lines)


NOT_IN_COMMAND = ("overwrite_output_dir", "resume_from_checkpoint")
"""Flags left out of the training command of the model card (about this folder)."""


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
        elif isinstance(value, dict):  # --adapter_config, --objective_config: a JSON object
            parts.append(f"--{f.name} {shlex.quote(json.dumps(value))}")
        else:
            parts.append(f"--{f.name} {value}")
    return " \\\n    ".join(p for p in parts if p)
