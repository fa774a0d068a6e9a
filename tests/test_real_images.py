"""Tests of the real-image interventional dataset (``ctxadapter.data.photos``): contexts, shapes,
determinism, and that each transformation is really applied. Skipped without scikit-image."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from ctxadapter.data import load_image_dataset, photos, validate_dataset  # noqa: E402


def _array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _high_frequency_energy(image) -> float:
    """Mean squared discrete Laplacian of the grey image."""
    grey = _array(image).mean(axis=-1)
    laplacian = (
        grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    )
    return float((laplacian**2).mean())


def _mean_hue(image) -> float:
    """Circular mean hue in turns, over the pixels that have a colour."""
    hsv = _array(image.convert("HSV"))
    angle = hsv[..., 0] / 256 * 2 * np.pi
    weight = hsv[..., 1] * hsv[..., 2]
    return float(np.angle((weight * np.exp(1j * angle)).sum()) / (2 * np.pi) % 1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("photos-cache")
    return photos.build_dataset(images_per_context=6, size=32, seed=3, cache_dir=str(cache))


def test_photos_are_bundled_and_nothing_is_downloaded(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("photos must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    photos.load_photo.cache_clear()
    for name in photos.PHOTOS:
        photo = photos.load_photo(name)
        assert photo.mode == "RGB" and min(photo.size) >= 256


def test_splits_contexts_and_shapes(small):
    assert set(small) == {"train", "validation", "test"}
    train_contexts = set(photos.TRAIN_CONTEXTS)
    assert set(small["train"]["context"]) == train_contexts
    assert set(small["validation"]["context"]) == train_contexts
    assert set(small["test"]["context"]) == train_contexts | set(photos.TEST_COMPOSITIONS)
    assert len(photos.TEST_COMPOSITIONS) == 6
    assert len(small["train"]) == 6 * len(train_contexts)
    assert len(small["validation"]) == 1 * len(train_contexts)  # a tenth, at least one
    image = small["train"][0]["image"]
    assert image.size == (32, 32) and image.mode == "RGB"
    assert set(small["train"]["photo"]) <= set(photos.PHOTOS)


def test_parameters_follow_the_context(small):
    identity = {"hue": 0.0, "blur": 0.0, "rotation": 0.0, "scale": 1.0}
    for row in small["test"].remove_columns("image"):
        intervened = set() if row["context"] == "obs" else set(row["context"].split("+"))
        for concept in photos.CONCEPTS:
            low, high = photos.STRENGTHS[concept]
            if concept in intervened:
                assert low <= row[concept] <= high
            else:
                assert row[concept] == identity[concept]


def test_loads_like_a_user_dataset(small, tmp_path):
    """The dataset passes the training data checks and loads back from save_to_disk."""
    concepts, contexts = validate_dataset(small["train"], "image", "context")
    assert concepts == sorted(photos.CONCEPTS)
    assert len(contexts) == len(small["train"])
    small.save_to_disk(tmp_path / "real")
    loaded = load_image_dataset(dataset_name=str(tmp_path / "real"))
    assert loaded["test"]["context"] == small["test"]["context"]


def test_deterministic_and_prefix_stable(small, tmp_path):
    again = photos.build_dataset(images_per_context=6, size=32, seed=3, cache_dir=str(tmp_path))
    for split in small:
        assert again[split]["context"] == small[split]["context"]
        first, second = small[split][:5]["image"], again[split][:5]["image"]
        for a, b in zip(first, second, strict=True):
            assert np.array_equal(_array(a), _array(b))
    short = photos.sample_params("hue+blur", 3, seed=1, split="test")
    assert photos.sample_params("hue+blur", 10, seed=1, split="test")[:3] == short
    assert photos.sample_params("hue+blur", 3, seed=2, split="test") != short
    assert photos.sample_params("hue+blur", 3, seed=1, split="train") != short
    # Contexts have their own streams: obs keeps the identity, the composition its strengths.
    obs = photos.sample_params("obs", 3, seed=1, split="test")
    assert all(p["hue"] == 0.0 and p["blur"] == 0.0 for p in obs)
    assert all(p["hue"] > 0 and p["blur"] > 0 and p["scale"] == 1.0 for p in short)


@pytest.fixture
def base_params():
    return photos.sample_params("obs", 4, seed=0, split="test")


def test_blur_reduces_high_frequency_energy(base_params):
    for params in base_params:
        sharp = photos.render(params)
        blurred = photos.render(dict(params, blur=2.0))
        assert _high_frequency_energy(blurred) < 0.5 * _high_frequency_energy(sharp)


def test_hue_turns_the_colours(base_params):
    for params in base_params:
        original = photos.render(params)
        shifted = photos.render(dict(params, hue=0.5))
        if _array(original.convert("HSV"))[..., 1].mean() < 40:
            continue  # nearly grey crops have no hue to turn
        turn = (_mean_hue(shifted) - _mean_hue(original)) % 1
        assert abs(turn - 0.5) < 0.1
        # Brightness (the HSV value) is kept.
        value = _array(original.convert("HSV"))[..., 2]
        assert np.abs(_array(shifted.convert("HSV"))[..., 2] - value).mean() < 3


def test_rotation_turns_the_crop(base_params):
    from PIL import Image

    for params in base_params:
        upright = photos.render(params, size=64)
        turned = photos.render(dict(params, rotation=90.0), size=64)
        expected = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
        inner = np.s_[4:-4, 4:-4]
        error = np.abs(_array(turned) - _array(expected))[inner].mean()
        other = np.abs(_array(turned) - _array(upright.transpose(Image.Transpose.ROTATE_270)))
        assert error < 2 and error < other[inner].mean()


def test_scale_zooms_into_the_centre(base_params):
    for params in base_params:
        whole = photos.render(params, size=64)
        zoomed = photos.render(dict(params, scale=2.0), size=64)
        centre = whole.crop((16, 16, 48, 48)).resize((64, 64))
        error = np.abs(_array(zoomed) - _array(centre)).mean()
        assert error < 0.5 * np.abs(_array(zoomed) - _array(whole)).mean()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown|Invalid"):
        photos.sample_params("colour", 2)
    with pytest.raises(ValueError, match="Invalid"):
        photos.sample_params("hue+hue", 2)
    with pytest.raises(ValueError, match="split"):
        photos.sample_params("obs", 2, split="dev")
    with pytest.raises(ValueError, match="photograph"):
        photos.load_photo("lena")
    with pytest.raises(ValueError, match="images_per_context"):
        photos.build_dataset(images_per_context=0)


def test_worked_example_end_to_end_with_a_pretrained_photo_autoencoder(tmp_path, monkeypatch):
    """``examples/real_images.py`` at a tiny size: data, autoencoder pretraining, adapter,
    pictures."""
    import importlib.util

    monkeypatch.chdir(tmp_path)
    path = Path(__file__).resolve().parent.parent / "examples" / "real_images.py"
    spec = importlib.util.spec_from_file_location("real_images_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    paths = example.main(
        [
            "--resolution", "32", "--images_per_context", "4", "--pretrain_steps", "2",
            "--pretrain_batch_size", "4",
            "--max_train_steps", "2", "--train_batch_size", "8", "--num_samples", "2",
            "--output_dir", "out", "--pictures_dir", "pictures",
        ]
    )  # fmt: skip
    autoencoder = tmp_path / "out-autoencoder"
    assert (autoencoder / "config.json").is_file()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["base_model"]["pretrained_model_name_or_path"] == str(autoencoder)
    assert set(paths) >= {"contexts", "compositions", "concept_graph", "data", "counterfactuals_x3"}
    for picture in paths.values():
        assert (tmp_path / picture).is_file() and Path(picture).parent == Path("pictures")
