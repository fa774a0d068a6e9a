"""Write ``docs/flags.md``: every flag of ``examples/finetune.py`` and
``examples/pretrain_autoencoder.py``, grouped by purpose, from the ``help`` metadata of the
``FinetuneArguments`` / ``PretrainArguments`` dataclass fields (what ``--help`` prints), so the
page never drifts from the code.

    python docs/gen_flags.py            # rewrite docs/flags.md
    python docs/gen_flags.py --check    # exit 1 if docs/flags.md is out of date (for CI)

A field that no group below names lands in an "Other" group, so a new flag still appears.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from ctxadapter.training import DataArguments, FinetuneArguments, PretrainArguments

OUTPUT = Path(__file__).resolve().parent / "flags.md"

GROUPS: list[tuple[str, str, list[str]]] = [
    (
        "The frozen autoencoder",
        "Which pretrained autoencoder the adapter sits in; its latent scaling and shift factors "
        "are read from its config.",
        ["pretrained_model_name_or_path", "revision", "subfolder"],
    ),
    (
        "Data",
        "Where the images and their contexts come from. See [Preparing your data](data.md).",
        [
            "dataset_name",
            "dataset_config_name",
            "train_data_dir",
            "image_column",
            "context_column",
            "resolution",
            "validation_fraction",
            "quad_images_per_context",
            "quad_variant",
            "cache_dir",
            "dataloader_num_workers",
        ],
    ),
    (
        "The context module",
        "Shape and semantics of the adapter (saved in its `config.json`). See "
        "[Concepts](concepts.md) and [Paper variants](variants.md).",
        [
            "preset",
            "concepts",
            "exogenous_width",
            "concept_width",
            "expressive_depth",
            "observational_mixing",
            "exogenous_bias",
            "composition",
            "heads",
            "head_width",
            "pooled",
        ],
    ),
    (
        "Objective",
        "What is minimised, and how batches are formed.",
        ["loss", "beta", "sample_matching", "group_sparsity", "l2", "sampler"],
    ),
    (
        "Decoder fine-tuning (the paper's CM fine-tune)",
        "A LoRA on the frozen decoder, trained with the pixel loss after a warm-up fraction.",
        ["decoder_lora_rank", "unfreeze_decoder_after"],
    ),
    (
        "Optimisation",
        "A linear warm-up then a cosine decay (the paper's schedule), run by Accelerate.",
        [
            "train_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "num_train_epochs",
            "learning_rate",
            "lr_scheduler",
            "lr_warmup_steps",
            "min_learning_rate",
            "mixed_precision",
            "seed",
        ],
    ),
    (
        "Validation, early stopping and sample grids",
        "",
        [
            "validation_epochs",
            "early_stopping_patience",
            "validation_steps",
            "validation_compositions",
            "num_validation_images",
        ],
    ),
    (
        "Outputs, logging and checkpoints",
        "",
        [
            "output_dir",
            "report_to",
            "checkpointing_steps",
            "checkpoints_total_limit",
            "resume_from_checkpoint",
        ],
    ),
    (
        "Sharing on the Hub",
        "See [Sharing on the Hub](hub.md).",
        ["push_to_hub", "hub_model_id", "hub_token"],
    ),
    (
        "Autoencoder architecture (pretrain_autoencoder.py only)",
        "",
        ["block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups"],
    ),
    ("Autoencoder objective (pretrain_autoencoder.py only)", "", ["kl_weight"]),
]


def type_name(annotation) -> tuple[str, bool]:
    """``(readable type, is_list)`` of a field annotation (a string under postponed
    evaluation); ``None`` alternatives are dropped (the default says when a flag is optional)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), **vars(types)})  # noqa: S307
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return type_name(args[0]) if len(args) == 1 else (" or ".join(map(str, args)), False)
    if typing.get_origin(annotation) is list:
        return f"list of {args[0].__name__}", True
    return annotation.__name__, False


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(fields: list[dataclasses.Field], hints: dict) -> list[str]:
    lines = ["| flag | type | default | what it does |", "|---|---|---|---|"]
    for field in fields:
        kind, is_list = type_name(hints[field.name])
        usage = f"--{field.name}" + (" A B ..." if is_list else "")
        if kind == "bool":
            usage = f"--{field.name}"
        help_text = field.metadata.get("help", "")
        lines.append(
            f"| `{usage}` | {cell(kind)} | `{cell(default_text(field))}` | {cell(help_text)} |"
        )
    return lines


def section(title: str, cls: type, script: str, only: set[str] | None = None) -> list[str]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if only is None or f.name in only}
    lines = [f"## {title}", ""]
    if only is not None:
        lines += [
            f"`{script}` takes the data and optimisation flags of `finetune.py` above (same "
            f"meaning); these are its own flags or have other defaults:",
            "",
        ]
    seen: set[str] = set()
    for group, blurb, names in GROUPS:
        present = [fields[n] for n in names if n in fields]
        if not present:
            continue
        seen.update(n for n in names if n in fields)
        lines += [f"### {group}", ""] + ([blurb, ""] if blurb else [])
        lines += table(present, hints) + [""]
    rest = [f for name, f in fields.items() if name not in seen]
    if rest:
        lines += ["### Other", ""] + table(rest, hints) + [""]
    return lines


def render() -> str:
    data_fields = {f.name: f for f in dataclasses.fields(DataArguments)}
    own = {
        f.name
        for f in dataclasses.fields(PretrainArguments)
        if f.name not in data_fields
        or default_text(f) != default_text(data_fields[f.name])
        or f.metadata != data_fields[f.name].metadata
    }
    lines = [
        "<!-- Generated by docs/gen_flags.py from the dataclasses in ctxadapter/training.py: "
        "do not edit by hand. -->",
        "",
        "# Training flags",
        "",
        "Every flag of `examples/finetune.py` (the dataclass `ctxadapter.training."
        "FinetuneArguments`, read by transformers' `HfArgumentParser`), grouped by purpose. "
        "`python examples/finetune.py --help` prints the same text. Boolean flags are switched "
        "on by naming them; list flags take several values separated by spaces "
        "(`--concepts quad1 quad2 size`). From Python, build the dataclass and call "
        "`ctxadapter.training.finetune(args)`.",
        "",
    ]
    lines += section("examples/finetune.py", FinetuneArguments, "finetune.py")
    lines += section(
        "examples/pretrain_autoencoder.py",
        PretrainArguments,
        "pretrain_autoencoder.py",
        only=own,
    )
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="Exit 1 if docs/flags.md is out of date."
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_flags.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT} is up to date.")
        return 0
    OUTPUT.write_text(text)
    print(f"Wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
