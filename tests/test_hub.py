"""Hub habits of a whole model: the model card, ``push_to_hub`` with the base autoencoder it
names, and Hub keyword arguments reaching the base. Uploads go to a fake ``HfApi``; downloads
come from a local Hub cache under ``HF_HUB_OFFLINE=1``."""

import copy
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml
from diffusers import AutoencoderKL

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.card import is_hub_id, model_card
from ctxadapter.codec import LatentCodec
from ctxadapter.pinning import base_model_record

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def adapter_for(vae, name_or_path: str) -> CtxAdapter:
    torch.manual_seed(0)
    shape = list(LatentCodec(vae).latent_shape(32))
    record = base_model_record(vae, name_or_path)
    return CtxAdapter(["a", "b"], shape, exogenous_width=4, concept_width=2, base_model=record)


def card_metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def test_is_hub_id(tmp_path):
    assert is_hub_id("stabilityai/sd-vae-ft-mse")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("model") and not is_hub_id(None)
    assert not is_hub_id("a/b/c")


def test_card_metadata_and_body():
    config = {
        "concepts": ["quad1", "size"],
        "latent_shape": [4, 8, 8],
        "base_model": {"pretrained_model_name_or_path": "org/vae"},
    }
    card = str(
        model_card(
            config,
            repo_id="user/my-adapter",
            sample_grid="contexts.png",
            training_command="accelerate launch examples/finetune.py --seed 1",
            results={"steps": 10},
            dataset="user/images",
        )
    )
    meta = card_metadata(card)
    assert meta["library_name"] == "ctxadapter" and meta["license"] == "apache-2.0"
    assert meta["base_model"] == "org/vae" and meta["base_model_relation"] == "adapter"
    assert meta["datasets"] == ["user/images"] and "ctxadapter" in meta["tags"]
    assert 'ContextAutoencoder.from_pretrained("user/my-adapter")' in card
    assert "![Samples under each context](contexts.png)" in card
    assert "accelerate launch examples/finetune.py --seed 1" in card and "| steps | 10 |" in card
    assert "`quad1`, `size`" in card and 'generate("quad1+size"' in card
    local = card_metadata(str(model_card({**config, "base_model": None}, dataset="/data/x")))
    assert "base_model" not in local and "datasets" not in local


