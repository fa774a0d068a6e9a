"""Loading an image dataset labelled with contexts, and checking it before anything is trained.

Sources: a ``datasets`` dataset (Hub id, local ``save_to_disk`` folder or local script), an
imagefolder with a ``metadata.jsonl`` holding a context column, or the built-in quad data
(``ctxadapter.data.quad``).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence

import datasets
import pyarrow
from datasets.exceptions import DatasetGenerationError

from ..contexts import OBSERVATIONAL, context_name, parse_context
from .content import check_conflicting_files

__all__ = ["context_strings", "infer_concepts", "load_image_dataset", "validate_dataset"]


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    cache_dir: str | None = None,
    quad_images_per_context: int = 2_000,
    quad_dependent: bool = True,
    seed: int = 0,
    streaming: bool = False,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Load the images and their contexts as a ``DatasetDict`` (an ``IterableDatasetDict``
    with ``streaming``).

    Args:
        dataset_name: a Hub dataset id, a folder written by ``save_to_disk``, or a local dataset
            script/folder understood by ``datasets.load_dataset``.
        dataset_config_name: the dataset's configuration, if it has several.
        train_data_dir: an imagefolder (``metadata.jsonl`` beside the images, with a context
            column), used when ``dataset_name`` is not given.
        cache_dir: where ``datasets`` keeps downloads and Arrow files.
        quad_images_per_context: training images per context of the built-in quad data (used
            when neither ``dataset_name`` nor ``train_data_dir`` is given).
        quad_dependent: the dependent (default) or independent variant of quad.
        seed: the quad data's seed.
        streaming: read the splits as streams (``load_dataset(..., streaming=True)``; a
            ``save_to_disk`` folder and the quad data through ``to_iterable_dataset``).
    """
    if dataset_name and train_data_dir:
        raise ValueError("Pass --dataset_name or --train_data_dir, not both.")
    if train_data_dir and not os.path.isdir(train_data_dir):
        raise FileNotFoundError(f"--train_data_dir {train_data_dir!r} is not a folder.")
    try:
        if dataset_name and os.path.exists(os.path.join(dataset_name, "dataset_dict.json")):
            loaded = datasets.load_from_disk(dataset_name)
        elif dataset_name:
            loaded = datasets.load_dataset(
                dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=streaming
            )
        elif train_data_dir:
            loaded = datasets.load_dataset(
                "imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, streaming=streaming
            )
        else:
            from . import quad

            loaded = quad.build_dataset(
                n_per_context=quad_images_per_context,
                heldout_per_context=max(1, quad_images_per_context // 4),
                seed=seed,
                dependent=quad_dependent,
                cache_dir=cache_dir,
            )
    except (pyarrow.ArrowException, DatasetGenerationError) as error:  # malformed files
        source = (
            f"--dataset_name {dataset_name!r}"
            if dataset_name
            else f"--train_data_dir {train_data_dir!r} (its metadata.jsonl or images)"
        )
        raise ValueError(f"Could not read the dataset of {source}: {error}") from error
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if isinstance(loaded, datasets.IterableDataset):
        loaded = datasets.IterableDatasetDict({"train": loaded})
    if streaming and isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.IterableDatasetDict(
            {name: split.to_iterable_dataset() for name, split in loaded.items()}
        )
    if "train" not in loaded:
        raise ValueError(f"The dataset has no 'train' split; its splits are {list(loaded)}.")
    return loaded


def context_strings(
    dataset: datasets.Dataset | datasets.IterableDataset, context_column: str
) -> list[str]:
    """The context column as strings, normalised one way: a list of names is joined with
    ``"+"`` (an empty list is ``"obs"``), the white space around each name is stripped
    (``" a + b "`` -> ``"a+b"``) and each name is put in Unicode NFC form (so ``"café"``
    typed with a combining accent is the same name); the case of a name is kept. Equal
    strings are one object, so the list costs a pointer per row.

    Raises:
        ValueError: for a row whose context is missing (``None``) or is not a string or a list
            of strings, naming the row and the value.
    """
    strings, seen = [], {}
    for row, value in enumerate(dataset.select_columns([context_column])[context_column]):
        if isinstance(value, str):
            names = value.split("+")
        elif isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
            names = list(value) or [OBSERVATIONAL]
        else:
            raise ValueError(
                f"Row {row} of the context column {context_column!r} holds {value!r} "
                f"({type(value).__name__}); expected {OBSERVATIONAL!r}, a concept name, names "
                f"joined by '+', or a list of names."
            )
        text = "+".join(unicodedata.normalize("NFC", name.strip()) for name in names)
        strings.append(seen.setdefault(text, text))
    return strings


def infer_concepts(contexts: Sequence[str]) -> list[str]:
    """The concept names used in ``contexts`` (strings such as ``"quad1+size"``), sorted.

    Raises:
        ValueError: when two names, or a name and ``"obs"``, differ only by case (``"A"`` and
            ``"a"``, ``"Obs"``): almost always a labelling mistake, named with both spellings.
    """
    singles = (context.split("+") for context in set(contexts) if context != OBSERVATIONAL)
    names = sorted({name for names in singles for name in names})
    seen = {OBSERVATIONAL: OBSERVATIONAL}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise ValueError(
                f"The contexts name both {other!r} and {name!r}, which differ only by case: "
                f"correct the labels (names are case-sensitive)."
            )
    return names


def validate_dataset(
    dataset: datasets.Dataset | datasets.IterableDataset,
    image_column: str,
    context_column: str | None,
    concepts: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Check a training dataset before anything is trained or written.

    Args:
        dataset: the rows (a ``datasets.IterableDataset`` is read as it streams).
        image_column: must exist.
        context_column: must exist, unless ``None`` (contexts not used: only the images are
            checked).
        concepts: the configured concepts; default: inferred from the data.

    Returns:
        ``(concepts, contexts)``: the concept list (given, or inferred from the data) and the
        canonical context of every row; ``([], [])`` when ``context_column`` is ``None``.

    Raises:
        ValueError: for an empty dataset, a missing column, a malformed or unknown context, a
            configured concept that no row intervenes on alone (a context with no samples), or
            one image file in rows of two contexts (``check_conflicting_files``).
    """
    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    columns = (("image", image_column), ("context", context_column))
    for role, column in columns:
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"The {role} column {column!r} is not in the dataset; its columns are "
                f"{dataset.column_names}. Choose it with --{role}_column."
            )
    if context_column is None:
        return [], []
    raw = context_strings(dataset, context_column)
    if not raw:  # a stream, found empty once read
        raise ValueError("The dataset is empty.")
    names = list(concepts) if concepts else infer_concepts(raw)
    if not names:
        raise ValueError(
            "The dataset holds only observational samples: a context adapter needs "
            "interventional samples (a context naming a concept)."
        )
    canonical_of = {value: context_name(parse_context(value, names)) for value in set(raw)}
    present = set(canonical_of.values())
    missing = [name for name in names if name not in present]
    if missing:
        raise ValueError(
            f"No samples for the context(s) {missing}: every concept needs samples in which it "
            f"alone is intervened on. Contexts present: {sorted(present)}."
        )
    contexts = [canonical_of[value] for value in raw]
    check_conflicting_files(dataset, image_column, contexts)
    return names, contexts
