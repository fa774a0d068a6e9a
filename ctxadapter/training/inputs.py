"""Everything a fine-tuning run reads and checks before it writes anything: the data splits,
the frozen autoencoder, the resolution and the compositions of the sample grids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from ..codec import LatentCodec, load_autoencoder
from ..contexts import all_pairs, context_name, parse_context
from ..data import (
    ContextBatchSampler,
    autoencoder_fingerprint,
    context_strings,
    load_image_dataset,
    validate_dataset,
)
from ..data.content import check_conflicting_files, content_fingerprint
from .args import ImageDataArguments
from .finetune_args import FinetuneArguments
from .output_dir import check_output_dir
from .state import check_resumable, check_same_inputs, resolve_checkpoint

VALIDATION_FRACTION = 0.05
"""The fraction of the training rows held out for validation when the data has no
``validation`` split."""


def load_splits(
    args: ImageDataArguments,
    seed: int,
    context_column: str | None = None,
    concepts: list[str] | None = None,
    streaming: bool = False,
):
    """Load and validate the training data, before anything is written.

    The validation rows are the dataset's ``validation`` split if it has one, else a seeded
    (``seed``) ``VALIDATION_FRACTION`` of the training rows, drawn from every context alike
    (``stratified_split``; contexts pooled: from all rows). With ``streaming`` (contexts
    given), the splits are ``datasets.IterableDataset`` s, read as they stream: the checks
    keep the contexts in memory, never the images.

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
        streaming=streaming,
    )
    train = data["train"]
    if isinstance(train, datasets.Dataset) and len(train) == 0:
        raise ValueError("The training dataset is empty.")
    given = data.get("validation")
    if isinstance(given, datasets.Dataset) and len(given) == 0:
        given = None
    if context_column is None:
        validate_dataset(train, args.image_column, None)
        if given is None:
            parts = train.train_test_split(test_size=VALIDATION_FRACTION, seed=seed)
            return parts["train"], parts["test"], None, None, None
        return train, given, None, None, None
    concepts, contexts = validate_dataset(train, args.image_column, context_column, concepts)
    if given is None:
        train_rows, validation_rows = stratified_split(contexts, VALIDATION_FRACTION, seed)
        return (
            select_rows(train, train_rows, len(contexts)),
            select_rows(train, validation_rows, len(contexts)),
            concepts,
            [contexts[i] for i in train_rows],
            [contexts[i] for i in validation_rows],
        )
    try:  # any context of the training concepts; not every one needs validation rows
        validate_dataset(given, args.image_column, None)
        if context_column not in given.column_names:
            raise ValueError(f"it has no column {context_column!r}")
        raw = context_strings(given, context_column)
        canonical = {value: context_name(parse_context(value, concepts)) for value in set(raw)}
        validation_contexts = [canonical[value] for value in raw]
        check_conflicting_files(given, args.image_column, validation_contexts)
    except ValueError as error:
        raise ValueError(f"The dataset's 'validation' split: {error}") from None
    return train, given, concepts, contexts, validation_contexts


def select_rows(
    dataset: datasets.Dataset | datasets.IterableDataset, rows: list[int], count: int
) -> datasets.Dataset | datasets.IterableDataset:
    """The rows ``rows`` (in row order) of ``dataset``, which has ``count`` rows: ``select``,
    or for a stream a filter on a mask of the rows (a byte per row)."""
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(rows)
    keep = np.zeros(count, dtype=bool)
    keep[rows] = True
    return dataset.filter(lambda _, row: keep[row], with_indices=True)


