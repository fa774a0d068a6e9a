"""The synthetic ``quad`` dataset of the paper (``docs/concepts.md``): images with known concepts
and interventions.

Eight scalar latents, in the order of :data:`LATENT_NAMES`, follow a linear Gaussian structural
causal model (SCM). Six of them are concepts (:data:`CONCEPTS`) that a context may intervene on.
A 64 x 64 RGB image is rendered from each latent vector:

1. Standardise with the exact observational mean (0) and standard deviation of the SCM, then map
   through the standard normal CDF Phi, giving ``values`` in [0, 1] (one per latent).
2. Colour the four quadrants by ``quad1`` (bottom-left), ``quad2`` (bottom-right), ``quad3``
   (top-left) and ``quad4`` (top-right) through ``colormap``.
3. Paint a disc, square, triangle or ellipse (``shape``) of side ``s = 48 * (0.2 + 0.8 * size)``
   pixels, angle ``theta = 2 * pi * orientation``, in the colour of ``color``, centred on the
   image.

Geometry conventions (the spec leaves them open):

- Pixel centres: pixel (row ``r``, column ``c``) is the unit square ``[c, c + 1] x [r, r + 1]``
  and is painted iff its centre lies in the shape (closed set, no anti-aliasing). Its offset from
  the image centre (32, 32) is ``dx = c + 0.5 - 32``, ``dy = r + 0.5 - 32``, so shapes are
  symmetric on the pixel grid and the centre is the point where the four quadrants meet.
- ``dy`` points down (image rows). With the spec's rotated coordinates
  ``x' = dx cos(-theta) - dy sin(-theta)``, ``y' = dx sin(-theta) + dy cos(-theta)``, a growing
  ``theta`` therefore turns shapes clockwise on screen; ``theta = 0`` puts the ellipse's long
  axis and a triangle vertex along +x (to the right).

Every (context, split, seed, dependent, strength) draws from its own deterministic random stream,
and ``sample(..., n)`` is a prefix of ``sample(..., m)`` for ``n <= m``.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

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
SPLITS: tuple[str, ...] = ("train", "validation", "test")
IMAGE_SIZE = 64

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
_COLOURS = np.array(
    [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=np.float64
)
_STREAM_TAG = 0x71756164  # "quad": keeps these streams apart from other seeded uses of `seed`
_RENDER_CHUNK = 1024  # images per vectorised rendering step (bounds peak memory)


def _parse_context(context: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical context: a tuple of distinct concept names in :data:`CONCEPTS` order.

    ``"obs"``, ``""`` and ``[]`` are the observational context ``()``; ``"quad1"``,
    ``"quad1+size"`` and ``["quad1", "size"]`` are interventions. Raises ``ValueError`` for an
    unknown concept name and ``TypeError`` for anything that is neither a string nor a sequence.
    """
    if isinstance(context, str):
        stripped = context.strip()
        names = [] if stripped in ("", "obs") else [n.strip() for n in stripped.split("+")]
    elif isinstance(context, Sequence):
        names = list(context)
    else:
        raise TypeError(f"context must be a string or a sequence of strings, got {context!r}")
    for name in names:
        if name not in CONCEPTS:
            raise ValueError(
                f"unknown concept {name!r} in context {context!r}; valid concepts: "
                f"{', '.join(CONCEPTS)} (or 'obs' for the observational context)"
            )
    return tuple(c for c in CONCEPTS if c in names)


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
    gets Gaussian noise with mean ``do_mean * strength`` and the do variance.
    """
    concepts = _parse_context(context)
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


def colormap(v: np.ndarray) -> np.ndarray:
    """Colours of ``v`` in [0, 1] (clipped), shape [...] -> uint8 [..., 3].

    Piecewise linear through red, yellow, green, cyan, blue, magenta in five equal segments,
    times 255, truncated: ``colormap(0.1) == (255, 127, 0)``.
    """
    t = 5.0 * np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    segment = np.minimum(np.floor(t), 4).astype(np.intp)
    frac = (t - segment)[..., None]
    rgb = (1.0 - frac) * _COLOURS[segment] + frac * _COLOURS[segment + 1]
    return (255.0 * rgb).astype(np.uint8)


def _shape_mask(kind: int, xr: np.ndarray, yr: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Pixels inside shape ``kind`` given rotated offsets [b, H, W] and half-sizes [b, 1, 1]."""
    if kind == 0:  # disc of radius s/2
        return xr**2 + yr**2 <= half**2
    if kind == 1:  # square of half-side s/2
        return (np.abs(xr) <= half) & (np.abs(yr) <= half)
    if kind == 2:  # triangle, vertices at radius s/2 and rotated angles 0, 2pi/3, 4pi/3
        # Inside iff on the inner side of the three edges; the edge opposite the vertex at
        # angle a has outward normal at angle a + pi and lies at distance s/4 (the inradius).
        inside = np.ones(xr.shape, dtype=bool)
        for k in range(3):
            angle = 2.0 * math.pi * k / 3.0
            inside &= xr * math.cos(angle) + yr * math.sin(angle) >= -half / 2.0
        return inside
    return (xr / half) ** 2 + (yr / (half / 2.0)) ** 2 <= 1.0  # ellipse, semi-axes s/2, s/4


