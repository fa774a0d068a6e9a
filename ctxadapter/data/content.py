"""What a dataset's images are by content, not by path or modification time.

``image_digests`` reads every row's stored bytes (the encoded file, embedded or at its path)
and hashes them, from a ``datasets.Dataset`` or as a ``datasets.IterableDataset`` streams;
``content_fingerprint`` combines them in row order. The latent cache is keyed by it and
checkpoints record it, so images rewritten in place (even with their times kept, as ``cp -p``
or ``rsync -a`` do) are never mistaken for the old ones. ``check_conflicting_files``
refuses one file labelled with two contexts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
from datasets.fingerprint import Hasher

__all__ = ["check_conflicting_files", "content_fingerprint", "image_digests"]

ROWS_AT_ONCE = 256
"""Rows read at once while hashing: bounds the memory of datasets with embedded images."""


def _raw_rows(
    dataset: datasets.Dataset | datasets.IterableDataset, image_column: str
) -> Iterator[dict | object]:
    """The image column's stored values, row by row: ``{"bytes", "path"}`` dicts for an image
    feature (not decoded), else the values as they are."""
    column = dataset.select_columns([image_column])
    if isinstance((column.features or {}).get(image_column), datasets.Image):
        column = column.cast_column(image_column, datasets.Image(decode=False))
    for batch in column.iter(batch_size=ROWS_AT_ONCE):
        yield from batch[image_column]


def image_digests(
    dataset: datasets.Dataset | datasets.IterableDataset, image_column: str
) -> Iterator[tuple[str | None, str]]:
    """``(path, digest)`` of every row's image, in row order: the SHA-256 of its encoded bytes
    (embedded, or read from its path); for a column that is not an image feature, a hash of
    the value. ``path`` is the file's path where the dataset records one, else ``None``.

    Raises:
        FileNotFoundError: for an image whose file is gone, naming the row and the path.
    """
    for row, value in enumerate(_raw_rows(dataset, image_column)):
        if not isinstance(value, dict) or not {"bytes", "path"} >= set(value):
            yield None, Hasher.hash(value)
            continue
        path, data = value.get("path"), value.get("bytes")
        if data is None:
            if not path or not Path(path).is_file():
                raise FileNotFoundError(f"Row {row}: the image file {path!r} does not exist.")
            data = Path(path).read_bytes()
        yield path, hashlib.sha256(data).hexdigest()


def content_fingerprint(
    dataset: datasets.Dataset | datasets.IterableDataset, image_column: str
) -> str:
    """A short hash of the images of every row, in row order (``image_digests``)."""
    digest = hashlib.sha256()
    for _, row_digest in image_digests(dataset, image_column):
        digest.update(row_digest.encode())
    return digest.hexdigest()[:16]


def check_conflicting_files(
    dataset: datasets.Dataset | datasets.IterableDataset,
    image_column: str,
    contexts: Sequence[str],
) -> None:
    """Refuse a dataset in which one image file (by path, e.g. a ``file_name`` listed twice in
    a ``metadata.jsonl``) has rows of two different ``contexts``, naming the file, the rows and
    their contexts. The same file twice under one context is allowed."""
    first: dict[str, tuple[int, str]] = {}
    for row, value in enumerate(_raw_rows(dataset, image_column)):
        path = value.get("path") if isinstance(value, dict) else None
        if not path:
            continue
        seen_row, seen_context = first.setdefault(path, (row, contexts[row]))
        if seen_context != contexts[row]:
            raise ValueError(
                f"The image {path!r} is labelled twice with different contexts: row "
                f"{seen_row} says {seen_context!r} and row {row} says {contexts[row]!r}. Keep "
                f"one row per file (a sample has one context)."
            )
