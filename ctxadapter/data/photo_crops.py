"""Augmented crops of the photographs bundled with scikit-image: the training data of the
general-purpose autoencoder that ships with ctxadapter (``ctxadapter:photo-autoencoder``).

Each row is a square crop of a random photograph of :data:`TRAIN_PHOTOS` at a random scale (its
side log-uniform between the output size and the photograph's shorter side, so crops are only
ever reduced, never enlarged), at a random place, flipped left-right and upside-down with
probability one half each and, in the training split only, turned round the hue circle by a
random amount with probability one half (so that colours the photographs lack are seen too).
The ``validation`` split crops the photographs of :data:`HELD_OUT_PHOTOS` only, never used in
training, without the hue turn::

    from ctxadapter.data import photo_crops

    photo_crops.build_dataset().save_to_disk("photo-crops")  # then --dataset_name photo-crops

Only the image files of the installed scikit-image's ``skimage/data`` folder are read (as in
``ctxadapter.data.photos``): nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

from .photos import _data_dir
from .splits import SPLITS

__all__ = ["HELD_OUT_PHOTOS", "PHOTO_FILES", "TRAIN_PHOTOS", "build_dataset", "random_crops"]

PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "retina": "retina.jpg",
    "camera": "camera.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "moon": "moon.png",
    "coins": "coins.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
}
"""Name -> file in ``skimage/data``: the natural photographs bundled in scikit-image's wheel
(the grey ones are read as RGB). Left out: drawings, text, synthetic and binary images, and
``motorcycle_right`` (the other half of a stereo pair: nearly the same picture as
``motorcycle_left``)."""

HELD_OUT_PHOTOS: tuple[str, ...] = ("chelsea", "coffee")
"""Photographs never used in training: the ``validation`` split crops these only."""

TRAIN_PHOTOS: tuple[str, ...] = tuple(name for name in PHOTO_FILES if name not in HELD_OUT_PHOTOS)

_STREAM_TAG = 0x63726F70  # "crop": keeps these streams apart from other seeded uses of `seed`


@lru_cache(maxsize=None)
def load(name: str, max_short_side: int = 512) -> Image.Image:
    """One of :data:`PHOTO_FILES` as an RGB image whose shorter side is at most
    ``max_short_side`` (Lanczos)."""
    if name not in PHOTO_FILES:
        raise ValueError(f"Unknown photograph {name!r}; choose among {', '.join(PHOTO_FILES)}.")
    path = _data_dir() / PHOTO_FILES[name]
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


def _turn_hue(image: Image.Image, turn: float) -> Image.Image:
    hue, saturation, value = image.convert("HSV").split()
    shift = round(turn * 256) % 256
    hue = hue.point(lambda h: (h + shift) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def random_crops(
    n: int,
    size: int = 64,
    seed: int = 0,
    split: str = "train",
    photos: Sequence[str] | None = None,
    hue_turns: bool | None = None,
) -> list[tuple[str, Image.Image]]:
    """``n`` augmented ``size x size`` crops as ``(photograph name, RGB image)`` pairs.

    Args:
        n: number of crops.
        size: side of the crops in pixels.
        seed: base seed; each ``split`` has its own random stream.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        photos: the photographs to crop. Default: :data:`TRAIN_PHOTOS` for ``"train"``,
            :data:`HELD_OUT_PHOTOS` otherwise.
        hue_turns: turn the hue of half the crops at random. Default: in ``"train"`` only.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
    names = list(photos or (TRAIN_PHOTOS if split == "train" else HELD_OUT_PHOTOS))
    hue_turns = split == "train" if hue_turns is None else hue_turns
    rng = np.random.default_rng([_STREAM_TAG, int(seed), SPLITS.index(split), size])
    out = []
    for _ in range(n):
        name = names[int(rng.integers(len(names)))]
        photo = load(name)
        short = min(photo.size)
        side = round(math.exp(rng.uniform(math.log(min(size, short)), math.log(short))))
        left = int(rng.integers(photo.width - side + 1))
        top = int(rng.integers(photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        crop = crop.resize((size, size), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        turn, coin = rng.random(2)  # drawn always: the stream does not depend on hue_turns
        if hue_turns and coin < 0.5:
            crop = _turn_hue(crop, turn)
        out.append((name, crop))
    return out


def build_dataset(
    train_images: int = 16000, validation_images: int = 512, size: int = 64, seed: int = 0
):
    """The autoencoder's data as a ``datasets.DatasetDict``: ``train`` (``train_images`` crops
    of :data:`TRAIN_PHOTOS`, augmented) and ``validation`` (``validation_images`` crops of
    :data:`HELD_OUT_PHOTOS`). Columns ``image`` and ``photo`` (the photograph's name)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "photo": datasets.Value("string")})
    splits = {}
    for split, n in (("train", train_images), ("validation", validation_images)):
        rows = random_crops(n, size, seed, split)
        splits[split] = datasets.Dataset.from_dict(
            {"image": [image for _, image in rows], "photo": [name for name, _ in rows]},
            features=features,
        )
    return datasets.DatasetDict(splits)
