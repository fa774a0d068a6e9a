"""Everything a fine-tuning run reads and checks before it writes anything: the data splits,
the frozen autoencoder, the resolution and the compositions of the sample grids."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
from diffusers import AutoencoderKL

from ..codec import SUPPORTED_AUTOENCODERS, LatentCodec
from ..contexts import parse_context
from ..data import load_image_dataset, validate_dataset
from ..viz import all_pairs
from .args import FinetuneArguments, ImageDataArguments


def load_splits(
    args: ImageDataArguments,
    seed: int,
    context_column: str | None = None,
    concepts: list[str] | None = None,
):
    """Load and validate the training data, before anything is written.

    The validation rows are the dataset's ``validation`` split if it has one, else a seeded
    (``seed``) ``--validation_fraction`` of the training rows.

    Returns:
        ``(train, validation, concepts, train_contexts, validation_contexts)``: two
        ``datasets.Dataset`` s, the concept list and the canonical context of every row (the
        last three are ``None`` when ``context_column`` is ``None``: contexts pooled).
    """
    data = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        cache_dir=args.cache_dir,
        quad_images_per_context=args.quad_images_per_context,
        quad_dependent=args.quad_variant == "dependent",
        seed=seed,
    )
    train = data["train"]
    if len(train) == 0:
        raise ValueError("The training dataset is empty.")
    if "validation" in data and len(data["validation"]):
        validation = data["validation"]
    else:
        parts = train.train_test_split(test_size=args.validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    if context_column is None:
        validate_dataset(train, args.image_column, None)
        return train, validation, None, None, None
    concepts, train_contexts = validate_dataset(train, args.image_column, context_column, concepts)
    _, validation_contexts = validate_dataset(
        validation, args.image_column, context_column, concepts
    )
    return train, validation, concepts, train_contexts, validation_contexts


def load_autoencoder(name_or_path: str, revision: str | None = None, subfolder: str | None = None):
    """Load a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` named by its config's
    ``_class_name``."""
    import diffusers

    config = AutoencoderKL.load_config(name_or_path, revision=revision, subfolder=subfolder)
    class_name = config.get("_class_name", "AutoencoderKL")
    supported = {c.__name__ for c in SUPPORTED_AUTOENCODERS}
    if class_name not in supported:
        raise ValueError(f"{name_or_path!r} is a {class_name}; supported: {sorted(supported)}.")
    return getattr(diffusers, class_name).from_pretrained(
        name_or_path, revision=revision, subfolder=subfolder
    )


@dataclass
class FinetuneInputs:
    """What ``resolve_inputs`` checked: the training and validation rows, the concept names,
    the canonical context of every row, the frozen autoencoder's codec, the image resolution
    with its latent shape ``(C, h, w)``, and the compositions shown in the sample grids."""

    train: datasets.Dataset
    validation: datasets.Dataset
    concepts: list[str]
    train_contexts: list[str]
    validation_contexts: list[str]
    codec: LatentCodec
    resolution: int
    latent_shape: tuple[int, int, int]
    compositions: list[str]


def default_compositions(concepts: list[str], uses_quad: bool) -> list[str]:
    """The compositions shown in sample grids by default: quad's held-out ones, or the first
    12 pairs of concepts."""
    if uses_quad:
        from ..quad import HELDOUT_COMPOSITIONS

        return list(HELDOUT_COMPOSITIONS)
    return all_pairs(concepts)[:12]


def resolve_inputs(args: FinetuneArguments) -> FinetuneInputs:
    """Check the flags, load and validate the data and the autoencoder, and settle the
    resolution and the sample-grid compositions; raises on bad input and writes nothing. With
    the built-in quad data and no ``--concepts``, the concepts are quad's, in quad's order."""
    args.validate()  # the fields may have been changed since construction
    concepts = args.concepts
    if not concepts and args.uses_quad:
        from ..quad import CONCEPTS

        concepts = list(CONCEPTS)
    train, validation, concepts, train_contexts, validation_contexts = load_splits(
        args, args.seed, args.context_column, concepts
    )
    autoencoder = load_autoencoder(args.autoencoder, args.revision, args.subfolder)
    codec = LatentCodec(autoencoder)
    resolution = args.resolution or getattr(autoencoder.config, "sample_size", None)
    if resolution is None:
        raise ValueError(f"{type(autoencoder).__name__} records no sample_size: pass --resolution.")
    compositions = args.validation_compositions or default_compositions(concepts, args.uses_quad)
    for context in compositions:
        parse_context(context, concepts)  # raises on an unknown concept
    return FinetuneInputs(
        train=train,
        validation=validation,
        concepts=concepts,
        train_contexts=train_contexts,
        validation_contexts=validation_contexts,
        codec=codec,
        resolution=resolution,
        latent_shape=codec.latent_shape(resolution),
        compositions=compositions,
    )
