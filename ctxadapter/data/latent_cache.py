"""The latent cache: every image encoded once by the frozen encoder, kept on disk, read in batches.

The cache is a memory-mapped Arrow file written by ``cache_latents``; ``CachedLatents`` serves
whole batches from it (with ``collate_batch`` as the loader's ``collate_fn``) and
``ctxadapter.data.sampler.ContextBatchSampler`` chooses their rows.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from ..codec import LatentCodec
from ..contexts import context_mask
from ..images import preprocess_images, signed_to_uint8
from .content import content_fingerprint

__all__ = [
    "CACHE_FORMAT",
    "CachedLatents",
    "autoencoder_fingerprint",
    "cache_latents",
    "collate_batch",
    "column_views",
    "gather_rows",
    "read_batch",
]

CACHE_FORMAT = 2
"""Bumped whenever the latent cache's content changes meaning, so old caches are not reused."""

PREPROCESSING = "to_rgb, VaeImageProcessor resize_mode=crop, [-1, 1]"
"""How images are prepared for the encoder (``read_batch``); part of the cache key."""

STAGING_PREFIX = ".latents-partial-"
"""A cache file is written in a folder ``<prefix><host>-<pid>-<random>`` of the cache folder
and moved out when complete."""

LOADS_AHEAD = 8
"""Encoder batches per ``datasets.map`` batch: within one, reading and preprocessing the next
encoder batch overlaps the encoder's pass over the current one."""


