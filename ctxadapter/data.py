"""Data: image datasets labelled with contexts, the latent cache, and batch samplers.

Data flows one way::

    images + contexts (a datasets.Dataset)  --validate-->  --encode once-->  latent cache
    latent cache (memory-mapped Arrow)  --ContextBatchSampler-->  batches for the adapter

Sources: a ``datasets`` dataset (Hub id, local ``save_to_disk`` folder or local script),
an imagefolder with a ``metadata.jsonl`` holding a context column, or the built-in quad data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from diffusers import AutoencoderKL

from .codec import LatentCodec
from .contexts import context_name, parse_context

CACHE_FORMAT = 1
"""Bumped whenever the latent cache's content changes meaning, so old caches are not reused."""


# ---------------------------------------------------------------------------- loading


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    cache_dir: str | None = None,
    quad_images_per_context: int = 2_000,
    quad_dependent: bool = True,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Load the images and their contexts as a ``DatasetDict``.

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
    """
    if dataset_name and train_data_dir:
        raise ValueError("Pass --dataset_name or --train_data_dir, not both.")
    if dataset_name:
        if os.path.isdir(dataset_name) and os.path.exists(
            os.path.join(dataset_name, "dataset_dict.json")
        ):
            loaded = datasets.load_from_disk(dataset_name)
        else:
            loaded = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    elif train_data_dir:
        if not os.path.isdir(train_data_dir):
            raise FileNotFoundError(f"--train_data_dir {train_data_dir!r} is not a folder.")
        loaded = datasets.load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir)
    else:
        from . import quad

        loaded = quad.build_dataset(
            n_per_context=quad_images_per_context,
            heldout_per_context=max(1, quad_images_per_context // 4),
            seed=seed,
            dependent=quad_dependent,
            cache_dir=cache_dir,
        )
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise ValueError(f"The dataset has no 'train' split; its splits are {list(loaded)}.")
    return loaded


def context_strings(dataset: datasets.Dataset, context_column: str) -> list[str]:
    """The context column as strings: lists of names are joined with ``"+"`` (empty -> obs)."""
    values = dataset[context_column]
    return [
        value if isinstance(value, str) else context_name(tuple(value)) if value else "obs"
        for value in values
    ]


def infer_concepts(contexts: Sequence[str]) -> list[str]:
    """The concept names used in ``contexts`` (strings such as ``"quad1+size"``), sorted."""
    names = {name for context in set(contexts) if context != "obs" for name in context.split("+")}
    return sorted(names)


def validate_dataset(
    dataset: datasets.Dataset,
    image_column: str,
    context_column: str | None,
    concepts: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Check a training dataset before anything is trained or written.

    Args:
        dataset: the rows.
        image_column: must exist.
        context_column: must exist, unless ``None`` (contexts not used: only the images are
            checked).
        concepts: the configured concepts; default: inferred from the data.

    Returns:
        ``(concepts, contexts)``: the concept list (given, or inferred from the data) and the
        canonical context of every row; ``([], [])`` when ``context_column`` is ``None``.

    Raises:
        ValueError: for an empty dataset, a missing column, a malformed or unknown context, or a
            configured concept that no row intervenes on alone (a context with no samples).
    """
    if len(dataset) == 0:
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
    return names, [canonical_of[value] for value in raw]


