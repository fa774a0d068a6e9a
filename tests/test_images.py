"""The image conventions (``ctxadapter.images``): value ranges and preprocessing, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from ctxadapter.codec import LatentCodec
from ctxadapter.images import (
    compute_dtype,
    model_input,
    prepare_images,
    preprocess_images,
    signed_to_uint8,
    signed_to_unit,
    to_float,
    unit_to_signed,
    unit_to_uint8,
)


def test_value_ranges_by_hand():
    signed = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0])
    assert signed_to_unit(signed).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    assert signed_to_uint8(signed).tolist() == [0, 0, 128, 191, 255, 255]  # 127.5 rounds to even
    assert signed_to_uint8(signed).dtype == torch.uint8
    unit = torch.tensor([-0.1, 0.0, 0.5, 1.0, 1.2])
    assert unit_to_uint8(unit).tolist() == [0, 0, 128, 255, 255]
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert to_float(pixels).tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert to_float(pixels, torch.float64).dtype == torch.float64
    assert to_float(torch.ones(2, dtype=torch.float16)).dtype == torch.float32
    with pytest.raises(TypeError, match="int64"):
        to_float(torch.ones(2, dtype=torch.int64))
    assert compute_dtype(torch.ones(1), torch.ones(1, dtype=torch.float64)) == torch.float64
    assert compute_dtype(torch.ones(1, dtype=torch.uint8), torch.ones(1)) == torch.float32


@pytest.fixture
def photographs() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (48, 32), dtype=np.uint8)).convert("P"),
        Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)),  # RGBA
    ]


def test_preprocess_images_is_rgb_first_then_the_codecs_crop(photographs):
    """The same pixels as converting to RGB and calling ``LatentCodec.preprocess`` with
    ``resize_mode="crop"``, in each of the three output ranges."""
    tiny = dict(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    codec = LatentCodec(AutoencoderTiny(**tiny))
    rgb = [image.convert("RGB") for image in photographs]
    expected = codec.preprocess(rgb, 32, 32, resize_mode="crop")
    signed = preprocess_images(photographs, 32)
    assert signed.shape == (3, 3, 32, 32) and signed.dtype == torch.float32
    assert torch.equal(signed, expected)
    assert torch.equal(preprocess_images(photographs, (32, 32), output="unit"), (expected + 1) / 2)
    as_uint8 = preprocess_images(photographs, 32, output="uint8")
    assert torch.equal(as_uint8, ((expected + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    assert torch.equal(preprocess_images(photographs[0], 32), signed[:1])  # one image


def test_preprocess_images_other_inputs_and_errors():
    unit = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    resized = preprocess_images(unit, (32, 16), resize_mode="default", output="unit")
    assert resized.shape == (2, 3, 32, 16) and 0 <= resized.min() and resized.max() <= 1
    array = unit.permute(0, 2, 3, 1).numpy()
    assert preprocess_images(array, 40, resize_mode="default").shape == (2, 3, 40, 40)
    with pytest.raises(ValueError, match="output"):
        preprocess_images(unit, 32, output="pil")


def test_every_kind_of_image_is_read_by_one_rule():
    """What the model reads is what the scores read: uint8 tensors in either layout, arrays,
    lists, PIL images, [0, 1] and [-1, 1] floats; uint8 at the resolution stays uint8."""
    pixels = torch.randint(
        0, 256, (2, 4, 4, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    expected = pixels.permute(0, 3, 1, 2).float() / 255
    kinds = {
        "uint8 channels last": pixels,
        "uint8 channels first": pixels.permute(0, 3, 1, 2),
        "array": pixels.numpy(),
        "list of arrays": list(pixels.numpy()),
        "PIL": [Image.fromarray(p.numpy()) for p in pixels],
        "unit floats": expected,
        "signed floats": unit_to_signed(expected),
    }
    for name, images in kinds.items():
        torch.testing.assert_close(model_input(images, (4, 4)), expected, msg=name)
    assert torch.equal(prepare_images(pixels, (4, 4)), pixels.permute(0, 3, 1, 2))
    assert unit_to_signed(torch.tensor([0.0, 0.5, 1.0])).tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="Ambiguous"):
        prepare_images(torch.zeros(1, 3, 4, 3, dtype=torch.uint8), (4, 4))
