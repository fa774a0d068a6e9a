"""The latent cache: every image encoded once by the frozen encoder, kept on disk, read in batches.

The cache is a folder of memory-mapped Arrow shards written by ``cache_latents`` (under
``accelerate launch``, every process encodes its share of them); ``CachedLatents`` serves whole
batches from their union (with ``collate_batch`` as the loader's ``collate_fn``) and
``ctxadapter.data.sampler.ContextBatchSampler`` chooses their rows.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState

from ..codec import LatentCodec
from ..contexts import context_mask
from ..processes import process_state
from .cache_shards import shard_name, shard_ranges, write_shards
from .content import content_fingerprint

__all__ = [
    "CACHE_FORMAT",
    "CachedLatents",
    "autoencoder_fingerprint",
    "cache_latents",
    "collate_batch",
    "column_views",
    "gather_rows",
]

CACHE_FORMAT = 3
"""Bumped whenever the latent cache's content or layout changes meaning, so old caches are not
reused."""

PREPROCESSING = "to_rgb, VaeImageProcessor resize_mode=crop, [-1, 1]"
"""How images are prepared for the encoder (``read_batch``); part of the cache key."""

STAGING_PREFIX = ".latents-partial-"
"""Shards are written in a folder ``<prefix><host>-<pid>-<random>`` of the cache folder and
moved out when complete."""


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


def cache_latents(
    dataset: datasets.Dataset | datasets.IterableDataset,
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

    The cache is a folder under ``cache_dir`` named by a key of what the latents depend on: the
    autoencoder (``autoencoder_fingerprint``, from its weights), the images' content
    (``ctxadapter.data.content.content_fingerprint``: their bytes, not their paths or times),
    ``resolution``, the preprocessing, the contexts and ``keep_pixels``. It holds one Arrow
    file per shard of consecutive rows (``ctxadapter.data.cache_shards.shard_ranges``: their
    number depends on the rows only). Under ``accelerate launch`` each process encodes a
    contiguous share of the shards (``PartialState.split_between_processes``), then all wait
    for each other and read the union: the same files, with the same latents, as one process
    writes. A shard that exists is reused without running the encoder, after checking that it
    reads, has its rows and the expected columns (else it is encoded again), so an interrupted
    encode pass resumes at the shards it had not finished.

    Every shard is written in a private temporary folder beside the cache and moved into place
    when complete; on any error (a full disk included, named with the file's path) the partial
    file is removed. Images are read, encoded and written in batches, so memory does not grow
    with the dataset. A ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``) is
    read as it streams, each process from the start of its share.

    Args:
        dataset: rows with images in ``image_column``.
        codec: the frozen autoencoder.
        contexts: the canonical context of every row (from ``validate_dataset``); their number
            is the number of rows.
        image_column: the column with PIL images.
        resolution: images are resized (shorter side) and centre-cropped to
            ``resolution x resolution``, a multiple of the downsampling factor.
        cache_dir: folder for the cache folders.
        batch_size: images per encoder pass.
        keep_pixels: also keep the preprocessed images (uint8), for ``pixel`` loss.
        images_fingerprint: ``content_fingerprint(dataset, image_column)`` when the caller has
            computed it already (default: computed here).

    Returns:
        A dataset (the shards' memory-mapped union, in row order) with columns ``latents``
        ``(C, h, w)`` float32 (model-space posterior mean), ``context`` (string), ``logvar``
        (same shape, for a posterior) and, with ``keep_pixels``, ``pixels`` ``(3, H, W)``
        uint8.
    """
    shape = codec.latent_shape(resolution)
    if isinstance(dataset, datasets.Dataset) and len(contexts) != len(dataset):
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
    folder = Path(cache_dir) / f"latents-{key}"
    features = {
        "latents": datasets.Array3D(shape, "float32"),
        "context": datasets.Value("string"),
    }
    if codec.has_posterior:
        features["logvar"] = datasets.Array3D(shape, "float32")
    if keep_pixels:
        features["pixels"] = datasets.Array3D((3, resolution, resolution), "uint8")
    schema = datasets.Features(features)
    shards = shard_ranges(len(contexts))
    write = functools.partial(
        write_shards,
        dataset,
        codec=codec,
        columns=lambda rows: {"context": [contexts[i] for i in rows]},
        image_column=image_column,
        resolution=resolution,
        features=schema,
        batch_size=batch_size,
        keep_pixels=keep_pixels,
    )
    state = process_state()
    with state.split_between_processes(shards) as share:
        missing = [
            shard for shard in share if not reusable(folder / shard_name(shard), shard, schema)
        ]
        if missing:
            encode_into(folder, missing, write, state)
    state.wait_for_everyone()
    parts = [datasets.Dataset.from_file(str(folder / shard_name(shard))) for shard in shards]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def encode_into(
    folder: Path,
    shards: Sequence[range],
    write: Callable[[Sequence[range], Path], Iterator[Path]],
    state: PartialState,
) -> None:
    """Encode ``shards`` into the cache ``folder`` with ``write(shards, staging)``
    (``write_shards``), through a temporary folder of this process beside it
    (``STAGING_PREFIX``), and print the rate."""
    cache_dir = folder.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned(cache_dir)
    start = time.perf_counter()
    prefix = f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_dir))
    done = 0
    try:
        for path in write(shards, staging):
            folder.mkdir(exist_ok=True)
            os.replace(path, folder / path.name)
            done += 1
    except OSError as error:
        target = folder / shard_name(shards[min(done, len(shards) - 1)])
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        message = (
            f"Caching latents into {target} failed ({error}); the partial file was removed."
            + (" Free some space or choose another --cache_dir." if full else "")
        )
        raise OSError(error.errno, message) if error.errno else OSError(message) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - start  # what the encode pass cost: a run's one pass
    images, batch_size = sum(len(shard) for shard in shards), write.keywords["batch_size"]
    who = (
        f" (process {state.process_index} of {state.num_processes})"
        if state.num_processes > 1
        else ""
    )
    print(
        f"Encoded {images} images in {seconds:.1f} s ({images / seconds:.1f} images/s, "
        f"batches of {batch_size}) into {folder}{who}",
        flush=True,
    )


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


def reusable(path: Path, shard: range, features: datasets.Features) -> bool:
    """Whether the shard file ``path`` exists, reads (its Arrow schema and row count, without
    reading the latents), holds the rows of ``shard`` and has ``features``. A file that fails
    these checks is removed, with a note, so that it is encoded again."""
    if not path.is_file():
        return False
    try:
        cache = datasets.Dataset.from_file(str(path))
        problem = None
        if len(cache) != len(shard):
            problem = f"{len(cache)} rows for {len(shard)} images"
        elif cache.features != features:
            problem = f"columns {cache.features} where {features} were expected"
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
        problem = f"unreadable ({error})"
    if problem is None:
        return True
    print(f"The latent cache {path} is damaged ({problem}): encoding again.", flush=True)
    path.unlink()
    return False


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
    the memory-mapped Arrow shards (about 2 ms for 512 latents of 4x8x8), so the cache never
    has to fit in RAM.
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
