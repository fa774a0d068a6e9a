"""LatentCodec against tiny AutoencoderKL (SD-like, SD3/FLUX-like) and AutoencoderTiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image

from ctxadapter.codec import LatentCodec, load_autoencoder

# name -> (fixture, class, latent channels, scaling_factor, shift_factor)
CASES = {
    "kl": ("tiny_kl_path", AutoencoderKL, 4, 0.18215, 0.0),
    "sd3": ("tiny_sd3_path", AutoencoderKL, 16, 1.5305, 0.0609),
    "taesd": ("tiny_taesd_path", AutoencoderTiny, 4, 1.0, 0.0),
}


def _load(request: pytest.FixtureRequest, name: str, **kwargs):
    fixture, cls, *_ = CASES[name]
    return cls.from_pretrained(request.getfixturevalue(fixture), **kwargs)


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest):
    """(name, freshly loaded autoencoder, codec wrapping it)."""
    vae = _load(request, request.param)
    return request.param, vae, LatentCodec(vae)


def _raw_encode(vae, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(vae, AutoencoderTiny):
            return vae.encode(x).latents
        return vae.encode(x).latent_dist.mean


def test_config_factors_and_shapes(case, images):
    name, vae, codec = case
    _, _, channels, scale, shift = CASES[name]
    assert codec.autoencoder is vae
    assert dict(codec.named_children()) == {"autoencoder": vae}
    assert codec.scaling_factor == pytest.approx(scale)
    assert codec.shift_factor == pytest.approx(shift)
    assert codec.latent_channels == channels
    assert codec.downsample_factor == 8
    assert codec.image_processor.config.vae_scale_factor == 8
    assert codec.latent_shape(32) == (channels, 4, 4)
    assert codec.latent_shape((16, 48)) == (channels, 2, 6)
    # The factor is what the encoder really does.
    latents = codec.encode(images)
    assert latents.shape == (2, *codec.latent_shape(32))
    assert latents.dtype == torch.float32
    assert codec.encode(torch.zeros(1, 3, 16, 48)).shape == (1, channels, 2, 6)


def test_kl_without_shift_factor_reads_zero(tiny_kl_path):
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    assert vae.config.shift_factor is None
    assert LatentCodec(vae).shift_factor == 0.0


def test_encode_matches_manual_formula(case, images):
    name, vae, codec = case
    _, _, _, scale, shift = CASES[name]
    expected = (_raw_encode(vae, images) - shift) * scale
    latents = codec.encode(images)
    torch.testing.assert_close(latents, expected)
    assert not latents.requires_grad
    torch.testing.assert_close(codec.encode(images), latents)  # deterministic


def test_decode_uses_inverse_formula(case, images):
    name, vae, codec = case
    _, _, _, scale, shift = CASES[name]
    latents = codec.encode(images)
    decoded = codec.decode(latents)
    with torch.no_grad():
        expected = vae.decode(latents / scale + shift).sample
    assert decoded.shape == images.shape
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, expected)
    # decode(encode(x)) decodes exactly the raw latents diffusers would produce for x.
    with torch.no_grad():
        direct = vae.decode(_raw_encode(vae, images)).sample
    torch.testing.assert_close(decoded, direct, rtol=1e-4, atol=1e-5)


def test_encode_distribution(case, images):
    name, vae, codec = case
    _, _, _, scale, _ = CASES[name]
    mean, logvar = codec.encode_distribution(images)
    torch.testing.assert_close(mean, codec.encode(images))
    if isinstance(vae, AutoencoderTiny):
        assert logvar is None
        return
    with torch.no_grad():
        raw_logvar = vae.encode(images).latent_dist.logvar
    assert logvar.shape == mean.shape and logvar.dtype == torch.float32
    torch.testing.assert_close(logvar, raw_logvar + 2 * math.log(scale))
    # Model-space std is the raw std times the scale.
    torch.testing.assert_close(
        torch.exp(0.5 * logvar), torch.exp(0.5 * raw_logvar) * scale, rtol=1e-5, atol=1e-7
    )


def test_frozen_and_always_eval(case):
    _, vae, codec = case
    assert all(not p.requires_grad for p in vae.parameters())
    parent = torch.nn.Sequential(codec, torch.nn.Linear(2, 2))
    parent.train()
    assert codec.training and parent[1].training
    assert not vae.training
    assert not any(m.training for m in vae.modules())
    codec.train(True)
    assert not vae.training
    codec.eval()
    assert not codec.training and not vae.training
    assert codec.train() is codec


def test_gradient_flows_through_decode(case, images):
    _, vae, codec = case
    latents = codec.encode(images).requires_grad_(True)
    codec.decode(latents).square().mean().backward()
    assert latents.grad is not None
    assert latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_autoencoder_dtype_cast(request, dtype, images):
    reference = LatentCodec(_load(request, "sd3"))
    codec = LatentCodec(_load(request, "sd3", torch_dtype=dtype))
    assert codec.dtype == dtype
    latents = codec.encode(images)
    assert latents.dtype == torch.float32
    decoded = codec.decode(latents.requires_grad_(True))
    assert decoded.dtype == torch.float32 and decoded.shape == images.shape
    decoded.sum().backward()
    assert latents.grad is not None and latents.grad.dtype == torch.float32
    tol = 1e-4 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(latents.detach(), reference.encode(images), rtol=tol, atol=tol)
    with torch.no_grad():
        torch.testing.assert_close(decoded, reference.decode(latents.detach()), rtol=tol, atol=tol)


def test_codec_to_moves_autoencoder(tiny_taesd_path, images):
    codec = LatentCodec(AutoencoderTiny.from_pretrained(tiny_taesd_path)).to(torch.float64)
    assert codec.autoencoder.dtype == torch.float64
    assert codec.decode(codec.encode(images)).dtype == torch.float32


def test_errors(case):
    _, _, codec = case
    with pytest.raises(ValueError, match=r"30.*factor 8"):
        codec.latent_shape(30)
    with pytest.raises(ValueError, match=r"\(32, 12\).*factor 8"):
        codec.latent_shape((32, 12))
    with pytest.raises(ValueError, match=r"0.*factor 8"):
        codec.latent_shape(0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(3, 32, 32\)"):
        codec.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(1, 4, 32, 32\)"):
        codec.encode_distribution(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\(36, 32\).*factor 8"):
        codec.encode(torch.zeros(1, 3, 36, 32))
    c = codec.latent_channels
    bad = (2, c + 1, 4, 4)
    with pytest.raises(ValueError, match=rf"\(N, {c}, h, w\).*\(2, {c + 1}, 4, 4\)"):
        codec.decode(torch.zeros(bad))
    with pytest.raises(ValueError, match=rf"\(N, {c}, h, w\).*\({c}, 4, 4\)"):
        codec.decode(torch.zeros(c, 4, 4))


def test_unsupported_class():
    with pytest.raises(TypeError, match=r"AutoencoderKL.*AutoencoderTiny.*Conv2d"):
        LatentCodec(torch.nn.Conv2d(3, 3, 1))


def test_unsupported_configs():
    small = {"block_out_channels": (8,), "norm_num_groups": 8}
    with pytest.raises(ValueError, match="latents_mean"):
        LatentCodec(AutoencoderKL(**small, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4))
    tiny = {
        "encoder_block_out_channels": (8, 8),
        "decoder_block_out_channels": (8, 8),
        "num_encoder_blocks": (1, 1),
        "num_decoder_blocks": (1, 1),
    }
    assert LatentCodec(AutoencoderTiny(**tiny)).downsample_factor == 2
    with pytest.raises(ValueError, match=r"downsamples by 2.*upsamples by 4"):
        LatentCodec(AutoencoderTiny(**tiny, upsampling_scaling_factor=4))


@pytest.mark.parametrize("name", list(CASES))
def test_load_autoencoder_reads_the_class_from_the_config(request, name):
    loaded = load_autoencoder(request.getfixturevalue(CASES[name][0]), torch_dtype=torch.float64)
    assert type(loaded) is CASES[name][1]
    assert loaded.dtype == torch.float64


def test_load_autoencoder_rejects_other_classes(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match=r"is a UNet2DModel; supported: \['AutoencoderKL'"):
        load_autoencoder(tmp_path / "unet")
    with pytest.raises(OSError):
        load_autoencoder(tmp_path / "nothing-here")


def test_preprocess_postprocess_round_trip(tiny_taesd_path):
    codec = LatentCodec(AutoencoderTiny.from_pretrained(tiny_taesd_path))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    pil = Image.fromarray(pixels)

    tensor = codec.preprocess(pil)
    assert tensor.shape == (1, 3, 32, 48) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    torch.testing.assert_close(
        tensor[0], torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    )

    (back,) = codec.postprocess(tensor, output_type="pil")
    assert np.array_equal(np.asarray(back), pixels)
    as_np = codec.postprocess(tensor, output_type="np")
    assert as_np.shape == (1, 32, 48, 3)
    np.testing.assert_allclose(as_np[0], pixels / 255.0, atol=1e-6)
    as_pt = codec.postprocess(tensor, output_type="pt")
    assert as_pt.min() >= 0 and as_pt.max() <= 1
    torch.testing.assert_close(as_pt, (tensor + 1) / 2)

    # numpy and [0, 1] tensor inputs, grayscale PIL -> RGB, batches, non-multiple sizes.
    torch.testing.assert_close(codec.preprocess(pixels[None] / 255.0), tensor)
    torch.testing.assert_close(codec.preprocess((tensor + 1) / 2), tensor)
    assert codec.preprocess(pil.convert("L")).shape == (1, 3, 32, 48)
    assert codec.preprocess([pil, pil]).shape == (2, 3, 32, 48)
    assert codec.preprocess(pil.resize((50, 35))).shape == (1, 3, 32, 48)

    # Decoded (grad-carrying, out-of-range) output postprocesses to clamped [0, 1].
    decoded = codec.decode(codec.encode(tensor).requires_grad_(True)) * 5
    out = codec.postprocess(decoded)
    assert out.min() >= 0 and out.max() <= 1 and not out.requires_grad
    with pytest.raises(ValueError, match="output_type"):
        codec.postprocess(tensor, output_type="latent")
