"""A hostile or damaged adapter folder is refused before any weight is allocated, naming the file
and the key (``ctxadapter.adapter_files``); an autoencoder passed in is checked like a recorded
one. Adapters are tiny (2 concepts, widths 2) and built in memory."""

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.adapter_files import CONFIG_DIGEST_KEY, LIMITS
from ctxadapter.config import AdapterConfig
from ctxadapter.pinning import base_model_record


def save(tmp_path: Path, name: str = "adapter", **kwargs) -> Path:
    torch.manual_seed(0)
    paper = AdapterConfig.paper().to_dict()  # linear heads: the shapes the messages quote
    settings = paper | dict(exogenous_width=2, concept_width=2, head_width=4) | kwargs
    folder = tmp_path / name
    CtxAdapter(["a", "b"], [4, 4, 4], **settings).save_pretrained(folder)
    return folder


def edit_config(folder: Path, text: str) -> None:
    (folder / "config.json").write_text(text)


@pytest.mark.parametrize(
    "text, named",
    [
        ("{", "is not valid JSON"),
        ("[1, 2]", "holds a JSON list, expected an object"),
    ],
    ids=["not_json", "a_list"],
)
def test_a_config_that_is_not_a_json_object_is_named(tmp_path, text, named):
    folder = save(tmp_path)
    edit_config(folder, text)
    with pytest.raises(ValueError, match=named) as error:
        CtxAdapter.from_pretrained(folder)
    assert str(folder / "config.json") in str(error.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("concepts", "ab", "a list of concept names"),
        ("concepts", [f"c{i}" for i in range(LIMITS["concepts"] + 1)], "1 to 512 names"),
        ("latent_shape", [4, 4], "3 integers from 1 to 16384"),
        ("exogenous_width", "2", "an integer from 1 to 4096"),
        ("concept_width", 10**6, "an integer from 1 to 4096"),
        ("pooled", "yes", "true or false"),
        ("heads", 3, "one of \\('linear'"),
        ("observational_mixing", "sparse", "one of \\('dense', 'block'\\)"),
        ("base_model", [], "an object or null"),
        ("base_model.scaling_factor", "0.18", "int or float or null"),
        ("base_model.latents_mean", [0.1, "x"], "list or null"),
    ],
)
def test_a_config_value_of_the_wrong_type_or_size_names_the_file_and_key(
    tmp_path, key, value, expected
):
    folder = save(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    if key.startswith("base_model."):
        config["base_model"] = {"pretrained_model_name_or_path": "org/vae", key[11:]: value}
    else:
        config[key] = value
    edit_config(folder, json.dumps(config))
    with pytest.raises(ValueError, match=expected) as error:
        CtxAdapter.from_pretrained(folder)
    assert f"key {key!r}" in str(error.value) and str(folder / "config.json") in str(error.value)


def test_a_large_config_is_checked_against_the_weights_header_before_allocating(
    tmp_path, monkeypatch
):
    folder = save(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    concepts = [f"c{i}" for i in range(500)]  # within bounds: the weights' shapes refuse it
    edit_config(folder, json.dumps(config | {"concepts": concepts, "exogenous_width": 4000}))

    def never(*args, **kwargs):
        raise AssertionError("the weights were read or the model was built")

    monkeypatch.setattr(safetensors.torch, "load_file", never)
    original = CtxAdapter.__init__

    def on_meta_only(self, *args, **kwargs):  # 500 x 4000 x 2 values would be 16 GB and more
        assert torch.empty(0).device.type == "meta", "the model was allocated"
        original(self, *args, **kwargs)

    monkeypatch.setattr(CtxAdapter, "__init__", on_meta_only)
    with pytest.raises(ValueError, match="do not match") as error:
        CtxAdapter.from_pretrained(folder)
    message = str(error.value)
    assert "posterior_head.weight has shape [8, 64] where the config gives [4000000, 64]" in message
    assert str(folder / "model.safetensors") in message


def test_a_folder_mixing_two_saves_is_refused_naming_both_files(tmp_path):
    old = save(tmp_path, "old")
    new = save(tmp_path, "new", composition="strict")  # the same shapes, another adapter
    os.replace(new / "model.safetensors", old / "model.safetensors")  # killed mid-swap
    with pytest.raises(ValueError, match="mixes two saves") as error:
        CtxAdapter.from_pretrained(old)
    assert str(old / "config.json") in str(error.value)
    assert str(old / "model.safetensors") in str(error.value)


def test_weights_without_the_config_hash_still_load(tmp_path):
    folder = save(tmp_path)
    path = folder / "model.safetensors"
    with safetensors.safe_open(str(path), "pt") as weights:
        metadata = weights.metadata()
        tensors = {k: weights.get_tensor(k) for k in weights.keys()}
    del metadata[CONFIG_DIGEST_KEY]  # as saved by ctxadapter before the hash was recorded
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    loaded = CtxAdapter.from_pretrained(folder)
    assert torch.equal(loaded.state_dict()["causal.weight_obs"], tensors["causal.weight_obs"])


def test_moving_the_base_keeps_the_config_bound_to_its_weights(tmp_path):
    base = {"pretrained_model_name_or_path": "/old/vae", "fingerprint": "abc", "revision": None}
    folder = save(tmp_path, base_model=base)
    config = json.loads((folder / "config.json").read_text())
    config["base_model"]["pretrained_model_name_or_path"] = "/new/vae"  # where, not what
    edit_config(folder, json.dumps(config))
    assert CtxAdapter.from_pretrained(folder).config["base_model"]["pretrained_model_name_or_path"]
    config["base_model"]["fingerprint"] = "def"  # what: another base
    edit_config(folder, json.dumps(config))
    with pytest.raises(ValueError, match="is not the config the weights"):
        CtxAdapter.from_pretrained(folder)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda t: t["causal.bias"].fill_(float("nan")), "non-finite values .* causal.bias"),
        (lambda t: t.update(latent_log_scale=torch.tensor(1)), "latent_log_scale of dtype I64"),
    ],
    ids=["nan", "integer"],
)
def test_non_finite_or_integer_weights_are_refused(tmp_path, damage, named):
    folder = save(tmp_path)
    path = folder / "model.safetensors"
    with safetensors.safe_open(str(path), "pt") as weights:
        metadata = weights.metadata()
        tensors = {k: weights.get_tensor(k) for k in weights.keys()}
    damage(tensors)
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=named) as error:
        CtxAdapter.from_pretrained(folder)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["./my-adaptr", "my-adaptr", "runs/my-adaptr"])