def stratified_split(
    contexts: list[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Row indices ``(train, validation)`` holding out ``fraction`` of the rows of every
    context (rounded, at least one row of each context with two rows or more, never all of
    them), drawn with ``seed``; both lists in row order.

    Raises:
        ValueError: when no context has two rows, so that nothing could be held out.
    """
    rng = np.random.default_rng(seed)
    by_context: dict[str, list[int]] = {}
    for row, context in enumerate(contexts):
        by_context.setdefault(context, []).append(row)
    held_out: list[int] = []
    for context in sorted(by_context):
        rows = by_context[context]
        if len(rows) < 2:
            continue
        count = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        held_out += rng.choice(rows, size=count, replace=False).tolist()
    if not held_out:
        raise ValueError(
            f"Too few rows for a validation split: {len(contexts)} rows and no context with two "
            f"or more. Add rows, or give the dataset a 'validation' split."
        )
    chosen = set(held_out)
    train = [row for row in range(len(contexts)) if row not in chosen]
    return train, sorted(chosen)


@dataclass
class FinetuneInputs:
    """What ``resolve_inputs`` checked: the training and validation rows, the concept names,
    the canonical context of every row, the frozen autoencoder's codec, the image resolution
    with its latent shape ``(C, h, w)``, the compositions shown in the sample grids, the
    checkpoint to resume from and the ``fingerprints`` of the inputs (``input_fingerprints``)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    concepts: list[str]
    train_contexts: list[str]
    validation_contexts: list[str]
    codec: LatentCodec
    resolution: int
    latent_shape: tuple[int, int, int]
    compositions: list[str]
    checkpoint: Path | None
    fingerprints: dict[str, str]


def input_fingerprints(
    train: datasets.Dataset,
    validation: datasets.Dataset,
    contexts: list[str] | None,
    image_column: str,
    codec: LatentCodec,
) -> dict[str, str]:
    """What a run's results depend on, beyond its flags: the content of its training and
    validation images (``content_fingerprint``), their contexts in row order (training rows,
    then validation rows) and the base autoencoder's weights (``autoencoder_fingerprint``)."""
    labels = hashlib.sha256("\n".join(contexts or []).encode()).hexdigest()[:16]
    return {
        "train_images": content_fingerprint(train, image_column),
        "validation_images": content_fingerprint(validation, image_column),
        "contexts": labels,
        "base": autoencoder_fingerprint(codec),
    }


def fit_batch_size(args: FinetuneArguments, contexts: list[str]) -> tuple[int, str | None]:
    """The training batch size for the training rows (of canonical ``contexts``) and a one-line
    note when it differs from ``--train_batch_size``.

    ``--sampler mixed`` drops incomplete batches, so a ``--train_batch_size`` larger than the
    training rows would give no optimizer step: the batch then becomes the number of training
    rows (one batch per epoch). ``--sampler context_pure`` keeps a context's only, partial
    batch, so its batch size is always kept."""
    index = {context: i for i, context in enumerate(sorted(set(contexts)))}
    ids = torch.tensor([index[context] for context in contexts])
    if len(ContextBatchSampler(ids, args.train_batch_size, args.sampler)):
        return args.train_batch_size, None
    return len(contexts), (
        f"--train_batch_size {args.train_batch_size} is larger than the {len(contexts)} "
        f"training rows: training with batches of {len(contexts)} (one per epoch)."
    )


def configure_encoding(autoencoder, args: FinetuneArguments) -> None:
    """Apply ``--encode_options`` to ``autoencoder``; an autoencoder without slicing or
    tiling is an error naming its class."""
    if "channels_last" in args.encode_options:
        autoencoder.to(memory_format=torch.channels_last)
    for option, method in (("slicing", "enable_slicing"), ("tiling", "enable_tiling")):
        if option in args.encode_options:
            if not hasattr(autoencoder, method):
                raise ValueError(
                    f"--encode_options {option}: {type(autoencoder).__name__} has no {method}()."
                )
            getattr(autoencoder, method)()


def grid_compositions(concepts: list[str], uses_quad: bool) -> list[str]:
    """The compositions shown in the sample grids: quad's held-out ones, or the first 12 pairs
    of concepts."""
    if uses_quad:
        from ..data.quad import HELDOUT_COMPOSITIONS

        return list(HELDOUT_COMPOSITIONS)
    return all_pairs(concepts)[:12]


def resolve_inputs(args: FinetuneArguments) -> FinetuneInputs:
    """Check the flags, load and validate the data and the autoencoder, and settle the
    resolution and the sample-grid compositions; raises on bad input and writes nothing. With
    the built-in quad data and no ``--concepts``, the concepts are quad's, in quad's order."""
    args.validate()  # the fields may have been changed since construction
    checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        check_resumable(checkpoint, args)
    check_output_dir(args.output_dir, args.overwrite_output_dir, resuming=checkpoint is not None)
    concepts = args.concepts
    if not concepts and args.uses_quad:
        from ..data.quad import CONCEPTS

        concepts = list(CONCEPTS)
    train, validation, concepts, train_contexts, validation_contexts = load_splits(
        args, args.seed, args.context_column, concepts, streaming=args.streaming
    )
    autoencoder = load_autoencoder(
        args.autoencoder,
        args.revision,
        args.subfolder,
        torch_dtype=getattr(torch, args.autoencoder_dtype),
    )
    configure_encoding(autoencoder, args)
    codec = LatentCodec(autoencoder)
    resolution = args.resolution or getattr(autoencoder.config, "sample_size", None)
    if resolution is None:
        raise ValueError(f"{type(autoencoder).__name__} records no sample_size: pass --resolution.")
    compositions = grid_compositions(concepts, args.uses_quad)
    contexts = None if train_contexts is None else train_contexts + validation_contexts
    fingerprints = input_fingerprints(train, validation, contexts, args.image_column, codec)
    if checkpoint is not None:
        check_same_inputs(checkpoint, fingerprints)
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
        checkpoint=checkpoint,
        fingerprints=fingerprints,
    )
