"""The latent cache's shards: which rows each one holds, and how rows are encoded into one.

A cache is cut into contiguous row ranges (``shard_ranges``) that depend on the number of rows
only, so one process or many write the same files with the same latents. ``write_shards``
reads the images of a block of consecutive shards from a ``datasets.Dataset`` or a streamed
``datasets.IterableDataset``, encodes them in batches with the frozen encoder and writes each
shard as one Arrow file with ``datasets``' ``ArrowWriter``: memory holds a few batches, never
the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import datasets
import torch
from datasets.arrow_writer import ArrowWriter
from PIL import Image

from ..codec import LatentCodec
from ..images import preprocess_images, signed_to_uint8

__all__ = ["decode_image", "read_batch", "shard_name", "shard_ranges", "write_shards"]

TARGET_SHARDS = 64
"""Shards per cache, so that up to this many processes each encode a share."""

MIN_SHARD_ROWS = 32
"""Rows of a shard at least (a small dataset has fewer shards than ``TARGET_SHARDS``)."""

MAX_SHARD_ROWS = 8192
"""Rows of a shard at most: 1 GB for the SD VAE at 512 px (4x64x64 float32 latents and
log-variances), so a large dataset has more shards than ``TARGET_SHARDS``."""

LOADS_AHEAD = 8
"""Encoder batches read at once: while the encoder runs on one, a loader thread reads and
preprocesses the next."""


def shard_ranges(rows: int) -> list[range]:
    """The shards of a cache of ``rows`` rows: contiguous row ranges in row order, of
    ``ceil(rows / TARGET_SHARDS)`` rows clamped to ``[MIN_SHARD_ROWS, MAX_SHARD_ROWS]`` (the
    last may be shorter)."""
    size = min(MAX_SHARD_ROWS, max(MIN_SHARD_ROWS, math.ceil(rows / TARGET_SHARDS)))
    return [range(start, min(start + size, rows)) for start in range(0, rows, size)]


def shard_name(shard: range) -> str:
    """The file name of a shard: its first row and the row after its last,
    ``rows-000000000-000008192.arrow``."""
    return f"rows-{shard.start:09d}-{shard.stop:09d}.arrow"


def decode_image(value, row: int) -> Image.Image:
    """The PIL image of a ``datasets.Image`` value (a dict of ``bytes`` / ``path``, or already an
    image), fully read; an image that cannot be read (truncated, not an image) raises a
    ``ValueError`` naming ``row`` and its file."""
    if isinstance(value, Image.Image):
        return value
    try:
        image = datasets.Image().decode_example(value)
        image.load()
        return image
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... by format
        where = value.get("path") if isinstance(value, dict) else None
        raise ValueError(
            f"Row {row}: the image{f' {where!r}' if where else ''} cannot be read ({error})."
        ) from error


def read_batch(values: Sequence, rows: Sequence[int], resolution: int) -> torch.Tensor:
    """``datasets.Image`` values (rows ``rows``, for error messages) read and preprocessed as
    the encoder takes them: ``(B, 3, resolution, resolution)`` in ``[-1, 1]``."""
    images = [decode_image(value, row) for value, row in zip(values, rows, strict=True)]
    return preprocess_images(images, resolution)


def image_values(
    dataset: datasets.Dataset | datasets.IterableDataset, image_column: str, block: range
) -> Iterator:
    """The values of ``image_column`` in rows ``block`` of ``dataset``, in order, images not
    decoded, read ``LOADS_AHEAD * 64`` rows at a time (a streamed dataset is read from its
    start: ``skip`` reads the rows before ``block``)."""
    dataset = dataset.select_columns([image_column])
    if isinstance((dataset.features or {}).get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if isinstance(dataset, datasets.IterableDataset):
        rows = dataset.skip(block.start).take(len(block))
    else:
        rows = dataset.select(block)
    for batch in rows.iter(batch_size=LOADS_AHEAD * 64):
        yield from batch[image_column]


def write_shards(
    dataset: datasets.Dataset | datasets.IterableDataset,
    shards: Sequence[range],
    folder: Path,
    *,
    codec: LatentCodec,
    columns: Callable[[Sequence[int]], dict],
    image_column: str,
    resolution: int,
    features: datasets.Features,
    batch_size: int,
    keep_pixels: bool,
) -> Iterator[Path]:
    """Encode the rows of ``shards`` (row ranges in row order) of ``dataset`` and write each
    shard as ``folder / shard_name(shard)``, yielding its path once it is complete. Rows are
    read in one pass from the first shard's first row, restarted past a gap between shards.

    Each file has ``features``: ``latents`` (and ``logvar`` for a posterior) from
    ``codec.encode_distribution``, ``pixels`` (uint8) with ``keep_pixels``, and the columns
    ``columns(rows)`` gives for the rows of a batch (their contexts). Encoder batches of
    ``batch_size`` images start at each shard's first row, so a shard's latents do not depend
    on which process encodes it. A loader thread reads and preprocesses the next batch (PIL and
    torch release the GIL) while the encoder runs on the current one.

    Raises:
        ValueError: for an image that cannot be read, or a streamed dataset that ends before
            the last row of ``shards``.
    """
    position = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxadapter-load") as loader:
        for shard in shards:
            if shard.start != position:  # the first shard, or one past a gap
                images = image_values(dataset, image_column, range(shard.start, shards[-1].stop))
            position = shard.stop
            path = folder / shard_name(shard)
            chunk = batch_size * LOADS_AHEAD
            with ArrowWriter(features=features, path=str(path), writer_batch_size=chunk) as writer:
                for start in range(shard.start, shard.stop, chunk):
                    indices = range(start, min(start + chunk, shard.stop))
                    values = list(islice(images, len(indices)))
                    if len(values) < len(indices):
                        raise ValueError(
                            f"The dataset ended at row {start + len(values)}: "
                            f"{shards[-1].stop} rows were expected."
                        )
                    encoded = encode_batches(
                        codec, loader, values, indices, resolution, batch_size, keep_pixels
                    )
                    writer.write_batch(encoded | columns(indices))
                writer.finalize()
            yield path


def encode_batches(
    codec: LatentCodec,
    loader: ThreadPoolExecutor,
    values: Sequence,
    indices: Sequence[int],
    resolution: int,
    batch_size: int,
    keep_pixels: bool,
) -> dict:
    """The encoder's columns for the images ``values`` (rows ``indices``), encoded
    ``batch_size`` at a time: ``latents``, ``logvar`` where the codec has a posterior and
    ``pixels`` (uint8) with ``keep_pixels``, as numpy arrays. ``loader`` reads and preprocesses
    batch ``k + 1`` while the encoder runs on batch ``k``."""
    parts: dict[str, list] = {"latents": [], "logvar": [], "pixels": []}
    pending = loader.submit(read_batch, values[:batch_size], indices[:batch_size], resolution)
    for start in range(0, len(indices), batch_size):
        pixels, after = pending.result(), start + batch_size
        if after < len(indices):
            rows = slice(after, after + batch_size)
            pending = loader.submit(read_batch, values[rows], indices[rows], resolution)
        mean, logvar = codec.encode_distribution(pixels)
        parts["latents"].append(mean)
        if logvar is not None:
            parts["logvar"].append(logvar)
        if keep_pixels:
            parts["pixels"].append(signed_to_uint8(pixels))
    return {name: torch.cat(tensors).cpu().numpy() for name, tensors in parts.items() if tensors}
