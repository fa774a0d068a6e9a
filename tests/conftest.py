"""Shared fixtures: tiny, randomly initialised diffusers autoencoders saved to disk.

Each ``tiny_*_path`` fixture builds an autoencoder from a config with a fixed seed, writes it with
``save_pretrained`` to a session temp folder and returns that folder (``str``), so tests load it
with ``from_pretrained``, the same code path as a Hub model. Nothing is downloaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

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

_KL_BLOCKS = {
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}


class FakeHfApi:
    """Records the folder ``push_to_hub`` would upload, and every call made."""

    uploads: list = []
    calls: list = []

    def __init__(self, token=None, **kwargs):
        pass

    def whoami(self):
        FakeHfApi.calls.append("whoami")
        return {"name": "user"}

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(f"create_repo {repo_id}")
        return type("RepoUrl", (), {"repo_id": repo_id if "/" in repo_id else f"user/{repo_id}"})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = Path(FakeHfApi.destination) / f"upload-{len(FakeHfApi.uploads)}"
        shutil.copytree(folder_path, copy)
        FakeHfApi.uploads.append((repo_id, copy))
        return "url"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """``HfApi`` replaced by ``FakeHfApi`` in ``ctxadapter.hub`` (the login check) and in
    ``huggingface_hub.hub_mixin`` (the upload): nothing reaches the Hub; the uploaded folders
    are copied under ``tmp_path`` and listed in the returned list as ``(repo_id, folder)``;
    ``FakeHfApi.calls`` lists the calls in order."""
    monkeypatch.setattr("ctxadapter.hub.HfApi", FakeHfApi)
    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "uploads", [])
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "destination", str(tmp_path), raising=False)
    return FakeHfApi.uploads


@pytest.fixture(autouse=True)
def single_thread(monkeypatch):
    """The tensors in these tests are tiny: intra-op threads only add overhead, and on a busy
    2-core machine thread oversubscription makes tests many times slower. In-process training
    runs count one available core, so they keep one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr("ctxadapter.training.tracking.available_cores", lambda: 1)
    yield
    torch.set_num_threads(threads)


