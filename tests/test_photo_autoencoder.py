"""Tests of the general photo autoencoder that ships with ctxadapter
(``ctxadapter:photo-autoencoder``) and of its training data (``ctxadapter.data.photo_crops``):
it loads from the package without the network, is small, encodes and decodes 64 and 128 px
images to the right shapes, reconstructs photographs it never saw, and is accepted as a base by
``finetune``'s input checks and by the Hub push."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxadapter.codec import LatentCodec, load_autoencoder
from ctxadapter.evaluation.metrics import psnr
from ctxadapter.images import preprocess_images
from ctxadapter.pinning import SHIPPED_AUTOENCODERS, loads_anywhere, local_path, portable_name
from ctxadapter.training import PHOTO_AUTOENCODER

NAME = "ctxadapter:photo-autoencoder"


@pytest.fixture
def offline(monkeypatch):
    """No socket can be opened: anything that tries the network fails."""

    def no_network(*args, **kwargs):
        raise AssertionError("the shipped autoencoder must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def vae():
    return load_autoencoder(local_path(NAME)).eval()


def test_it_ships_in_the_package_by_name_and_is_small():
    assert SHIPPED_AUTOENCODERS[NAME] == PHOTO_AUTOENCODER
    assert PHOTO_AUTOENCODER.parent.name == "assets"
    assert PHOTO_AUTOENCODER.parent.parent.name == "ctxadapter"  # inside the package
    names = {path.name for path in PHOTO_AUTOENCODER.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= names
    total = sum(path.stat().st_size for path in PHOTO_AUTOENCODER.iterdir())
    assert total < 5_000_000  # committed to git: a few MB at most
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"assets/photo-autoencoder/*"' in pyproject  # package data: it installs with wheels
    config = json.loads((PHOTO_AUTOENCODER / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["latent_channels"] == 4
    assert len(config["block_out_channels"]) == 3  # 4x downsampling


def test_it_is_recorded_by_name_and_loads_anywhere():
    assert local_path(NAME) == str(PHOTO_AUTOENCODER)
    assert portable_name(str(PHOTO_AUTOENCODER)) == NAME
    assert loads_anywhere(NAME)


def test_it_loads_offline_and_codes_64_and_128_px_images(offline):
    vae = load_autoencoder(local_path(NAME))
    codec = LatentCodec(vae)
    for size in (64, 128):
        images = torch.rand(2, 3, size, size) * 2 - 1
        with torch.no_grad():
            latents = codec.encode(images)
            decoded = codec.decode(latents)
        assert codec.latent_shape(size) == (4, size // 4, size // 4)
        assert latents.shape == (2, 4, size // 4, size // 4)
        assert decoded.shape == (2, 3, size, size)


@pytest.mark.parametrize("size", [64, 128])
def test_it_reconstructs_photographs_it_never_saw(vae, size):
    pytest.importorskip("skimage")
    from ctxadapter.data import photo_crops

    crops = [image for _, image in photo_crops.random_crops(8, size, seed=5, split="test")]
    assert {name for name, _ in photo_crops.random_crops(8, size, 5, "test")} <= set(
        photo_crops.HELD_OUT_PHOTOS
    )
    pixels = preprocess_images(crops, size)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
    # The model card measures 27 dB on 512 held-out crops (64 px) and 28 dB at 128 px; a broken
    # or untrained autoencoder gives about 10 dB.
    assert psnr(decoded, pixels, 2.0).item() > 22


def test_finetune_accepts_it_as_a_base_by_name(tiny):
    from ctxadapter.training.inputs import resolve_inputs

    args = tiny(pretrained_model_name_or_path=NAME, resolution=None)
    assert args.autoencoder == str(PHOTO_AUTOENCODER)
    inputs = resolve_inputs(args)
    assert inputs.resolution == 64  # its sample_size
    assert tuple(inputs.latent_shape) == (4, 16, 16)
    pushed = tiny(pretrained_model_name_or_path=NAME, push_to_hub=True, hub_model_id="u/a")
    pushed.validate()  # no --hub_base_model_id needed: it ships with ctxadapter


def test_held_out_photographs_never_reach_training():
    pytest.importorskip("skimage")
    from ctxadapter.data import photo_crops

    assert not set(photo_crops.HELD_OUT_PHOTOS) & set(photo_crops.TRAIN_PHOTOS)
    train = photo_crops.random_crops(40, 16, seed=1, split="train")
    assert {name for name, _ in train} <= set(photo_crops.TRAIN_PHOTOS)
    again = photo_crops.random_crops(40, 16, seed=1, split="train")
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for (_, a), (_, b) in zip(train, again, strict=True)
    )
    assert all(image.size == (16, 16) and image.mode == "RGB" for _, image in train)
    data = photo_crops.build_dataset(train_images=6, validation_images=4, size=16)
    assert len(data["train"]) == 6 and set(data["validation"]["photo"]) <= {"chelsea", "coffee"}
