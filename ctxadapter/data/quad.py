"""The synthetic ``quad`` dataset of the paper (``docs/concepts.md``): images with known concepts
and interventions.

Eight scalar latents, in the order of :data:`LATENT_NAMES`, follow a linear Gaussian structural
causal model (SCM). Six of them are concepts (:data:`CONCEPTS`) that a context may intervene on.
A 64 x 64 RGB image is rendered from each latent vector: standardise it with the exact
observational mean (0) and standard deviation of the SCM, map it through the standard normal CDF
Phi, giving ``values`` in [0, 1] (one per latent), and paint them with
``ctxadapter.data.quad_render.render`` (whose docstring gives the picture and its geometry).

Every (context, split, seed, dependent, strength) draws from its own deterministic random stream,
and ``sample(..., n)`` is a prefix of ``sample(..., m)`` for ``n <= m``.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from ..contexts import parse_context
from . import quad_render
from .quad_render import RENDER_CHUNK, render
from .splits import SPLITS, generate_splits

__all__ = [
    "CONCEPTS",
    "HELDOUT_COMPOSITIONS",
    "LATENT_NAMES",
    "SPLITS",
    "TRAIN_CONTEXTS",
    "ancestral_relation",
    "build_dataset",
    "concept_values",
    "counterfactual_latents",
    "latents_to_images",
    "obs_mean_std",
    "sample",
    "sample_latents",
    "standardize",
    "write_imagefolder",
]

LATENT_NAMES: tuple[str, ...] = (
    "quad1",
    "quad2",
    "quad3",
    "quad4",
    "size",
    "color",
    "shape",
    "orientation",
)
CONCEPTS: tuple[str, ...] = ("quad1", "quad2", "quad3", "quad4", "size", "orientation")
TRAIN_CONTEXTS: tuple[str, ...] = ("obs", *CONCEPTS)
HELDOUT_COMPOSITIONS: tuple[str, ...] = (
    "quad1+quad2",
    "quad1+quad3",
    "quad1+quad4",
    "quad1+size",
    "quad1+orientation",
    "quad2+quad3",
    "quad2+quad4",
    "quad2+size",
    "quad2+orientation",
)

_EDGES: dict[tuple[str, str], float] = {
    ("quad2", "quad1"): -1.23,
    ("quad4", "quad1"): 1.34,
    ("color", "quad1"): -0.95,
    ("orientation", "quad1"): 1.12,
    ("quad3", "quad2"): 1.56,
    ("shape", "quad2"): 0.58,
    ("quad4", "quad3"): -0.72,
    ("color", "size"): 1.67,
    ("orientation", "size"): -0.81,
    ("shape", "color"): -1.34,
    ("orientation", "shape"): 1.45,
}
# Per latent, in LATENT_NAMES order: observational noise variance, do mean (times strength) and
# do variance.
_OBS_VAR = np.array([1.3855493, 1.16426732, 1.00502177, 1.95646855, 1.27482347, 1.42, 1.31, 1.18])
_DO_MEAN = np.array(
    [1.16920556, 1.47496736, -1.60596209, -1.96578519, 1.0117071, -0.85, 1.23, -0.67]
)
_DO_VAR = np.array([1.94878138, 1.35886756, 1.57343313, 1.1021785, 1.30511067, 1.52, 1.41, 1.26])
# Parents before children.
_TOPO_ORDER = tuple(
    LATENT_NAMES.index(name)
    for name in ("orientation", "shape", "color", "size", "quad4", "quad3", "quad2", "quad1")
)
_STREAM_TAG = 0x71756164  # "quad": keeps these streams apart from other seeded uses of `seed`


def _weights(dependent: bool) -> np.ndarray:
    """Edge weights ``W[i, j]`` of ``i -> j``, shape [8, 8]; all zero if not ``dependent``."""
    weights = np.zeros((len(LATENT_NAMES), len(LATENT_NAMES)))
    if dependent:
        for (parent, child), weight in _EDGES.items():
            weights[LATENT_NAMES.index(parent), LATENT_NAMES.index(child)] = weight
    return weights


def obs_mean_std(dependent: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact observational mean and standard deviation of the raw latents, float64 [8] each.

    The mean is 0; with ``X = X W + N`` (rows are samples) the covariance is
    ``(I - W)^-T D (I - W)^-1`` with ``D`` the diagonal of observational noise variances.
    """
    inverse = np.linalg.inv(np.eye(len(LATENT_NAMES)) - _weights(dependent))
    covariance = inverse.T @ np.diag(_OBS_VAR) @ inverse
    return np.zeros(len(LATENT_NAMES)), np.sqrt(np.diag(covariance))


def standardize(latents: np.ndarray, dependent: bool = True) -> np.ndarray:
    """Raw latents ``[n, 8]`` -> standardised with the exact observational statistics of the
    variant (``obs_mean_std``): float64 ``[n, 8]``, the values the images are rendered from
    (through Phi)."""
    mean, std = obs_mean_std(dependent)
    return (np.asarray(latents, dtype=np.float64) - mean) / std


