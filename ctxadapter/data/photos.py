"""Interventional data from real photographs that ship offline, inside scikit-image's wheel.

A small worked example on real images, next to the synthetic ``quad`` data: the observational
samples are random crops of a few public-domain / CC0 photographs bundled with scikit-image
(:data:`PHOTOS`: an astronaut, a cat, a coffee cup, a rocket launch, the Hubble deep field and a
stained tissue slide), and each concept is an image transformation applied, under its context,
with a random strength:

| concept | what an intervention does (the observational context does none of it) |
|---|---|
| ``hue`` | turns the hue circle by a random fraction of a turn |
| ``blur`` | a Gaussian blur of random standard deviation (pixels at 64 x 64) |
| ``rotation`` | rotates the crop by a random angle (degrees) about its centre |
| ``scale`` | zooms into the crop's centre by a random factor |

The ranges of the strengths are in :data:`STRENGTHS`.

A composition (``"hue+blur"``) applies several transformations to the same crop. The
transformations are independent of each other (no causal edge between concepts is built in),
though zooming in does soften an image, so ``scale`` and ``blur`` are not unrelated in pixels.

Only the image files of the ``skimage/data`` folder of the installed scikit-image are read (with
Pillow): no ``skimage.data`` fetcher is called, so nothing is ever downloaded. scikit-image is an
optional dependency (``pip install "ctxadapter[examples]"``)::

    from ctxadapter.data import photos

    data = photos.build_dataset(images_per_context=1000)        # train / validation / test
    data.save_to_disk("real-images")                           # then --dataset_name real-images

Every sample is described by a small dict of parameters (``sample_params``) and drawn from
them by ``render``, deterministically; the dataset keeps the parameters as columns. Each
(seed, split, context) has its own random stream, and ``sample_params(..., n)`` is a prefix of
``sample_params(..., m)`` for ``n <= m``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..contexts import all_pairs, parse_context
from .splits import SPLITS, generate_splits

__all__ = [
    "CONCEPTS",
    "PHOTOS",
    "SPLITS",
    "STRENGTHS",
    "TEST_COMPOSITIONS",
    "TRAIN_CONTEXTS",
    "build_dataset",
    "load_photo",
    "render",
    "sample_params",
]

PHOTOS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
}
"""Photograph name -> file in ``skimage/data``: colour photographs bundled in scikit-image's
wheel (public domain or CC0, or with no known copyright restrictions, per scikit-image's
``skimage.data`` documentation)."""

CONCEPTS: tuple[str, ...] = ("hue", "blur", "rotation", "scale")
TRAIN_CONTEXTS: tuple[str, ...] = ("obs", *CONCEPTS)
TEST_COMPOSITIONS: tuple[str, ...] = tuple(all_pairs(CONCEPTS))
"""Every pair of concepts: compositions never seen in training (``test`` split only)."""

STRENGTHS: dict[str, tuple[float, float]] = {
    "hue": (0.2, 0.8),
    "blur": (1.0, 2.5),
    "rotation": (30.0, 330.0),
    "scale": (1.6, 2.8),
}
"""Uniform range of each transformation's strength under an intervention: ``hue`` in turns of
the hue circle, ``blur`` the Gaussian standard deviation in pixels of a 64 x 64 image (scaled
with the size), ``rotation`` in degrees (counter-clockwise), ``scale`` the zoom factor. In the
observational context the strengths are ``0, 0, 0, 1`` (no transformation)."""

CROP_FRACTION: tuple[float, float] = (0.35, 0.6)
"""Side of a crop as a fraction of the photograph's shorter side (uniform)."""

_IDENTITY = {"hue": 0.0, "blur": 0.0, "rotation": 0.0, "scale": 1.0}
_STREAM_TAG = 0x7265616C  # "real": keeps these streams apart from other seeded uses of `seed`
_SUPERSAMPLE = 4  # crops are resampled at this multiple of the output size, then reduced


def _data_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image (files read, nothing fetched)."""
    from importlib.util import find_spec

    spec = find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "ctxadapter.data.photos needs scikit-image for its bundled photographs: "
            'pip install "ctxadapter[examples]" (or pip install scikit-image).'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@lru_cache(maxsize=None)
def load_photo(name: str, max_short_side: int = 512) -> Image.Image:
    """One of :data:`PHOTOS` as an RGB PIL image, downscaled (Lanczos) so that its shorter side
    is at most ``max_short_side``. Read from the installed scikit-image's data folder."""
    if name not in PHOTOS:
        raise ValueError(f"Unknown photograph {name!r}; choose among {', '.join(PHOTOS)}.")
    path = _data_dir() / PHOTOS[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this scikit-image installation does not bundle {name!r}."
        )
    with Image.open(path) as image:
        photo = image.convert("RGB")
    short = min(photo.size)
    if short > max_short_side:
        ratio = max_short_side / short
        size = (round(photo.width * ratio), round(photo.height * ratio))
        photo = photo.resize(size, Image.Resampling.LANCZOS)
    return photo