def test_a_mistyped_folder_is_named_without_asking_the_hub(tmp_path, monkeypatch, name):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"No adapter folder '{name}'"):
        CtxAdapter.from_pretrained(name)


def test_an_autoencoder_passed_in_is_compared_with_the_recorded_fingerprint(tiny_kl_path, tmp_path):
    right = AutoencoderKL.from_pretrained(tiny_kl_path)
    record = base_model_record(right, tiny_kl_path)
    save(tmp_path, base_model=record)
    folder = tmp_path / "adapter"
    loaded = ContextAutoencoder.from_pretrained(folder, autoencoder=right)
    assert loaded.codec.autoencoder is right
    half = AutoencoderKL.from_pretrained(tiny_kl_path, torch_dtype=torch.float16)
    ContextAutoencoder.from_pretrained(folder, autoencoder=half)  # its files are the right ones
    torch.manual_seed(1)
    other = AutoencoderKL(**{k: v for k, v in right.config.items() if not k.startswith("_")})
    with pytest.raises(ValueError, match="autoencoder= has other weights") as error:
        ContextAutoencoder.from_pretrained(folder, autoencoder=other)
    assert record["fingerprint"] in str(error.value)
    ContextAutoencoder.from_pretrained(folder, autoencoder=other, check_base=False)
