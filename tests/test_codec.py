"""LatentCodec against tiny autoencoders of every supported diffusers family, and the refusals."""

from __future__ import annotations

import json
import math

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    AsymmetricAutoencoderKL,
    AutoencoderDC,
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLHunyuanImage,
    AutoencoderKLHunyuanImageRefiner,
    AutoencoderKLKVAE,
    AutoencoderKLQwenImage,
    AutoencoderKLWan,
    AutoencoderTiny,
    VQModel,
)
from PIL import Image

from ctxadapter.codec import (
    AUTOENCODER_FAMILIES,
    SUPPORTED_AUTOENCODERS,
    UNSUPPORTED_AUTOENCODERS,
    LatentCodec,
    load_autoencoder,
)

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
    # Per-channel statistics come in pairs, one per latent channel, std positive; they exclude
    # a shift factor (diffusers pipelines use one or the other).
    with pytest.raises(ValueError, match="latents_mean and latents_std must be given together"):
        LatentCodec(AutoencoderKL(**small, latents_mean=(0.0,) * 4))
    with pytest.raises(ValueError, match="latents_std has 3 entries for 4 latent channels"):
        LatentCodec(AutoencoderKL(**small, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 3))
    with pytest.raises(ValueError, match="latents_std must be positive"):
        LatentCodec(AutoencoderKL(**small, latents_mean=(0.0,) * 4, latents_std=(1, 0, 1, 1)))
    with pytest.raises(ValueError, match="both shift_factor and latents_mean"):
        LatentCodec(
            AutoencoderKL(
                **small, shift_factor=0.1, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4
            )
        )
    with pytest.raises(ValueError, match="scaling_factor must be positive"):
        LatentCodec(AutoencoderKL(**small, scaling_factor=0.0))
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


# -- every autoencoder family -------------------------------------------------------------------
#
# Each family's reference below is written from its diffusers pipeline (not from the codec): the
# model-space latent a pipeline computes from the autoencoder's own `encode`, and the image its
# own `decode` gives for the un-normalised latent.


def _factors(vae) -> tuple[float, float]:
    scale = getattr(vae.config, "scaling_factor", None)
    shift = getattr(vae.config, "shift_factor", None)
    return (1.0 if scale is None else scale), (0.0 if shift is None else shift)


def _stats(vae, channels_dims: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1) + (1,) * (channels_dims - 2)
    mean = torch.tensor(vae.config.latents_mean).view(shape)
    std = torch.tensor(vae.config.latents_std).view(shape)
    return mean, std