def concept_values(latents: np.ndarray, dependent: bool = True) -> np.ndarray:
    """The standardised values of the :data:`CONCEPTS` (columns in that order) of raw latents
    ``[n, 8]``: float64 ``[n, 6]``."""
    columns = [LATENT_NAMES.index(name) for name in CONCEPTS]
    return standardize(latents, dependent)[:, columns]


def ancestral_relation(
    concepts: Sequence[str] = CONCEPTS, dependent: bool = True
) -> torch.BoolTensor:
    """The true ancestral relation of the SCM among ``concepts``: bool ``(K, K)``.

    Entry ``(i, j)`` is True iff ``concepts[j]`` is a direct or indirect ancestor of
    ``concepts[i]``, paths through every latent (``color`` and ``shape`` too) counted; the same
    layout as ``CtxAdapter.concept_graph()`` (effect of concept ``j`` on concept ``i``). The
    diagonal is False (the SCM is acyclic) and so is every entry of the independent variant.
    ``concepts`` are names of :data:`LATENT_NAMES`, without repeats.
    """
    names = list(concepts)
    for name in names:
        if name not in LATENT_NAMES:
            raise ValueError(f"unknown latent {name!r}; valid names: {', '.join(LATENT_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"concepts must not repeat a name, got {names}")
    reach = _weights(dependent) != 0  # reach[p, c]: a path p -> ... -> c (Warshall's closure)
    for k in range(len(LATENT_NAMES)):
        reach |= reach[:, k : k + 1] & reach[k : k + 1, :]
    index = [LATENT_NAMES.index(name) for name in names]
    return torch.from_numpy(np.ascontiguousarray(reach[np.ix_(index, index)].T))


def _rng(
    concepts: tuple[str, ...], seed: int, dependent: bool, strength: float, split: str
) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    context_bits = sum(1 << CONCEPTS.index(c) for c in concepts)
    strength_bits = int.from_bytes(struct.pack("<d", float(strength)), "little")
    return np.random.default_rng(
        [_STREAM_TAG, int(seed), SPLITS.index(split), int(dependent), strength_bits, context_bits]
    )


def sample_latents(
    context: str | Sequence[str],
    n: int,
    seed: int = 0,
    dependent: bool = True,
    strength: float = 1.0,
    split: str = "train",
) -> np.ndarray:
    """Raw (unstandardised) latents of ``n`` samples from ``context``: float32 [n, 8].

    Columns follow :data:`LATENT_NAMES`. Each intervened variable loses its incoming edges and
    gets Gaussian noise with mean ``do_mean * strength`` and the do variance. ``context`` is
    read by ``ctxadapter.contexts.parse_context`` over :data:`CONCEPTS` with ``lenient=True``
    (spaces around names and ``""`` for ``"obs"`` are accepted).
    """
    concepts = parse_context(context, CONCEPTS, lenient=True)
    rng = _rng(concepts, seed, dependent, strength, split)
    weights = _weights(dependent)
    mean, var = np.zeros(len(LATENT_NAMES)), _OBS_VAR.copy()
    for name in concepts:
        j = LATENT_NAMES.index(name)
        weights[:, j] = 0.0
        mean[j], var[j] = _DO_MEAN[j] * strength, _DO_VAR[j]
    noise = mean + np.sqrt(var) * rng.standard_normal((n, len(LATENT_NAMES)))
    latents = np.zeros_like(noise)
    for j in _TOPO_ORDER:
        latents[:, j] = latents @ weights[:, j] + noise[:, j]
    return latents.astype(np.float32)


def counterfactual_latents(
    latents: np.ndarray,
    context: str | Sequence[str],
    dependent: bool = True,
    strength: float = 1.0,
) -> np.ndarray:
    """The true counterfactuals of observational samples under ``context``: float32 [n, 8].

    For each row of raw observational ``latents`` (as ``sample_latents("obs", ...)`` returns):
    recover every exogenous noise ``N_v = X_v - sum_p W[p -> v] X_p``, replace the noise of each
    intervened variable ``j`` by the interventional noise *at the same quantile*
    (``do_mean_j * strength + sqrt(do_var_j / obs_var_j) * N_j``), cut ``j``'s incoming edges,
    and recompute every variable in topological order with its own noise. Non-descendants of
    the intervened variables keep their values; ``context="obs"`` returns ``latents``
    unchanged (up to float32 rounding). This is the monotone coupling of the observational and
    interventional noise, the SCM's own counterfactual.
    """
    concepts = parse_context(context, CONCEPTS, lenient=True)
    raw = np.asarray(latents, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(LATENT_NAMES):
        raise ValueError(f"latents must have shape [n, {len(LATENT_NAMES)}], got {list(raw.shape)}")
    weights = _weights(dependent)
    noise = raw - raw @ weights
    for name in concepts:
        j = LATENT_NAMES.index(name)
        weights[:, j] = 0.0
        noise[:, j] = _DO_MEAN[j] * strength + np.sqrt(_DO_VAR[j] / _OBS_VAR[j]) * noise[:, j]
    out = np.zeros_like(noise)
    for j in _TOPO_ORDER:
        out[:, j] = out @ weights[:, j] + noise[:, j]
    return out.astype(np.float32)


def latents_to_images(latents: np.ndarray, dependent: bool = True) -> np.ndarray:
    """Images of raw latents [n, 8] (as returned by ``sample_latents``): uint8 [n, 64, 64, 3].

    Standardises with the exact observational statistics of the chosen variant
    (``obs_mean_std``), maps through Phi and calls ``render``.
    """
    z = torch.from_numpy(standardize(latents, dependent))
    return render(torch.special.ndtr(z).numpy())


def sample(
    context: str | Sequence[str],
    n: int,
    seed: int = 0,
    dependent: bool = True,
    strength: float = 1.0,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``context`` with their raw latents (the arguments of ``sample_latents``).

    ``context`` is ``"obs"``, ``""``, ``[]``, a concept name, ``"quad1+size"`` or
    ``["quad1", "size"]``; ``split`` is one of :data:`SPLITS`. Returns ``(images, latents)``:
    uint8 [n, 64, 64, 3] and float32 [n, 8] (columns in :data:`LATENT_NAMES` order). The images
    are rendered from exactly the returned float32 latents.
    """
    latents = sample_latents(context, n, seed, dependent, strength, split)
    return latents_to_images(latents, dependent), latents


def _examples(
    split: str,
    contexts: tuple[str, ...],
    n: int,
    seed: int,
    dependent: bool,
    strength: float,
    source_digest: str,
) -> Iterator[dict]:
    """Rows of one split. ``source_digest`` (unused here) keys the ``datasets`` cache on this
    module's source: ``datasets`` hashes an importable generator by name, not by code."""
    for context in contexts:
        latents = sample_latents(context, n, seed, dependent, strength, split)
        for start in range(0, n, RENDER_CHUNK):
            chunk = latents[start : start + RENDER_CHUNK]
            for image, row in zip(latents_to_images(chunk, dependent), chunk, strict=False):
                yield {"image": Image.fromarray(image), "context": context, "latents": row.tolist()}


def build_dataset(
    n_per_context: int = 50_000,
    heldout_per_context: int = 10_000,
    seed: int = 0,
    dependent: bool = True,
    strength: float = 1.0,
    cache_dir: str | None = None,
    validation_per_context: int | None = None,
) -> datasets.DatasetDict:
    """The quad dataset as a ``DatasetDict`` with splits ``train``, ``validation`` and ``test``.

    ``train`` holds ``n_per_context`` samples of each of :data:`TRAIN_CONTEXTS`; ``validation``
    holds ``validation_per_context`` (default: a tenth of ``n_per_context``, at least one) fresh
    samples of each training context, for early stopping and sample grids; ``test`` holds
    ``heldout_per_context`` fresh samples of each training context and of each of
    :data:`HELDOUT_COMPOSITIONS`. Columns: ``image`` (PIL, 64 x 64 RGB), ``context`` (canonical
    string) and ``latents`` (8 raw float32 latents). Rows are generated in chunks and written to
    Arrow files under ``cache_dir`` (the ``datasets`` cache by default), so memory stays bounded.
    """
    if validation_per_context is None:
        validation_per_context = max(1, n_per_context // 10)
    return generate_splits(
        _examples,
        {"latents": datasets.Sequence(datasets.Value("float32"), length=len(LATENT_NAMES))},
        TRAIN_CONTEXTS,
        HELDOUT_COMPOSITIONS,
        {
            "train": n_per_context,
            "validation": validation_per_context,
            "test": heldout_per_context,
        },
        cache_dir,
        sources=(quad_render,),
        seed=seed,
        dependent=dependent,
        strength=strength,
    )


def write_imagefolder(dataset_dict: datasets.DatasetDict, root: str | Path) -> None:
    """Write ``dataset_dict`` as an image folder loadable by ``load_dataset("imagefolder")``.

    Writes ``root/<split>/<context>_<i>.png`` (``i`` counts within each context) and
    ``root/<split>/metadata.jsonl`` with one ``{"file_name", "context", "latents"}`` object per
    image. PNG-encoded images are copied byte for byte; others are re-encoded as PNG.
    """
    for split, dataset in dataset_dict.items():
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = {}
        raw = dataset.cast_column("image", datasets.Image(decode=False))
        with open(folder / "metadata.jsonl", "w") as metadata:
            for batch in raw.iter(batch_size=RENDER_CHUNK):
                for image, context, latents in zip(
                    batch["image"], batch["context"], batch["latents"], strict=False
                ):
                    file_name = f"{context}_{counts.get(context, 0)}.png"
                    counts[context] = counts.get(context, 0) + 1
                    data = image["bytes"] or Path(image["path"]).read_bytes()
                    if data.startswith(b"\x89PNG\r\n\x1a\n"):
                        (folder / file_name).write_bytes(data)
                    else:
                        Image.open(io.BytesIO(data)).save(folder / file_name)
                    record = {"file_name": file_name, "context": context, "latents": latents}
                    metadata.write(json.dumps(record) + "\n")
