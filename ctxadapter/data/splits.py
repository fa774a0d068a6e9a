"""Generated interventional datasets as ``datasets.DatasetDict`` splits (the built-in datasets).

``ctxadapter.data.quad`` and ``ctxadapter.data.photos`` both draw their rows from a generator
function and write them to Arrow files through ``generate_splits``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import datasets

__all__ = ["SPLITS", "generate_splits"]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""The splits of a built-in dataset, each drawn from its own random streams."""


def generate_splits(
    examples: Callable[..., Iterator[dict]],
    columns: dict[str, datasets.features.FeatureType],
    train_contexts: Sequence[str],
    test_compositions: Sequence[str],
    per_context: dict[str, int],
    cache_dir: str | None = None,
    sources: Sequence[ModuleType] = (),
    **gen_kwargs,
) -> datasets.DatasetDict:
    """A generated interventional dataset as a ``DatasetDict`` with splits ``train``,
    ``validation`` and ``test`` (the ``build_dataset`` of ``quad`` and of ``photos``).

    ``train`` and ``validation`` hold ``per_context[split]`` rows of each of ``train_contexts``;
    ``test`` holds ``per_context["test"]`` rows of each of ``train_contexts`` and of
    ``test_compositions``. Each split is drawn by
    ``examples(split=, contexts=, n=, **gen_kwargs, source_digest=)``, a generator of row dicts,
    through ``datasets.Dataset.from_generator`` into Arrow files under ``cache_dir`` (the
    ``datasets`` cache by default). Columns: ``image`` (``datasets.Image``), ``context``
    (string), then ``columns`` (name -> ``datasets`` feature). ``source_digest``, the SHA-256 of
    the file defining ``examples`` and of the files of ``sources`` (the modules it draws with),
    keys that cache on the generator's code: ``datasets`` hashes an importable generator by its
    name only.
    """
    features = datasets.Features(
        {"image": datasets.Image(), "context": datasets.Value("string"), **columns}
    )
    digest = hashlib.sha256()
    for file in (inspect.getfile(examples), *(inspect.getfile(module) for module in sources)):
        digest.update(Path(file).read_bytes())
    source_digest = digest.hexdigest()
    contexts = {
        "train": tuple(train_contexts),
        "validation": tuple(train_contexts),
        "test": (*train_contexts, *test_compositions),
    }
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_generator(
                examples,
                features=features,
                cache_dir=cache_dir,
                gen_kwargs={
                    "split": split,
                    "contexts": contexts[split],
                    "n": per_context[split],
                    **gen_kwargs,
                    "source_digest": source_digest,
                },
            )
            for split in SPLITS
        }
    )