def test_push_with_a_local_base_is_refused_unless_the_hub_id_is_named(
    fake_hub, tiny_kl_path, tmp_path
):
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    model = ContextAutoencoder(vae, adapter_for(vae, tiny_kl_path))
    with pytest.raises(ValueError, match="is the local folder .* base_model_id="):
        model.push_to_hub("user/adapter")
    assert fake_hub == []  # nothing sent
    picture = tmp_path / "contexts.png"
    picture.write_bytes(b"png")
    before = copy.deepcopy(model.adapter.config)
    model.push_to_hub(
        "user/adapter",
        base_model_id="org/vae",
        extra_files=[picture],
        model_card_kwargs={"sample_grid": "contexts.png"},
    )
    assert model.adapter.config == before  # the pushed config is a copy
    assert model.adapter.config["base_model"]["pretrained_model_name_or_path"] == tiny_kl_path
    [(repo_id, folder)] = fake_hub
    files = {p.name for p in folder.iterdir()}
    assert files == {"config.json", "model.safetensors", "README.md", "contexts.png"}
    card = (folder / "README.md").read_text()
    assert card_metadata(card)["base_model"] == "org/vae"
    assert 'from_pretrained("user/adapter")' in card and "contexts.png" in card
    assert (
        CtxAdapter.from_pretrained(folder).config["base_model"]["pretrained_model_name_or_path"]
        == "org/vae"
    )
    with pytest.raises(ValueError, match="base_model_id must be a Hub repository id"):
        model.push_to_hub("user/adapter", base_model_id=str(tmp_path))


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """The layout ``hf_hub_download`` reads: refs/main -> commit, snapshots/<commit>/<files>."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)


def test_hub_arguments_reach_the_base_autoencoder(tiny_kl_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    adapter = adapter_for(vae, "org/vae")
    adapter.save_pretrained(tmp_path / "adapter")
    cache = tmp_path / "hub-cache"
    put_in_hub_cache(cache, "org/vae", Path(tiny_kl_path))
    put_in_hub_cache(cache, "user/adapter", tmp_path / "adapter")
    model = ContextAutoencoder.from_pretrained("user/adapter", cache_dir=cache)
    assert model.generate("a", num_samples=1).shape == (1, 3, 32, 32)
    with pytest.raises(OSError, match="Could not load the base autoencoder"):
        ContextAutoencoder.from_pretrained(str(tmp_path / "adapter"), cache_dir=tmp_path / "empty")


# ---------------------------------------------------------------------------------- pinning


def test_the_base_is_pinned_by_commit_and_fingerprint(tiny_kl_path, tmp_path, monkeypatch):
    from ctxadapter.pinning import weights_fingerprint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub-cache"
    put_in_hub_cache(cache, "org/vae", Path(tiny_kl_path))
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    hub = base_model_record(vae, "org/vae", cache_dir=cache)
    assert hub["revision"] == COMMIT  # the commit the files come from
    local = base_model_record(vae, tiny_kl_path)
    assert local["revision"] is None and Path(local["pretrained_model_name_or_path"]).is_absolute()
    assert hub["fingerprint"] == local["fingerprint"] == weights_fingerprint(tiny_kl_path)


def test_a_base_with_other_weights_is_refused(tiny_kl_path, tmp_path):
    base = tmp_path / "vae"
    shutil.copytree(tiny_kl_path, base)
    vae = AutoencoderKL.from_pretrained(base)
    adapter_for(vae, str(base)).save_pretrained(tmp_path / "adapter")
    ContextAutoencoder.from_pretrained(tmp_path / "adapter")  # the same weights: fine
    half = ContextAutoencoder.from_pretrained(tmp_path / "adapter", torch_dtype=torch.float16)
    assert half.codec.dtype == torch.float16  # the fingerprint reads the files, not the module
    with torch.no_grad():  # other weights, same config and scaling factors
        vae.decoder.conv_out.weight.mul_(1.5)
    vae.save_pretrained(base)
    with pytest.raises(ValueError, match="has other weights .* fingerprint [0-9a-f]{16} where"):
        ContextAutoencoder.from_pretrained(tmp_path / "adapter")
    loaded = ContextAutoencoder.from_pretrained(tmp_path / "adapter", check_base=False)
    assert loaded.generate("a", num_samples=1).shape == (1, 3, 32, 32)


def test_the_shipped_autoencoder_is_recorded_by_name():
    from ctxadapter.pinning import SHIPPED_AUTOENCODERS, local_path, portable_name
    from ctxadapter.training import QUAD_AUTOENCODER

    name = "ctxadapter:quad-autoencoder"
    assert SHIPPED_AUTOENCODERS[name] == QUAD_AUTOENCODER
    assert portable_name(str(QUAD_AUTOENCODER)) == name
    assert local_path(name) == str(QUAD_AUTOENCODER) and local_path("org/vae") == "org/vae"
    vae = AutoencoderKL.from_pretrained(QUAD_AUTOENCODER)
    record = base_model_record(vae, str(QUAD_AUTOENCODER))
    assert record["pretrained_model_name_or_path"] == name
    assert record["latents_mean"] is None and record["latent_patch_size"] == 1


def test_other_latent_statistics_are_refused(tiny_kl_path):
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    adapter = adapter_for(vae, tiny_kl_path)
    adapter.config["base_model"]["latents_mean"] = [0.1, 0.2, 0.3, 0.4]
    adapter.config["base_model"]["latents_std"] = [1.0] * 4
    with pytest.raises(ValueError, match="normalised with latents_mean=\\[0.1, 0.2, 0.3, 0.4\\]"):
        ContextAutoencoder(vae, adapter)


# ---------------------------------------------------------------------------------- sharing


@pytest.mark.parametrize("name", ["ctxadapter:quad-autoencoder", "ctxadapter:photo-autoencoder"])
def test_push_on_the_shipped_autoencoder_records_its_name(fake_hub, name):
    from ctxadapter.pinning import SHIPPED_AUTOENCODERS

    vae = AutoencoderKL.from_pretrained(SHIPPED_AUTOENCODERS[name])
    model = ContextAutoencoder(vae, adapter_for(vae, str(SHIPPED_AUTOENCODERS[name])))
    model.push_to_hub("user/adapter")  # no base_model_id: it ships with ctxadapter
    [(repo_id, folder)] = fake_hub
    assert repo_id == "user/adapter"
    pushed = ContextAutoencoder.from_pretrained(folder)  # loads the packaged base by name
    record = pushed.adapter.config["base_model"]
    assert record["pretrained_model_name_or_path"] == name
    assert f"`{name}` (ships with ctxadapter)" in (folder / "README.md").read_text()


def test_push_without_a_hub_login_fails_before_anything_is_sent(
    fake_hub, monkeypatch, tiny_kl_path
):
    from huggingface_hub.errors import LocalTokenNotFoundError

    def no_login(self):
        raise LocalTokenNotFoundError("no token")

    monkeypatch.setattr("ctxadapter.hub.HfApi.whoami", no_login)
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    model = ContextAutoencoder(vae, adapter_for(vae, tiny_kl_path))
    expected = "'user/adapter': the Hub login could not be checked \\(no token\\)"
    with pytest.raises(PermissionError, match=expected):
        model.push_to_hub("user/adapter", base_model_id="org/vae")
    assert fake_hub == []


def test_a_saved_card_loads_from_its_folder_and_parses(tiny_kl_path, tmp_path):
    from huggingface_hub import ModelCard

    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    model = ContextAutoencoder(vae, adapter_for(vae, tiny_kl_path))
    model.save_pretrained(tmp_path / "saved")
    text = (tmp_path / "saved" / "README.md").read_text()
    assert "<repo-id>" not in text
    assert f'ContextAutoencoder.from_pretrained("{tmp_path / "saved"}")' in text
    card = ModelCard.load(tmp_path / "saved" / "README.md")
    assert card.data.library_name == "ctxadapter" and card.data.base_model is None
    fingerprint = model.adapter.config["base_model"]["fingerprint"]
    assert f"class `AutoencoderKL`, weights fingerprint `{fingerprint}`" in card.text


def test_card_kwargs_of_a_runs_metrics():
    from ctxadapter.card import card_kwargs, format_duration

    metrics = {
        "steps": 2511,
        "stop_reason": "early stopping at step 2,511",
        "train_batch_size": 450,
        "best_validation_loss": 0.123456789,
        "train_images": 450,
        "validation_images": 24,
        "base_reconstruction_mse": 0.00123,
        "wall_time_s": 215.4,
        "training_command": "accelerate launch examples/finetune.py --seed 1",
        "dataset": "user/images",
        "pictures": ["compositions.png", "concept_graph.png", "contexts.png"],
    }
    kwargs = card_kwargs(metrics)
    assert kwargs["sample_grid"] == "contexts.png"
    assert kwargs["pictures"] == ["compositions.png", "concept_graph.png"]
    assert kwargs["results"] == {
        "stopped by": "early stopping at step 2,511",
        "optimizer steps": "2,511",
        "batch size": "450",
        "best validation loss": "0.12346",
        "training / validation images": "450 / 24",
        "base reconstruction MSE (validation)": "0.00123",
        "training time": "3 min 35 s",
    }
    assert card_kwargs({})["results"] == {} and card_kwargs({})["sample_grid"] is None
    assert [format_duration(s) for s in (12.4, 60, 3725)] == ["12 s", "1 min 0 s", "1 h 02 min"]
    text = str(model_card({"concepts": ["a"], "latent_shape": [4, 4, 4]}, **kwargs))
    assert "![The learned concept graph](concept_graph.png)" in text
    assert "| training time | 3 min 35 s |" in text