# ---------------------------------------------------------------------------- latent cache


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
    dataset: datasets.Dataset,
    codec: LatentCodec,
    contexts: Sequence[str],
    image_column: str,
    resolution: int,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    keep_pixels: bool = False,
) -> datasets.Dataset:
    """Encode every image once with the frozen encoder and keep the latents on disk.

    The cache is a ``datasets`` Arrow file under ``cache_dir``, named by a key of what produced
    it: the autoencoder (``autoencoder_fingerprint``), ``resolution``, the dataset's
    fingerprint, the contexts and ``keep_pixels``. A later run with the same key reuses it
    without running the encoder. Images are encoded and written in batches, so memory does not
    grow with the dataset.

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
        dataset=dataset._fingerprint,
        image_column=image_column,
        keep_pixels=keep_pixels,
        contexts=hashlib.sha256("\n".join(contexts).encode()).hexdigest(),
    )
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"latents-{key}.arrow"
    has_logvar = isinstance(codec.autoencoder, AutoencoderKL)
    features = {
        "latents": datasets.Array3D(shape, "float32"),
        "context": datasets.Value("string"),
    }
    if has_logvar:
        features["logvar"] = datasets.Array3D(shape, "float32")
    if keep_pixels:
        features["pixels"] = datasets.Array3D((3, resolution, resolution), "uint8")

    def encode(batch, indices):
        pixels = codec.preprocess(
            [image.convert("RGB") for image in batch[image_column]],
            height=resolution,
            width=resolution,
            resize_mode="crop",
        )
        mean, logvar = codec.encode_distribution(pixels)
        out = {"latents": mean.numpy(), "context": [contexts[i] for i in indices]}
        if has_logvar:
            out["logvar"] = logvar.numpy()
        if keep_pixels:
            out["pixels"] = ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        return out

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return dataset.map(
        encode,
        with_indices=True,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        features=datasets.Features(features),
        cache_file_name=str(cache_file),
        load_from_cache_file=True,
        new_fingerprint=key,
        writer_batch_size=batch_size * 4,
        desc="Caching latents",
    )


# ---------------------------------------------------------------------------- batches


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
        table = torch.zeros(len(distinct), len(self.concepts), dtype=torch.bool)
        for row, context in enumerate(distinct):
            for name in parse_context(context, self.concepts):
                table[row, self.concepts.index(name)] = True
        ids = {context: row for row, context in enumerate(distinct)}
        self.context_ids = torch.tensor([ids[c] for c in contexts], dtype=torch.long)
        self.context_table = table
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


class ContextBatchSampler(torch.utils.data.Sampler):
    """Yields lists of row indices, reshuffled every epoch from ``(seed, epoch)`` alone, so a
    resumed run sees the same batches as an uninterrupted one.

    Args:
        context_ids: ``(N,)`` the context index of every row.
        batch_size: rows per batch.
        mode: ``"mixed"`` (batches mix contexts) or ``"context_pure"`` (every batch holds one
            context, as in the paper; contexts with more rows give more batches).
        seed: base seed of the shuffles.
        drop_last: drop incomplete batches (always done for a context's last partial batch in
            ``context_pure`` mode when the context has at least one full batch).
    """

    def __init__(
        self,
        context_ids: torch.Tensor,
        batch_size: int,
        mode: str = "mixed",
        seed: int = 0,
        drop_last: bool = True,
    ):
        if mode not in ("mixed", "context_pure"):
            raise ValueError(f"sampler must be 'mixed' or 'context_pure', got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.context_ids = torch.as_tensor(context_ids)
        self.batch_size, self.mode, self.seed, self.drop_last = batch_size, mode, seed, drop_last
        self.epoch = 0
        self._num_batches = len(self._batches(0))

    def shuffle_for_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch``. (Not named ``set_epoch`` on purpose: Accelerate calls
        ``set_epoch`` with its own count of passes over the loader, which restarts at 0 when a
        run is resumed; the epoch here must come from the training step.)"""
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        size = self.batch_size
        if self.mode == "mixed":
            order = torch.randperm(len(self.context_ids), generator=generator)
            groups = [order]
        else:
            groups = []
            for context in torch.unique(self.context_ids):
                rows = torch.nonzero(self.context_ids == context).flatten()
                groups.append(rows[torch.randperm(len(rows), generator=generator)])
        batches = []
        for rows in groups:
            full = len(rows) // size
            keep_partial = not self.drop_last or (self.mode == "context_pure" and full == 0)
            stop = len(rows) if keep_partial else full * size
            batches += [rows[i : i + size].tolist() for i in range(0, stop, size)]
        if self.mode == "context_pure":
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches(self.epoch))

    def __len__(self) -> int:
        return self._num_batches


def steps_per_epoch(num_batches: int, num_processes: int, accumulation: int) -> int:
    """Optimizer steps in one epoch of ``num_batches`` batches shared by the processes."""
    return max(1, math.ceil(math.ceil(num_batches / num_processes) / accumulation))