def _flux2_patchify(latents):  # Flux2Pipeline._patchify_latents
    batch_size, num_channels_latents, height, width = latents.shape
    latents = latents.view(batch_size, num_channels_latents, height // 2, 2, width // 2, 2)
    latents = latents.permute(0, 1, 3, 5, 2, 4)
    return latents.reshape(batch_size, num_channels_latents * 4, height // 2, width // 2)


def _flux2_unpatchify(latents):  # Flux2Pipeline._unpatchify_latents
    batch_size, num_channels_latents, height, width = latents.shape
    latents = latents.reshape(batch_size, num_channels_latents // (2 * 2), 2, 2, height, width)
    latents = latents.permute(0, 1, 4, 2, 5, 3)
    return latents.reshape(batch_size, num_channels_latents // (2 * 2), height * 2, width * 2)


def _flux2_bn(vae):  # Flux2Pipeline._encode_vae_image
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return mean, std


def _scaled_encode(output: str):
    def encode(vae, x):
        out = vae.encode(x)
        raw = out.latent_dist.mode() if output == "latent_dist" else getattr(out, output)
        scale, shift = _factors(vae)
        return (raw - shift) * scale

    return encode


def _scaled_decode(vae, z):
    scale, shift = _factors(vae)
    return vae.decode(z / scale + shift).sample


def _sdxl_encode(vae, x):  # StableDiffusionXLImg2ImgPipeline.prepare_latents
    mean, std = _stats(vae)
    raw = vae.encode(x).latent_dist.mode()
    return (raw - mean) * vae.config.scaling_factor / std


def _sdxl_decode(vae, z):  # StableDiffusionXLPipeline.__call__
    mean, std = _stats(vae)
    return vae.decode(z * std / vae.config.scaling_factor + mean).sample


def _flux2_encode(vae, x):
    mean, std = _flux2_bn(vae)
    return (_flux2_patchify(vae.encode(x).latent_dist.mode()) - mean) / std


def _flux2_decode(vae, z):
    mean, std = _flux2_bn(vae)
    return vae.decode(_flux2_unpatchify(z * std + mean)).sample


def _qwen_encode(vae, x):  # QwenImageImg2ImgPipeline._encode_vae_image, one frame
    mean, std = _stats(vae, 5)
    raw = vae.encode(x[:, :, None]).latent_dist.mode()
    return ((raw - mean) * (1.0 / std))[:, :, 0]


def _qwen_decode(vae, z):  # QwenImagePipeline.__call__ / WanPipeline.__call__
    mean, std = _stats(vae, 5)
    return vae.decode(z[:, :, None] / (1.0 / std) + mean).sample[:, :, 0]


def _refiner_encode(vae, x):  # HunyuanImageRefinerPipeline (image.unsqueeze(2), * scaling)
    return vae.encode(x[:, :, None]).latent_dist.mode()[:, :, 0] * vae.config.scaling_factor


def _refiner_decode(vae, z):
    return vae.decode(z[:, :, None] / vae.config.scaling_factor).sample[:, :, 0]


# name -> (fixture, class, model-space (C, h, w) of 32 x 32 images, reference encode, decode)
FAMILIES = {
    "kl": ("tiny_kl_path", AutoencoderKL, (4, 4, 4), _scaled_encode("latent_dist"), None),
    "sd3": ("tiny_sd3_path", AutoencoderKL, (16, 4, 4), _scaled_encode("latent_dist"), None),
    "kl_stats": ("tiny_kl_stats_path", AutoencoderKL, (4, 4, 4), _sdxl_encode, _sdxl_decode),
    "taesd": ("tiny_taesd_path", AutoencoderTiny, (4, 4, 4), _scaled_encode("latents"), None),
    "dc": ("tiny_dc_path", AutoencoderDC, (8, 4, 4), _scaled_encode("latent"), None),
    "flux2": ("tiny_flux2_path", AutoencoderKLFlux2, (16, 2, 2), _flux2_encode, _flux2_decode),
    "qwenimage": (
        "tiny_qwenimage_path",
        AutoencoderKLQwenImage,
        (4, 4, 4),
        _qwen_encode,
        _qwen_decode,
    ),
    "wan": ("tiny_wan_path", AutoencoderKLWan, (4, 4, 4), _qwen_encode, _qwen_decode),
    "wan22": ("tiny_wan22_path", AutoencoderKLWan, (4, 2, 2), _qwen_encode, _qwen_decode),
    "hunyuanimage": (
        "tiny_hunyuanimage_path",
        AutoencoderKLHunyuanImage,
        (8, 4, 4),
        _scaled_encode("latent_dist"),
        None,
    ),
    "hunyuanimage_refiner": (
        "tiny_hunyuanimage_refiner_path",
        AutoencoderKLHunyuanImageRefiner,
        (8, 4, 4),
        _refiner_encode,
        _refiner_decode,
    ),
    "asymmetric": (
        "tiny_asymmetric_path",
        AsymmetricAutoencoderKL,
        (4, 4, 4),
        _scaled_encode("latent_dist"),
        None,
    ),
    "kvae": ("tiny_kvae_path", AutoencoderKLKVAE, (4, 4, 4), _scaled_encode("latent_dist"), None),
    "vq": ("tiny_vq_path", VQModel, (4, 4, 4), _scaled_encode("latents"), None),
}


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest):
    """(name, autoencoder loaded from its saved folder, codec wrapping it)."""
    fixture, cls, *_ = FAMILIES[request.param]
    vae = cls.from_pretrained(request.getfixturevalue(fixture))
    return request.param, vae, LatentCodec(vae)


def test_family_encode_matches_its_pipeline(family, images):
    name, vae, codec = family
    _, cls, shape, reference_encode, _ = FAMILIES[name]
    assert codec.family is AUTOENCODER_FAMILIES[cls.__name__]
    latents = codec.encode(images)
    assert codec.latent_shape(32) == shape
    assert latents.shape == (2, *shape) and latents.dtype == torch.float32
    with torch.no_grad():
        expected = reference_encode(vae, images)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)


def test_family_decode_matches_its_pipeline(family, images):
    name, vae, codec = family
    _, _, _, reference_encode, reference_decode = FAMILIES[name]
    latents = codec.encode(images)
    decoded = codec.decode(latents)
    assert decoded.shape == images.shape and decoded.dtype == torch.float32
    with torch.no_grad():
        expected = (reference_decode or _scaled_decode)(vae, reference_encode(vae, images))
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-5)


def test_family_round_trip_is_the_autoencoders_own(family, images):
    """decode(encode(x)) is the autoencoder's own decode of its own (un-normalised) latent."""
    _, vae, codec = family
    video = codec.family.frames
    with torch.no_grad():
        out = vae.encode(images[:, :, None] if video else images)
        field = codec.family.encoder_output
        raw = out.latent_dist.mean if field == "latent_dist" else getattr(out, field)
        direct = vae.decode(raw).sample
    decoded = codec.decode(codec.encode(images))
    torch.testing.assert_close(decoded, direct[:, :, 0] if video else direct, rtol=1e-4, atol=1e-5)


def test_family_shapes(family, make_images):
    _, _, codec = family
    f = codec.downsample_factor
    channels = codec.latent_channels
    assert codec.latent_shape((2 * f, 3 * f)) == (channels, 2, 3)
    x = make_images(1, 2 * f, 3 * f)
    latents = codec.encode(x)
    assert latents.shape == (1, channels, 2, 3)
    assert codec.decode(latents).shape == x.shape
    with pytest.raises(ValueError, match=rf"factor {f}"):
        codec.latent_shape(f + f // 2)
    assert codec.image_processor.config.vae_scale_factor == f


def test_family_encode_distribution(family, images):
    _, vae, codec = family
    mean, logvar = codec.encode_distribution(images)
    torch.testing.assert_close(mean, codec.encode(images))
    if not codec.has_posterior:
        assert logvar is None
        return
    video = codec.family.frames
    with torch.no_grad():
        raw = vae.encode(images[:, :, None] if video else images).latent_dist.logvar
    raw = raw[:, :, 0] if video else raw
    if codec.latent_patch_size == 2:
        raw = _flux2_patchify(raw)
    std = torch.ones(codec.latent_channels) if codec.latents_std is None else codec.latents_std
    scale = (codec.scaling_factor / std).view(1, -1, 1, 1)
    assert logvar.shape == mean.shape and logvar.dtype == torch.float32
    torch.testing.assert_close(logvar, raw + 2 * torch.log(scale))


def test_family_frozen_and_differentiable_decode(family, images):
    _, vae, codec = family
    assert all(not p.requires_grad for p in vae.parameters())
    codec.train()
    assert not any(m.training for m in vae.modules())
    latents = codec.encode(images).requires_grad_(True)
    codec.decode(latents).square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def test_family_normalisation_attributes(family):
    name, vae, codec = family
    if name == "flux2":
        torch.testing.assert_close(codec.latents_mean, vae.bn.running_mean)
        torch.testing.assert_close(
            codec.latents_std, torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps)
        )
        assert (codec.latent_patch_size, codec.scaling_factor, codec.shift_factor) == (2, 1, 0)
    elif getattr(vae.config, "latents_mean", None) is not None:
        mean, std = _stats(vae, 2)
        torch.testing.assert_close(codec.latents_mean, mean[0])
        torch.testing.assert_close(codec.latents_std, std[0])
    else:
        assert codec.latents_mean is None and codec.latents_std is None
        assert (codec.scaling_factor, codec.shift_factor) == pytest.approx(_factors(vae))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_load_autoencoder_every_family(request, name):
    fixture, cls, *_ = FAMILIES[name]
    loaded = load_autoencoder(request.getfixturevalue(fixture))
    assert type(loaded) is cls


def test_fingerprint_every_family(request):
    from ctxadapter.data.latent_cache import autoencoder_fingerprint

    prints = set()
    for fixture, cls, *_ in FAMILIES.values():
        folder = request.getfixturevalue(fixture)
        first = autoencoder_fingerprint(LatentCodec(cls.from_pretrained(folder)))
        assert first == autoencoder_fingerprint(LatentCodec(cls.from_pretrained(folder)))
        prints.add(first)
    assert len(prints) == len(FAMILIES)


def test_flux2_fingerprint_sees_the_batch_norm_statistics(tiny_flux2_path):
    from ctxadapter.data.latent_cache import autoencoder_fingerprint

    vae = AutoencoderKLFlux2.from_pretrained(tiny_flux2_path)
    before = autoencoder_fingerprint(LatentCodec(vae))
    vae.bn.running_mean.add_(0.5)
    assert autoencoder_fingerprint(LatentCodec(vae)) != before


# -- refusals --------------------------------------------------------------------------------------


def _diffusers_autoencoder_classes() -> list[str]:
    import diffusers.models.autoencoders as autoencoders

    return sorted(
        name
        for name in dir(autoencoders)
        if isinstance(getattr(autoencoders, name), type)
        and issubclass(getattr(autoencoders, name), diffusers.ModelMixin)
    )


def test_every_diffusers_autoencoder_is_supported_or_refused():
    classes = _diffusers_autoencoder_classes()
    unclassified = [
        c for c in classes if c not in AUTOENCODER_FAMILIES and c not in UNSUPPORTED_AUTOENCODERS
    ]
    assert not unclassified, f"classify these in ctxadapter.codec: {unclassified}"
    assert not set(AUTOENCODER_FAMILIES) & set(UNSUPPORTED_AUTOENCODERS)
    assert SUPPORTED_AUTOENCODERS == tuple(getattr(diffusers, n) for n in AUTOENCODER_FAMILIES)
    # Every refused name is a real diffusers class (no typos).
    assert set(UNSUPPORTED_AUTOENCODERS) <= set(classes)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_AUTOENCODERS))
