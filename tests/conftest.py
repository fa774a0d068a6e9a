"""Shared fixtures: tiny, randomly initialised diffusers autoencoders saved to disk.

Each ``tiny_*_path`` fixture builds an autoencoder from a config with a fixed seed, writes it with
``save_pretrained`` to a session temp folder and returns that folder (``str``), so tests load it
with ``from_pretrained``, the same code path as a Hub model. Nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

_KL_BLOCKS = {
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}


@pytest.fixture(autouse=True)
def single_thread():
    """The tensors in these tests are tiny: intra-op threads only add overhead, and on a busy
    2-core machine thread oversubscription makes tests many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
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
