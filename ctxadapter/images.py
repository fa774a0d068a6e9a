"""Image conventions shared by the data, the metrics, the evaluation and the pictures.

Three value ranges are in use, and these functions are the one place that converts between them:

- **signed**: float ``(N, 3, H, W)`` in ``[-1, 1]``, what the autoencoder encodes and decodes (the
  diffusers convention);
- **unit**: float ``(N, 3, H, W)`` in ``[0, 1]``, what ``ContextAutoencoder`` returns and the
  metrics compare;
- **uint8**: ``0..255`` integers, what datasets and PIL hold (channels last or first).

``preprocess_images`` turns PIL images (or arrays, or tensors in ``[0, 1]``) into a batch at a
fixed resolution: converted to RGB, resized and centre-cropped (``resize_mode="crop"``) by
diffusers' ``VaeImageProcessor``, as the training data is. ``prepare_images`` is the one rule
by which the model, the scores and the evaluation read images of any kind (PIL, arrays,
tensors, lists; ``uint8``, ``[0, 1]`` or ``[-1, 1]``) into such a batch (``uint8`` kept
``uint8``, which the SW2 scores read directly); ``model_input`` is that batch as ``[0, 1]``
floats.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from PIL import Image
from torch import Tensor

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "HIGH_BIT_DEPTH_MODES",
    "compute_dtype",
    "model_input",
    "prepare_images",
    "preprocess_images",
    "signed_to_uint8",
    "signed_to_unit",
    "to_float",
    "to_rgb",
    "unit_to_signed",
    "unit_to_uint8",
]

DEFAULT_BATCH_SIZE = 256
"""Images generated, encoded, decoded or resized at once: bounds the memory of an evaluation."""


# --------------------------------------------------------------------------------------------
# value ranges
# --------------------------------------------------------------------------------------------


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """``float64`` if any input is ``float64``, else ``float32``: the dtype metrics compute in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def to_float(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``uint8`` images -> ``[0, 1]`` floats (``x / 255``); floating tensors cast to ``dtype``.

    Raises:
        TypeError: for any other dtype (e.g. ``int64``), which has no agreed pixel range.
    """
    if x.dtype == torch.uint8:
        return x.to(dtype) / 255.0
    if x.is_floating_point():
        return x.to(dtype)
    raise TypeError(
        f"expected a floating tensor or uint8 images, got dtype {x.dtype}; "
        "convert to float in [0, 1] first"
    )


def signed_to_unit(images: Tensor) -> Tensor:
    """``[-1, 1]`` images -> ``[0, 1]``: ``((x + 1) / 2)`` clamped to ``[0, 1]``."""
    return ((images + 1) / 2).clamp(0, 1)


def unit_to_signed(images: Tensor) -> Tensor:
    """``[0, 1]`` images -> ``[-1, 1]``, what the autoencoder encodes: ``x * 2 - 1``."""
    return images * 2 - 1


def signed_to_uint8(images: Tensor) -> Tensor:
    """``[-1, 1]`` images -> ``uint8``: ``(x + 1) * 127.5``, rounded and clamped to ``0..255``."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def unit_to_uint8(images: Tensor) -> Tensor:
    """``[0, 1]`` images -> ``uint8``: clamped, times 255, rounded (as diffusers'
    ``VaeImageProcessor.numpy_to_pil`` does)."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------
# resizing
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _processor() -> VaeImageProcessor:
    # No size rounding (the resolution is given) and no latent pass-through (never 0 channels).
    return VaeImageProcessor(vae_scale_factor=1, vae_latent_channels=0, do_convert_rgb=True)


HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of 16-bit (and 32-bit integer) greyscale images, such as 16-bit PNGs."""


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode.

    16-bit greyscale images (the modes in ``HIGH_BIT_DEPTH_MODES``, as 16-bit PNGs load) are
    scaled from ``[0, 65535]`` to ``[0, 255]`` first: PIL's own ``convert("RGB")`` clips them,
    which turns most of such an image white. Palette and alpha images are converted by PIL
    (alpha dropped)."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64) / 65535.0 * 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def preprocess_images(
    images: PipelineImageInput,
    resolution: int | tuple[int, int],
    *,
    resize_mode: Literal["default", "fill", "crop"] = "crop",
    output: Literal["signed", "unit", "uint8"] = "signed",
) -> Tensor:
    """Images -> one batch ``(N, 3, H, W)`` at ``resolution``, as the training data is prepared.

    PIL images are converted to 8-bit RGB first (``to_rgb``: 16-bit images are scaled, not
    clipped), then resized with diffusers' ``VaeImageProcessor``:
    by default (``resize_mode="crop"``) the shorter side is scaled to fit and the rest is
    centre-cropped. Numpy arrays ``(N, H, W, 3)`` and tensors ``(N, 3, H, W)`` in ``[0, 1]``
    are resized as diffusers does (``"crop"`` and ``"fill"`` are for PIL images only).

    Args:
        images: a PIL image or a sequence of them (any mode; a ``datasets`` column too), or an
            array or tensor as above (or a list of them).
        resolution: ``H`` (square) or ``(H, W)``.
        resize_mode: ``"crop"`` (default), ``"default"`` (stretch) or ``"fill"`` (see
            ``VaeImageProcessor.preprocess``).
        output: ``"signed"`` (float32 in ``[-1, 1]``, for the encoder), ``"unit"`` (float32 in
            ``[0, 1]``) or ``"uint8"``.

    Returns:
        ``(N, 3, H, W)`` on the CPU, in the range ``output`` names.
    """
    if output not in ("signed", "unit", "uint8"):
        raise ValueError(f"output must be 'signed', 'unit' or 'uint8', got {output!r}")
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    if isinstance(images, Image.Image):
        images = [images]
    elif not isinstance(images, (np.ndarray, Tensor)):
        images = list(images)  # e.g. a column of a datasets.Dataset
    if isinstance(images, list) and images and isinstance(images[0], Image.Image):
        images = [to_rgb(image) for image in images]
    pixels = (
        _processor()
        .preprocess(images, height=int(height), width=int(width), resize_mode=resize_mode)
        .float()
    )
    if output == "unit":
        return signed_to_unit(pixels)
    if output == "uint8":
        return signed_to_uint8(pixels)
    return pixels


