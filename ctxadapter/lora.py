"""The decoder LoRA: the paper's "CM (fine-tune)" variant as a peft LoRA on the frozen
decoder of an ``AutoencoderKL``, trained with the pixel loss and saved beside the adapter
(``decoder_lora.safetensors``)."""

from __future__ import annotations

import os

import diffusers
import safetensors.torch
import torch
from huggingface_hub import hf_hub_download

DECODER_LORA_NAME = "decoder_lora.safetensors"
"""The file of an adapter folder that holds the decoder LoRA's weights."""

DECODER_LORA_TARGETS = [
    "conv1",
    "conv2",
    "conv_shortcut",
    "conv_in",
    "conv_out",
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
]
"""Decoder modules adapted by default."""


def add_decoder_lora(
    autoencoder, rank: int, alpha: float | None = None, target_modules: list[str] | None = None
) -> dict:
    """Inject a LoRA into ``autoencoder.decoder`` (an ``AutoencoderKL``'s) and return its
    settings (``rank``, ``alpha``, ``target_modules``), as an adapter's config records them.

    Args:
        rank: the LoRA rank.
        alpha: the LoRA scale numerator (default: ``rank``).
        target_modules: decoder module names to adapt (default: ``DECODER_LORA_TARGETS``, the
            ResNet and attention convolutions and projections, the input and output
            convolutions).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"The decoder LoRA rank must be a positive integer, got {rank!r}")
    if not isinstance(autoencoder, diffusers.AutoencoderKL):
        raise ValueError(
            f"A decoder LoRA needs an AutoencoderKL, not a {type(autoencoder).__name__}."
        )
    settings = {
        "rank": rank,
        "alpha": alpha or rank,
        "target_modules": list(target_modules or DECODER_LORA_TARGETS),
    }
    config = LoraConfig(
        r=rank, lora_alpha=settings["alpha"], target_modules=settings["target_modules"]
    )
    inject_adapter_in_model(config, autoencoder.decoder)
    return settings


def decoder_lora_state(autoencoder) -> dict[str, torch.Tensor]:
    """The LoRA weights of ``autoencoder.decoder`` (peft's state dict)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(autoencoder.decoder)


def save_decoder_lora(autoencoder, folder: str | os.PathLike) -> None:
    """Write the decoder LoRA's weights to ``folder/DECODER_LORA_NAME``."""
    state = {k: v.contiguous() for k, v in decoder_lora_state(autoencoder).items()}
    safetensors.torch.save_file(state, os.path.join(folder, DECODER_LORA_NAME))


def load_decoder_lora(autoencoder, settings: dict, name_or_path: str, **hub_kwargs) -> None:
    """Inject the LoRA of ``settings`` into ``autoencoder.decoder`` and load its weights from
    the adapter folder or Hub repository ``name_or_path``."""
    from peft import set_peft_model_state_dict

    add_decoder_lora(autoencoder, settings["rank"], settings["alpha"], settings["target_modules"])
    path = str(name_or_path)
    file = (
        os.path.join(path, DECODER_LORA_NAME)
        if os.path.isdir(path)
        else hf_hub_download(path, DECODER_LORA_NAME, **hub_kwargs)
    )
    result = set_peft_model_state_dict(autoencoder.decoder, safetensors.torch.load_file(file))
    if result.unexpected_keys:
        raise ValueError(f"{file} holds unexpected keys {result.unexpected_keys}.")
