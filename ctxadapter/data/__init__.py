"""Data: image datasets labelled with contexts, the latent cache, batch samplers, built-in datasets.

Data flows one way::

    images + contexts (a datasets.Dataset)  --validate-->  --encode once-->  latent cache
    latent cache (memory-mapped Arrow shards)  --ContextBatchSampler-->  batches for the adapter

One job per module:

- ``ctxadapter.data.loading``: ``load_image_dataset``, ``validate_dataset`` and their helpers;
- ``ctxadapter.data.latent_cache``: ``cache_latents``, ``CachedLatents``, ``collate_batch``;
- ``ctxadapter.data.cache_shards``: the cache's shards (row ranges) and how rows are encoded
  into one;
- ``ctxadapter.data.content``: the images' content fingerprint (the cache key) and the check
  that one file has one context;
- ``ctxadapter.data.sampler``: ``ContextBatchSampler``, ``steps_per_epoch``;
- ``ctxadapter.data.quad`` (with ``quad_render``): the synthetic quad dataset of the paper;
- ``ctxadapter.data.photos``: interventional data from photographs bundled with scikit-image;
- ``ctxadapter.data.photo_crops``: augmented crops of those photographs, the training data of
  the shipped photo autoencoder;
- ``ctxadapter.data.splits``: ``generate_splits``, shared by the two built-in datasets.

The names of the first three are re-exported here (``from ctxadapter.data import
cache_latents``); the built-in datasets are imported as modules (``from ctxadapter.data import
quad``).
"""

from .latent_cache import (
    CACHE_FORMAT,
    CachedLatents,
    autoencoder_fingerprint,
    cache_latents,
    collate_batch,
    column_views,
    gather_rows,
)
from .loading import context_strings, infer_concepts, load_image_dataset, validate_dataset
from .sampler import ContextBatchSampler, steps_per_epoch

__all__ = [
    "CACHE_FORMAT",
    "CachedLatents",
    "ContextBatchSampler",
    "autoencoder_fingerprint",
    "cache_latents",
    "collate_batch",
    "column_views",
    "context_strings",
    "gather_rows",
    "infer_concepts",
    "load_image_dataset",
    "steps_per_epoch",
    "validate_dataset",
]