def _save(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_kl_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SD-like ``AutoencoderKL``: 8x downsampling, 4 latent channels, scaling 0.18215."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**_KL_BLOCKS, latent_channels=4, scaling_factor=0.18215)
    return _save(vae, tmp_path_factory, "tiny_kl")


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SD3/FLUX-like ``AutoencoderKL``: 8x, 16 latent channels, no (post-)quant conv, shifted."""
    torch.manual_seed(1)
    vae = AutoencoderKL(
        **_KL_BLOCKS,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5305,
        shift_factor=0.0609,
    )
    return _save(vae, tmp_path_factory, "tiny_sd3")


@pytest.fixture(scope="session")
def tiny_taesd_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """TAESD-like ``AutoencoderTiny``: 8x, 4 latent channels, one block per level."""
    torch.manual_seed(2)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    return _save(vae, tmp_path_factory, "tiny_taesd")


# Per-channel latent statistics for the 4-channel tiny Qwen-Image / Wan / SDXL-style configs.
_LATENTS_MEAN = [0.3, -0.7, 0.1, 1.2]
_LATENTS_STD = [1.5, 0.4, 2.2, 0.9]


@pytest.fixture(scope="session")
def tiny_kl_stats_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Playground-v2.5-like ``AutoencoderKL``: 8x, 4 channels, per-channel ``latents_mean`` /
    ``latents_std`` and a scaling factor (the SDXL pipelines' ``(raw - mean) * s / std``)."""
    torch.manual_seed(3)
    vae = AutoencoderKL(
        **_KL_BLOCKS,
        latent_channels=4,
        scaling_factor=0.5,
        latents_mean=_LATENTS_MEAN,
        latents_std=_LATENTS_STD,
    )
    return _save(vae, tmp_path_factory, "tiny_kl_stats")


@pytest.fixture(scope="session")
def tiny_dc_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SANA-like ``AutoencoderDC``: 8x (four stages), 8 latent channels, ResBlocks then
    EfficientViT blocks, scaling 0.41407."""
    torch.manual_seed(4)
    blocks = ("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock")
    vae = AutoencoderDC(
        latent_channels=8,
        attention_head_dim=8,
        encoder_block_types=blocks,
        decoder_block_types=blocks,
        encoder_block_out_channels=(8, 16, 16, 16),
        decoder_block_out_channels=(8, 16, 16, 16),
        encoder_layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,), (5,)),
        decoder_qkv_multiscales=((), (), (5,), (5,)),
        scaling_factor=0.41407,
    )
    return _save(vae, tmp_path_factory, "tiny_dc")


@pytest.fixture(scope="session")
def tiny_flux2_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """FLUX.2-like ``AutoencoderKLFlux2``: 8x, 4 raw latent channels, 2 x 2 patches (16
    model-space channels at 16x), latent batch-norm statistics set away from 0 / 1."""
    torch.manual_seed(5)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    generator = torch.Generator().manual_seed(5)
    vae.bn.running_mean.copy_(torch.randn(16, generator=generator))
    vae.bn.running_var.copy_(torch.rand(16, generator=generator) * 3 + 0.2)
    return _save(vae, tmp_path_factory, "tiny_flux2")


_WAN_LIKE = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": _LATENTS_MEAN,
    "latents_std": _LATENTS_STD,
}


@pytest.fixture(scope="session")
def tiny_qwenimage_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Qwen-Image-like ``AutoencoderKLQwenImage`` (a causal video VAE): 8x, 4 channels,
    per-channel statistics."""
    torch.manual_seed(6)
    return _save(AutoencoderKLQwenImage(**_WAN_LIKE), tmp_path_factory, "tiny_qwenimage")


@pytest.fixture(scope="session")
def tiny_wan_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Wan-2.1-like ``AutoencoderKLWan``: 8x, 4 channels, per-channel statistics."""
    torch.manual_seed(7)
    return _save(AutoencoderKLWan(**_WAN_LIKE), tmp_path_factory, "tiny_wan")


@pytest.fixture(scope="session")
def tiny_wan22_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Wan-2.2-like ``AutoencoderKLWan``: residual blocks, 2 x 2 pixel patches folded into 12
    input channels, 16x, 4 channels."""
    torch.manual_seed(8)
    vae = AutoencoderKLWan(
        **_WAN_LIKE,
        decoder_base_dim=16,
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
    )
    return _save(vae, tmp_path_factory, "tiny_wan22")


@pytest.fixture(scope="session")
def tiny_hunyuanimage_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """HunyuanImage-2.1-like ``AutoencoderKLHunyuanImage``: 8x, 8 channels, scaling 0.75289
    (32-channel blocks: its output norm has 32 groups)."""
    torch.manual_seed(9)
    vae = AutoencoderKLHunyuanImage(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        spatial_compression_ratio=8,
        sample_size=32,
        scaling_factor=0.75289,
    )
    return _save(vae, tmp_path_factory, "tiny_hunyuanimage")


@pytest.fixture(scope="session")
def tiny_hunyuanimage_refiner_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """HunyuanImage-2.1-refiner-like ``AutoencoderKLHunyuanImageRefiner`` (a causal video VAE):
    8x, 8 channels, scaling 1.03682."""
    torch.manual_seed(10)
    vae = AutoencoderKLHunyuanImageRefiner(
        latent_channels=8,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        scaling_factor=1.03682,
    )
    return _save(vae, tmp_path_factory, "tiny_hunyuanimage_refiner")


@pytest.fixture(scope="session")
def tiny_asymmetric_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``AsymmetricAutoencoderKL``: 8x, 4 channels, a wider decoder, scaling 0.18215."""
    torch.manual_seed(11)
    vae = AsymmetricAutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        down_block_out_channels=(8, 16, 16, 16),
        up_block_out_channels=(16, 16, 32, 32),
        layers_per_down_block=1,
        layers_per_up_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )
    return _save(vae, tmp_path_factory, "tiny_asymmetric")


@pytest.fixture(scope="session")
def tiny_kvae_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``AutoencoderKLKVAE``: 8x, 4 channels, no normalisation (32-channel blocks: its norms
    have 32 groups)."""
    torch.manual_seed(12)
    vae = AutoencoderKLKVAE(
        channels=32, num_enc_blocks=1, num_dec_blocks=1, z_channels=4, ch_mult=(1, 1, 1, 1)
    )
    return _save(vae, tmp_path_factory, "tiny_kvae")


@pytest.fixture(scope="session")
def tiny_vq_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """LDM-like ``VQModel``: 8x, 4 channels, a 32-entry codebook, scaling 0.18215."""
    torch.manual_seed(13)
    vae = VQModel(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        num_vq_embeddings=32,
    )
    return _save(vae, tmp_path_factory, "tiny_vq")


def _make_images(
    n: int = 2, height: int = 32, width: int | None = None, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width or height, generator=generator) * 2 - 1


@pytest.fixture
def make_images():
    """Factory ``make_images(n=2, height=32, width=None, seed=0)`` -> deterministic
    ``(n, 3, height, width or height)`` float32 images in ``[-1, 1]``."""
    return _make_images


@pytest.fixture
def images() -> torch.Tensor:
    """Deterministic ``(2, 3, 32, 32)`` float32 images in ``[-1, 1]``."""
    return _make_images()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A latent cache folder shared by the runs of a test module."""
    return str(tmp_path_factory.mktemp("reliability-cache"))


@pytest.fixture
def tiny(tiny_kl_path, cache_dir, tmp_path):
    """``tiny(**flags)``: the flags of a run of a few seconds in ``tmp_path / "out"``."""
    from ctxadapter.training import FinetuneArguments

    def make(**flags) -> FinetuneArguments:
        base = dict(
            pretrained_model_name_or_path=tiny_kl_path,
            output_dir=str(tmp_path / "out"),
            cache_dir=cache_dir,
            quad_images_per_context=16,
            resolution=32,
            train_batch_size=16,
            max_train_steps=4,
            adapter_config=dict(exogenous_width=4, concept_width=2, head_width=8),
            lr_warmup_steps=1,
            checkpointing_steps=2,
            report_to="none",
        )
        return FinetuneArguments(**(base | flags))

    return make