def _rng(context: tuple[str, ...], seed: int, split: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    bits = sum(1 << CONCEPTS.index(c) for c in context)
    return np.random.default_rng([_STREAM_TAG, int(seed), SPLITS.index(split), bits])


def sample_params(
    context: str | Sequence[str],
    n: int,
    seed: int = 0,
    split: str = "train",
    photos: Sequence[str] | None = None,
) -> list[dict]:
    """Draw ``n`` samples' parameters under ``context``.

    Every sample draws the same kind and count of numbers whatever the context (a photograph, a
    crop, then one strength per concept), so crops follow the same distribution in every context;
    only the intervened concepts keep their strength, the others are set to the identity
    (``hue 0, blur 0, rotation 0, scale 1``).

    Args:
        context: ``"obs"``, a concept, a composition such as ``"hue+blur"``, or a list of names.
        n: number of samples.
        seed: base seed.
        split: ``"train"``, ``"validation"`` or ``"test"``: each has its own random stream.
        photos: the photographs to crop (default: all of :data:`PHOTOS`).

    Returns:
        ``n`` dicts with keys ``photo`` (name), ``center_x``, ``center_y`` (crop centre, as a
        fraction of the photograph's width and height), ``crop`` (crop side as a fraction of its
        shorter side), ``hue``, ``blur``, ``rotation``, ``scale``.
    """
    canonical = parse_context(context, CONCEPTS)
    names = list(PHOTOS if photos is None else photos)
    if not names:
        raise ValueError("photos must name at least one photograph.")
    sizes = {name: load_photo(name).size for name in names}
    rng = _rng(canonical, seed, split)
    out = []
    for _ in range(n):
        photo = names[int(rng.integers(len(names)))]
        width, height = sizes[photo]
        short = min(width, height)
        crop = float(rng.uniform(*CROP_FRACTION))
        # Centres leave room for any rotation of the crop (half its diagonal), in every context,
        # so that the crop distribution does not depend on the context.
        margin = crop * short / math.sqrt(2)
        center_x = float(rng.uniform(margin, width - margin)) / width
        center_y = float(rng.uniform(margin, height - margin)) / height
        strengths = {name: float(rng.uniform(*STRENGTHS[name])) for name in CONCEPTS}
        params = {"photo": photo, "center_x": center_x, "center_y": center_y, "crop": crop}
        params.update({c: strengths[c] if c in canonical else _IDENTITY[c] for c in CONCEPTS})
        out.append(params)
    return out


def render(params: dict, size: int = 64) -> Image.Image:
    """Draw one sample: a ``size x size`` RGB crop of ``params["photo"]``, rotated and zoomed
    about its centre, then hue-shifted, then blurred, as ``params`` (from
    ``sample_params``) says."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    photo = load_photo(params["photo"])
    width, height = photo.size
    side = params["crop"] * min(width, height) / params["scale"]  # source pixels
    big = size * _SUPERSAMPLE
    step = side / big  # source pixels per supersampled output pixel
    # A negative angle in these (row-down) coordinates turns the content counter-clockwise on
    # screen, as PIL's Image.rotate does.
    angle = -math.radians(params["rotation"])
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = params["center_x"] * width, params["center_y"] * height
    # Output pixel (u, v) samples the source at centre + step * R(angle) (u - big/2, v - big/2).
    offset = big / 2
    coefficients = (
        step * cos,
        step * sin,
        cx - step * (cos * offset + sin * offset),
        -step * sin,
        step * cos,
        cy - step * (-sin * offset + cos * offset),
    )
    image = photo.transform(
        (big, big), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BICUBIC
    )
    image = image.reduce(_SUPERSAMPLE)
    if params["hue"]:
        hue, saturation, value = image.convert("HSV").split()
        shift = round(params["hue"] * 256) % 256
        hue = hue.point(lambda h: (h + shift) % 256)
        image = Image.merge("HSV", (hue, saturation, value)).convert("RGB")
    if params["blur"]:
        image = image.filter(ImageFilter.GaussianBlur(params["blur"] * size / 64))
    return image


def _examples(
    split: str,
    contexts: tuple[str, ...],
    n: int,
    seed: int,
    size: int,
    photos: tuple[str, ...] | None,
    source_digest: str,
) -> Iterator[dict]:
    """Rows of one split. ``source_digest`` (unused here) keys the ``datasets`` cache on this
    module's source: ``datasets`` hashes an importable generator by name, not by code."""
    for context in contexts:
        for params in sample_params(context, n, seed, split, photos):
            yield {"image": render(params, size), "context": context, **params}


def build_dataset(
    images_per_context: int = 1000,
    validation_per_context: int | None = None,
    test_per_context: int | None = None,
    size: int = 64,
    seed: int = 0,
    photos: Sequence[str] | None = None,
    cache_dir: str | None = None,
):
    """The real-image interventional dataset as a ``datasets.DatasetDict``.

    Splits: ``train`` holds ``images_per_context`` samples of each of :data:`TRAIN_CONTEXTS`
    (``obs`` and one context per concept); ``validation`` ``validation_per_context`` fresh ones
    of the same contexts (default: a tenth, at least one); ``test`` ``test_per_context`` fresh
    ones (default: a quarter, at least one) of each training context and of each of
    :data:`TEST_COMPOSITIONS`. Columns: ``image`` (PIL, ``size x size`` RGB), ``context``
    (string), and the parameters of ``sample_params`` (``photo``, ``center_x``,
    ``center_y``, ``crop``, ``hue``, ``blur``, ``rotation``, ``scale``). Rows are written to
    Arrow files under ``cache_dir`` (the ``datasets`` cache by default).
    """
    import datasets

    if images_per_context < 1:
        raise ValueError(f"images_per_context must be >= 1, got {images_per_context}")
    for name in photos or ():
        load_photo(name)  # fail early on an unknown or missing photograph
    return generate_splits(
        _examples,
        {
            "photo": datasets.Value("string"),
            **{
                key: datasets.Value("float32")
                for key in ("center_x", "center_y", "crop", *CONCEPTS)
            },
        },
        TRAIN_CONTEXTS,
        TEST_COMPOSITIONS,
        {
            "train": images_per_context,
            "validation": validation_per_context or max(1, images_per_context // 10),
            "test": test_per_context or max(1, images_per_context // 4),
        },
        cache_dir,
        seed=seed,
        size=size,
        photos=None if photos is None else tuple(photos),
    )
