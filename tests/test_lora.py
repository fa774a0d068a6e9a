import os

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.lora import DECODER_LORA_NAME
from ctxadapter.objective import Objective
from ctxadapter.pinning import base_model_record


@pytest.fixture
def model(tiny_kl_path):
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    adapter = CtxAdapter(
        ["a", "b"],
        [4, 4, 4],
        exogenous_width=4,
        concept_width=2,
        base_model=base_model_record(vae, tiny_kl_path),
    )
    return ContextAutoencoder(vae, adapter)


def test_decoder_lora_trains_only_lora_and_adapter(model, make_images):
    model.add_decoder_lora(2)
    out = model(
        ["a", "b"], pixel_values=make_images(2), objective=Objective(reconstruction="pixel")
    )
    out["loss"].backward()
    for name, param in model.named_parameters():
        trainable = name.startswith("adapter.") or "lora_" in name
        assert param.requires_grad == trainable, name
        if "lora_B" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.adapter.config["decoder_lora"]["rank"] == 2


def test_decoder_lora_round_trip(model, tmp_path):
    base = model.generate("a", 2, generator=torch.Generator().manual_seed(0))
    model.add_decoder_lora(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    model.eval()
    tuned = model.generate("a", 2, generator=torch.Generator().manual_seed(0))
    assert (tuned - base).abs().max() > 1e-3  # the LoRA changes the decoder
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["README.md", "config.json", "model.safetensors", DECODER_LORA_NAME]
    )
    loaded = ContextAutoencoder.from_pretrained(str(tmp_path))
    again = loaded.generate("a", 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, tuned)


def test_decoder_lora_errors(model, tiny_taesd_path):
    with pytest.raises(ValueError, match="positive integer, got 0"):
        model.add_decoder_lora(0)
    tiny = ContextAutoencoder(
        AutoencoderTiny.from_pretrained(tiny_taesd_path), CtxAdapter(["a"], [4, 4, 4])
    )
    with pytest.raises(ValueError, match="AutoencoderTiny"):
        tiny.add_decoder_lora(2)
