"""Inputs read one way everywhere: images of every kind under the same rules
(``ctxadapter.images.model_input``), context labels compared in Unicode NFC, one image file
under one context."""

import json
import unicodedata

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ctxadapter.contexts import parse_context
from ctxadapter.data import load_image_dataset, validate_dataset
from ctxadapter.images import model_input

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize(
    "images",
    [
        torch.full((1, 3, 4, 4), float("nan")),
        np.full((1, 4, 4, 3), np.nan, dtype=np.float32),
        [np.full((4, 4, 3), np.inf, dtype=np.float32)],
    ],
    ids=["tensor", "array", "list_of_arrays"],
)
def test_nan_and_inf_pixels_are_refused_for_every_kind(images):
    with pytest.raises(ValueError, match="NaN or infinite"):
        model_input(images, (4, 4))


def test_float_arrays_get_the_range_and_size_rules_of_tensors():
    with pytest.raises(ValueError, match="got values in \\[255, 255\\]"):
        model_input(np.full((1, 4, 4, 3), 255.0), (4, 4))  # float pixels in [0, 255]
    with pytest.raises(ValueError, match="\\(N, H, W, 3\\)"):
        model_input(np.zeros((1, 3, 4, 4), dtype=np.float32), (4, 4))  # channels first
    signed = model_input(np.full((1, 4, 4, 3), -0.5, dtype=np.float32), (4, 4))
    assert torch.equal(signed, torch.full((1, 3, 4, 4), 0.25))  # [-1, 1] read as diffusers does
    wide = np.zeros((1, 4, 8, 3), dtype=np.float32)
    wide[:, :, 2:6] = 1.0  # the centre 4 columns are white: what the crop keeps
    assert torch.equal(model_input(wide, (4, 4)), torch.ones(1, 3, 4, 4))


def test_a_list_mixing_kinds_is_refused():
    with pytest.raises(TypeError, match="of one kind"):
        model_input([Image.new("RGB", (4, 4)), torch.zeros(3, 4, 4)], (4, 4))


def test_labels_differing_only_in_unicode_normalisation_are_one_concept():
    data = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (4, 4))] * 5, "context": ["obs", NFC, NFD, "b", f"{NFD}+b"]}
    )
    data = data.cast_column("image", datasets.Image())
    concepts, contexts = validate_dataset(data, "image", "context")
    assert concepts == ["b", NFC] and len(concepts[1]) == 4
    assert contexts == ["obs", NFC, NFC, "b", f"b+{NFC}"]
    assert parse_context(NFD, [NFC]) == (NFC,)  # generate("café") typed either way
    assert parse_context(NFC, [NFD]) == (NFD,)  # an adapter saved with the other form


def test_one_file_listed_under_two_contexts_is_refused_naming_it(tmp_path):
    for name in ("x.png", "y.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    rows = [
        {"file_name": "x.png", "context": "a"},
        {"file_name": "y.png", "context": "obs"},
        {"file_name": "x.png", "context": "b"},
        {"file_name": "y.png", "context": "obs"},  # the same file twice, one context: allowed
    ]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_image_dataset(train_data_dir=str(tmp_path), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="labelled twice with different contexts") as error:
        validate_dataset(data["train"], "image", "context")
    message = str(error.value)
    assert str(tmp_path / "x.png") in message
    assert "row 0 says 'a' and row 2 says 'b'" in message


def test_a_validation_split_listing_one_file_under_two_contexts_is_named(tiny, tmp_path):
    from ctxadapter.training.inputs import load_splits

    splits = {
        "train": [("t0.png", "obs"), ("t1.png", "a"), ("t2.png", "obs"), ("t3.png", "a")],
        "validation": [("v0.png", "obs"), ("v0.png", "a")],
    }
    for split, rows in splits.items():
        (tmp_path / "data" / split).mkdir(parents=True)
        for name, _ in rows:
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / name)
        lines = [json.dumps({"file_name": n, "context": c}) + "\n" for n, c in rows]
        (tmp_path / "data" / split / "metadata.jsonl").write_text("".join(lines))
    args = tiny(train_data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="The dataset's 'validation' split: The image .*v0.png"):
        load_splits(args, 0, "context")