def _as_batch(images) -> Tensor:
    """PIL-free images -> one ``(N, 3, H, W)`` tensor on the CPU as given (dtype kept): an
    array ``(N, H, W, 3)``, a tensor ``(N, 3, H, W)`` (or ``uint8`` ``(N, H, W, 3)``, as quad
    and PIL give them), or a list of either kind of single image."""
    if isinstance(images, (list, tuple)):
        if all(isinstance(i, np.ndarray) for i in images):
            images = np.stack(images)
        elif all(isinstance(i, Tensor) for i in images):
            images = torch.stack(list(images))
        else:
            kinds = sorted({type(i).__name__ for i in images})
            raise TypeError(
                f"A list of images must hold PIL images, arrays or tensors of one kind, got "
                f"{kinds}."
            )
    if isinstance(images, np.ndarray):  # (N, H, W, 3), as diffusers reads arrays
        if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] != 3:
            raise ValueError(
                f"Expected an array of images (N, H, W, 3) with N >= 1, got shape {images.shape}."
            )
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not isinstance(images, Tensor):
        raise TypeError(f"Expected PIL images, an array or a tensor, got {type(images).__name__}.")
    images = images.cpu()
    if images.ndim == 4 and images.dtype == torch.uint8 and images.shape[-1] == 3:
        if images.shape[1] == 3:
            raise ValueError(
                f"Ambiguous uint8 image layout {tuple(images.shape)}: pass (N, H, W, 3) or "
                "(N, 3, H, W) with H, W != 3."
            )
        images = images.permute(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] != 3:
        raise ValueError(
            f"Expected a batch of images (N, 3, H, W) with N >= 1, got shape {tuple(images.shape)}."
        )
    return images


def prepare_images(images, resolution: tuple[int, int]) -> Tensor:
    """Images of any kind -> one batch ``(N, 3, H, W)`` at ``resolution``, by the one rule
    that the model (``model_input``), the scores and the evaluation read images with.

    PIL images (one or a list, any mode through ``to_rgb``) go through ``preprocess_images``
    as the training data does. Arrays ``(N, H, W, 3)``, tensors ``(N, 3, H, W)`` (or ``uint8``
    ``(N, H, W, 3)``, as quad and PIL give them) and lists of single images hold ``uint8`` in
    ``[0, 255]`` or floats in ``[0, 1]`` (or ``[-1, 1]``, read as diffusers does when a value
    is negative); floats must be finite. Images of another size are resized (shorter side) and
    centre-cropped as the training data is (``preprocess_images``, ``DEFAULT_BATCH_SIZE`` at a
    time).

    Returns:
        ``uint8`` for ``uint8`` images already at ``resolution`` (the SW2 scores read them
        as they are, in a quarter of the memory), else float32 in ``[0, 1]``; on the CPU.

    Raises:
        ValueError: for no images, a wrong shape, NaN or infinite values, or floats outside
            ``[-1, 1]``.
        TypeError: for arrays or tensors that are neither ``uint8`` nor floating point, or a
            list mixing kinds.
    """
    resolution = tuple(resolution)
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and not images:
        raise ValueError("Got no images: pass at least one.")
    if isinstance(images, (list, tuple)) and all(isinstance(i, Image.Image) for i in images):
        return preprocess_images(list(images), resolution, output="unit")
    images = _as_batch(images)
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise TypeError(f"Images must be uint8 or floats, got {images.dtype}.")
        images = images.float()
        if not torch.isfinite(images).all():
            raise ValueError("Images hold NaN or infinite values: pass finite pixel values.")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1 - 1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"Float images must be in [0, 1] (or [-1, 1]); got values in [{lo:.3g}, "
                f"{hi:.3g}]. uint8 images are read in [0, 255]."
            )
        images = signed_to_unit(images) if lo < 0 else images.clamp(0, 1)
    if tuple(images.shape[-2:]) == resolution:
        return images
    out = []
    for start in range(0, images.shape[0], DEFAULT_BATCH_SIZE):
        chunk = images[start : start + DEFAULT_BATCH_SIZE]
        if chunk.dtype != torch.uint8:
            chunk = unit_to_uint8(chunk)
        pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in chunk]
        out.append(preprocess_images(pil, resolution, output="unit"))
    return torch.cat(out)


def model_input(images, resolution: tuple[int, int]) -> Tensor:
    """Images of any kind (``prepare_images``) -> float32 ``(N, 3, H, W)`` in ``[0, 1]`` at
    ``resolution``: what ``ContextAutoencoder.reconstruct`` / ``counterfactual`` and every
    score that runs the model take."""
    return to_float(prepare_images(images, resolution))