def autoencoder_fingerprint(codec: LatentCodec) -> str:
    """A short hash of the autoencoder's class, config and weights (a few values of each
    tensor): what produced a latent cache."""
    digest = hashlib.sha256(type(codec.autoencoder).__name__.encode())
    config = {k: v for k, v in dict(codec.autoencoder.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in codec.autoencoder.state_dict().items():
        values = tensor.detach().flatten()
        digest.update(name.encode())
        digest.update(values[:: max(1, values.numel() // 64)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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


def cache_latents(
    dataset: datasets.Dataset,
    codec: LatentCodec,
    contexts: Sequence[str],
    image_column: str,
    resolution: int,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    keep_pixels: bool = False,
    images_fingerprint: str | None = None,
) -> datasets.Dataset:
    """Encode every image once with the frozen encoder and keep the latents on disk.

    The cache is a ``datasets`` Arrow file under ``cache_dir``, named by a key of what the
    latents depend on: the autoencoder (``autoencoder_fingerprint``, from its weights), the
    images' content (``ctxadapter.data.content.content_fingerprint``: their bytes, not their
    paths or times), ``resolution``, the preprocessing, the contexts and ``keep_pixels``. A
    later run with the same key reuses it without running the encoder, after checking that it
    reads, has one row per image and the expected columns (else it is encoded again).

    The file is written in a private temporary folder beside it and moved into place when
    complete; on any error (a full disk included, named with the file's path) the partial file
    is removed. Images are encoded and written in batches, so memory does not grow with the
    dataset. A background thread reads and preprocesses the next batch while the encoder runs,
    so on a CPU the encode pass costs little more than the encoder itself.

    Args:
        dataset: rows with images in ``image_column``.
        codec: the frozen autoencoder.
        contexts: the canonical context of every row (from ``validate_dataset``).
        image_column: the column with PIL images.
        resolution: images are resized (shorter side) and centre-cropped to
            ``resolution x resolution``, a multiple of the downsampling factor.
        cache_dir: folder for the cache files.
        batch_size: images per encoder pass.
        keep_pixels: also keep the preprocessed images (uint8), for ``pixel`` loss.
        images_fingerprint: ``content_fingerprint(dataset, image_column)`` when the caller has
            computed it already (default: computed here).

    Returns:
        A dataset with columns ``latents`` ``(C, h, w)`` float32 (model-space posterior mean),
        ``logvar`` (same shape, for ``AutoencoderKL``), ``context`` (string) and, with
        ``keep_pixels``, ``pixels`` ``(3, H, W)`` uint8.
    """
    shape = codec.latent_shape(resolution)
    if len(contexts) != len(dataset):
        raise ValueError(f"Got {len(contexts)} contexts for {len(dataset)} rows.")
    key_parts = dict(
        format=CACHE_FORMAT,
        autoencoder=autoencoder_fingerprint(codec),
        resolution=resolution,
        images=images_fingerprint or content_fingerprint(dataset, image_column),
        preprocessing=PREPROCESSING,
        keep_pixels=keep_pixels,
        tiled=bool(getattr(codec.autoencoder, "use_tiling", False)),  # tiles change latents
        contexts=hashlib.sha256("\n".join(contexts).encode()).hexdigest(),
    )
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"latents-{key}.arrow"
    has_logvar = codec.has_posterior
    features = {
        "latents": datasets.Array3D(shape, "float32"),
        "context": datasets.Value("string"),
    }
    if has_logvar:
        features["logvar"] = datasets.Array3D(shape, "float32")
    if keep_pixels:
        features["pixels"] = datasets.Array3D((3, resolution, resolution), "uint8")

    # Decode the images here rather than in datasets, so that one that cannot be read is named.
    image_feature = dataset.features.get(image_column)
    if isinstance(image_feature, datasets.Image) and image_feature.decode:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

    def encode(batch, indices, loader: ThreadPoolExecutor):
        # One map batch holds LOADS_AHEAD encoder batches: the loader thread reads and
        # preprocesses batch k + 1 (PIL and torch release the GIL) while the encoder runs on k.
        values, columns = batch[image_column], {"latents": [], "logvar": [], "pixels": []}
        pending = loader.submit(read_batch, values[:batch_size], indices[:batch_size], resolution)
        for start in range(0, len(indices), batch_size):
            pixels, after = pending.result(), start + batch_size
            if after < len(indices):
                rows = slice(after, after + batch_size)
                pending = loader.submit(read_batch, values[rows], indices[rows], resolution)
            mean, logvar = codec.encode_distribution(pixels)
            columns["latents"].append(mean)
            columns["logvar"].append(logvar)
            columns["pixels"].append(signed_to_uint8(pixels) if keep_pixels else None)
        out = {
            name: torch.cat(parts).numpy() for name, parts in columns.items() if name in features
        }
        out["context"] = [contexts[i] for i in indices]
        return out

    schema = datasets.Features(features)
    cached = reusable_cache(cache_file, len(dataset), schema)
    if cached is not None:
        return cached
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    remove_abandoned(Path(cache_dir))
    start = time.perf_counter()
    prefix = f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_dir))
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxadapter-load") as loader:
            dataset.map(
                encode,
                with_indices=True,
                batched=True,
                batch_size=batch_size * LOADS_AHEAD,
                fn_kwargs={"loader": loader},
                remove_columns=dataset.column_names,
                features=schema,
                cache_file_name=str(staging / cache_file.name),
                load_from_cache_file=False,
                new_fingerprint=key,
                writer_batch_size=batch_size * LOADS_AHEAD,
                desc="Caching latents",
            )
        os.replace(staging / cache_file.name, cache_file)
    except OSError as error:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        message = (
            f"Caching latents into {cache_file} failed ({error}); the partial file was removed."
            + (" Free some space or choose another --cache_dir." if full else "")
        )
        raise OSError(error.errno, message) if error.errno else OSError(message) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    cache = datasets.Dataset.from_file(str(cache_file))
    seconds = time.perf_counter() - start  # what the encode pass cost: a run's one pass
    print(
        f"Encoded {len(cache)} images in {seconds:.1f} s ({len(cache) / seconds:.1f} "
        f"images/s, batches of {batch_size}) into {cache_file}",
        flush=True,
    )
    return cache


def remove_abandoned(cache_dir: Path) -> None:
    """Remove the temporary folders of runs of this host that were killed while caching (their
    process is gone), so that a partial file does not outlive its run. Folders of live runs,
    or of other hosts sharing the folder, are left alone."""
    host = socket.gethostname()
    for folder in cache_dir.glob(f"{STAGING_PREFIX}*"):
        match = re.fullmatch(rf"{re.escape(STAGING_PREFIX)}(.+)-(\d+)-[^-]+", folder.name)
        if match is None or match.group(1) != host:
            continue
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def reusable_cache(
    cache_file: Path, rows: int, features: datasets.Features
) -> datasets.Dataset | None:
    """The latent cache in ``cache_file`` if it exists, reads (its Arrow schema and row count,
    without reading the latents), has ``rows`` rows and ``features``; ``None`` otherwise. A
    file that fails these checks is removed, with a note, so that it is encoded again."""
    if not cache_file.is_file():
        return None
    try:
        cache = datasets.Dataset.from_file(str(cache_file))
        problem = None
        if len(cache) != rows:
            problem = f"{len(cache)} rows for {rows} images"
        elif cache.features != features:
            problem = f"columns {cache.features} where {features} were expected"
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
        problem = f"unreadable ({error})"
    if problem is None:
        return cache
    print(f"The latent cache {cache_file} is damaged ({problem}): encoding again.", flush=True)
    cache_file.unlink()
    return None


def column_views(cache: datasets.Dataset, column: str) -> tuple[list, list[int]]:
    """Zero-copy numpy views of a fixed-shape (``ArrayND``) column of an Arrow-backed dataset,
    one per record batch, with each batch's first row: reading rows from them costs a numpy
    gather, not ``datasets``' per-row formatting. Memory-mapped caches stay on disk."""
    if cache._indices is not None:  # a select()/shuffle() view: materialise its rows once
        cache = cache.flatten_indices(keep_in_memory=True)
    shape = cache.features[column].shape
    views, starts, start = [], [], 0
    for chunk in cache.data.column(column).chunks:
        values = chunk.storage
        for _ in shape:
            values = values.flatten()
        views.append(values.to_numpy(zero_copy_only=True).reshape(-1, *shape))
        starts.append(start)
        start += len(chunk)
    return views, starts


def gather_rows(views: list, starts: list[int], indices: Sequence[int]) -> torch.Tensor:
    """Rows ``indices`` of the column held by ``column_views``, as one tensor."""
    indices = np.asarray(indices, dtype=np.int64)
    chunk = np.searchsorted(starts, indices, side="right") - 1
    out = np.empty((len(indices), *views[0].shape[1:]), views[0].dtype)
    for k in np.unique(chunk):
        rows = chunk == k
        out[rows] = views[k][indices[rows] - starts[k]]
    return torch.from_numpy(out)


class CachedLatents(torch.utils.data.Dataset):
    """The latent cache as a map-style dataset whose items are fetched a batch at a time.

    ``dataset[indices]`` (through ``__getitems__``) returns one dict for the whole batch:
    ``latents`` ``(B, C, h, w)`` float32, ``contexts`` ``(B, K)`` bool masks and, if cached,
    ``pixel_values`` ``(B, 3, H, W)`` in ``[-1, 1]``. Rows are gathered from zero-copy views of
    the memory-mapped Arrow file (about 2 ms for 512 latents of 4x8x8), so the cache never has
    to fit in RAM.
    """

    def __init__(self, cache: datasets.Dataset, concepts: Sequence[str]):
        self.concepts = list(concepts)
        contexts = list(cache["context"])
        distinct = sorted(set(contexts))
        ids = {context: row for row, context in enumerate(distinct)}
        self.context_ids = torch.tensor([ids[c] for c in contexts], dtype=torch.long)
        self.context_table = context_mask(distinct, self.concepts, len(distinct))
        self.contexts = distinct
        self.columns = {
            name: column_views(cache, name)
            for name in ("latents", "pixels")
            if name in cache.column_names
        }

    def __len__(self) -> int:
        return len(self.context_ids)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        out = {
            "latents": gather_rows(*self.columns["latents"], indices),
            "contexts": self.context_table[self.context_ids[index]],
        }
        if "pixels" in self.columns:
            out["pixel_values"] = gather_rows(*self.columns["pixels"], indices).float() / 127.5 - 1
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``collate_fn`` for ``CachedLatents``: batches arrive already assembled."""
    return batch