def render(values: np.ndarray) -> np.ndarray:
    """Images of latent ``values`` in [0, 1] (Phi of the standardised latents): [n, 8] -> uint8.

    ``values`` (clipped to [0, 1]) has columns in :data:`LATENT_NAMES` order; the result has
    shape [n, 64, 64, 3]. ``size -> 0.2 + 0.8 * size``, ``shape -> round(3 * shape)`` (0 disc,
    1 square, 2 triangle, 3 ellipse; halves round to even) and ``theta = 2 pi orientation``.
    See the module docstring for the pixel-centre and orientation conventions.
    """
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    images = np.empty((len(values), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    mid = IMAGE_SIZE // 2
    offsets = np.arange(IMAGE_SIZE) + 0.5 - mid
    dx, dy = offsets[None, None, :], offsets[None, :, None]
    for start in range(0, len(values), _RENDER_CHUNK):
        chunk = values[start : start + _RENDER_CHUNK]
        out = images[start : start + _RENDER_CHUNK]
        quads = colormap(chunk[:, :4])[:, :, None, None, :]  # [b, 4, 1, 1, 3]
        out[:, mid:, :mid] = quads[:, 0]
        out[:, mid:, mid:] = quads[:, 1]
        out[:, :mid, :mid] = quads[:, 2]
        out[:, :mid, mid:] = quads[:, 3]
        half = (48.0 * (0.2 + 0.8 * chunk[:, 4]) / 2.0)[:, None, None]
        kinds = np.rint(3.0 * chunk[:, 6]).astype(np.intp)
        theta = (2.0 * math.pi * chunk[:, 7])[:, None, None]
        cos, sin = np.cos(-theta), np.sin(-theta)
        xr = dx * cos - dy * sin
        yr = dx * sin + dy * cos
        mask = np.zeros(xr.shape, dtype=bool)
        for kind in range(4):
            rows = np.flatnonzero(kinds == kind)
            mask[rows] = _shape_mask(kind, xr[rows], yr[rows], half[rows])
        np.copyto(out, colormap(chunk[:, 5])[:, None, None, :], where=mask[..., None])
    return images


def latents_to_images(latents: np.ndarray, dependent: bool = True) -> np.ndarray:
    """Images of raw latents [n, 8] (as returned by ``sample_latents``): uint8 [n, 64, 64, 3].

    Standardises with the exact observational statistics of the chosen variant
    (``obs_mean_std``), maps through Phi and calls ``render``.
    """
    mean, std = obs_mean_std(dependent)
    z = torch.from_numpy((np.asarray(latents, dtype=np.float64) - mean) / std)
    return render(torch.special.ndtr(z).numpy())


def sample(
    context: str | Sequence[str],
    n: int,
    seed: int = 0,
    dependent: bool = True,
    strength: float = 1.0,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``context`` with their raw latents.

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
        for start in range(0, n, _RENDER_CHUNK):
            chunk = latents[start : start + _RENDER_CHUNK]
            for image, row in zip(latents_to_images(chunk, dependent), chunk, strict=False):
                yield {"image": Image.fromarray(image), "context": context, "latents": row.tolist()}


def generate_splits(
    examples: Callable[..., Iterator[dict]],
    columns: dict[str, datasets.features.FeatureType],
    train_contexts: Sequence[str],
    test_compositions: Sequence[str],
    per_context: dict[str, int],
    cache_dir: str | None = None,
    **gen_kwargs,
) -> datasets.DatasetDict:
    """A generated interventional dataset as a ``DatasetDict`` with splits ``train``,
    ``validation`` and ``test`` (shared by this module's and ``realdata``'s ``build_dataset``).

    ``train`` and ``validation`` hold ``per_context[split]`` rows of each of ``train_contexts``;
    ``test`` holds ``per_context["test"]`` rows of each of ``train_contexts`` and of
    ``test_compositions``. Each split is drawn by
    ``examples(split=, contexts=, n=, **gen_kwargs, source_digest=)``, a generator of row dicts,
    through ``datasets.Dataset.from_generator`` into Arrow files under ``cache_dir`` (the
    ``datasets`` cache by default). Columns: ``image`` (``datasets.Image``), ``context``
    (string), then ``columns`` (name -> ``datasets`` feature). ``source_digest``, the SHA-256 of
    the file defining ``examples``, keys that cache on the generator's code: ``datasets`` hashes
    an importable generator by its name only.
    """
    features = datasets.Features(
        {"image": datasets.Image(), "context": datasets.Value("string"), **columns}
    )
    source_digest = hashlib.sha256(Path(inspect.getfile(examples)).read_bytes()).hexdigest()
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
            for batch in raw.iter(batch_size=_RENDER_CHUNK):
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