def test_unsupported_family_is_refused_with_its_reason(tmp_path, name):
    reason = UNSUPPORTED_AUTOENCODERS[name]
    # load_autoencoder refuses from the config alone: there are no weights to load here.
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": name}))
    with pytest.raises(ValueError, match=rf"is a {name}; {name} is not supported: ") as error:
        load_autoencoder(tmp_path)
    assert reason in str(error.value)
    # LatentCodec refuses an instance on its class, before reading anything from it.
    cls = getattr(diffusers, name)
    with pytest.raises(ValueError, match=rf"^{name} is not supported: ") as error:
        LatentCodec(cls.__new__(cls))
    assert reason in str(error.value)


def test_refused_real_instance():
    vae = diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), latent_channels=4
    )
    with pytest.raises(
        ValueError, match="AutoencoderKLTemporalDecoder is not supported.*num_frames"
    ):
        LatentCodec(vae)


def test_subclass_of_a_supported_class():
    class MyVAE(AutoencoderKL):
        pass

    codec = LatentCodec(MyVAE(block_out_channels=(8, 8), norm_num_groups=8))
    assert codec.family is AUTOENCODER_FAMILIES["AutoencoderKL"]
    assert codec.downsample_factor == 2


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"_class_name": "AutoencoderKLWan", "scale_factor_spatial": 16}, "downsamples by 8"),
        (
            {
                "_class_name": "AutoencoderKLWan",
                "in_channels": 3,
                "patch_size": 2,
                "scale_factor_spatial": 16,
            },
            "in_channels=3",
        ),
        (
            {"_class_name": "AutoencoderKLQwenImage", "temperal_downsample": [False, True]},
            "need 3 temperal_downsample entries",
        ),
        ({"_class_name": "AutoencoderKLQwenImage", "latents_std": [1.0] * 15}, "15 entries"),
        ({"_class_name": "AutoencoderKLFlux2", "patch_size": [2, 1]}, "not square"),
        (
            {"_class_name": "AutoencoderDC", "decoder_layers_per_block": [1, 1, 0, 0, 0, 0]},
            "downsamples by 32 but its decoder by 4",
        ),
        (
            {
                "_class_name": "AutoencoderKLHunyuanImage",
                "block_out_channels": [32, 32],
                "spatial_compression_ratio": 12,
            },
            "not a power of two",
        ),
        (
            {
                "_class_name": "AutoencoderKLHunyuanImage",
                "block_out_channels": [32, 32],
                "spatial_compression_ratio": 8,
            },
            "needs more than 2 blocks",
        ),
        (
            {"_class_name": "AsymmetricAutoencoderKL", "up_block_out_channels": [8, 8]},
            "downsamples by 1 but its decoder upsamples by 2",
        ),
        ({"_class_name": "AutoencoderKLKVAE", "double_z": False}, "double_z=False"),
        ({"_class_name": "AutoencoderKL", "scaling_factor": -1}, "must be positive"),
    ],
)
def test_load_autoencoder_checks_the_config_before_the_weights(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_autoencoder(tmp_path)


def test_family_through_context_autoencoder(family, tmp_path, images):
    """The rest of the library sees 4-D model-space latents: train a step, save the adapter,
    load it back with its recorded base autoencoder, generate and reconstruct."""
    from ctxadapter import ContextAutoencoder, CtxAdapter
    from ctxadapter.pinning import base_model_record

    name, vae, codec = family
    folder = tmp_path / "vae"
    vae.save_pretrained(folder)
    torch.manual_seed(0)
    adapter = CtxAdapter(
        ["a", "b"],
        latent_shape=list(codec.latent_shape(32)),
        exogenous_width=8,
        concept_width=4,
        base_model=base_model_record(vae, folder),
    )
    model = ContextAutoencoder(codec, adapter).train()
    model.loss(["obs", "a"], pixel_values=images)["loss"].backward()
    model.eval().save_pretrained(tmp_path / "adapter")
    loaded = ContextAutoencoder.from_pretrained(tmp_path / "adapter")
    assert type(loaded.codec.autoencoder) is type(vae)
    generated = loaded.generate("a", num_samples=2, generator=torch.Generator().manual_seed(0))
    assert generated.shape == (2, 3, 32, 32)
    assert loaded.reconstruct((images + 1) / 2, "obs").shape == (2, 3, 32, 32)
