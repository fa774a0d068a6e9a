"""``ctxadapter.domain``: the reconstruction error that tells images far outside an adapter's
training domain, and the warning given images raise through ``ContextAutoencoder``."""

import warnings

import pytest
import torch
from diffusers import AutoencoderKL

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.domain import OutOfDomainWarning, check_domain, reconstruction_mse
from ctxadapter.pinning import base_model_record


class ZeroCodec:
    """Encodes images as themselves and decodes everything to mid-grey (0 in [-1, 1])."""

    device = torch.device("cpu")

    def encode(self, pixels):
        return pixels

    def decode(self, latents):
        return torch.zeros_like(latents)


def test_reconstruction_mse_is_on_the_unit_scale():
    white = torch.ones(2, 3, 4, 4)  # 1 in [-1, 1]: 1.0 in [0, 1]; decoded: 0.5
    assert reconstruction_mse(ZeroCodec(), white) == pytest.approx(0.25)
    half = torch.cat([torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)])  # errors 0.25 and 0
    assert reconstruction_mse(ZeroCodec(), half) == pytest.approx(0.125)


def test_check_domain_warns_above_four_times_the_recorded_error():
    with pytest.warns(OutOfDomainWarning, match="0.05 per pixel, 5 times the 0.01 recorded"):
        check_domain(0.01, 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_domain(0.01, 0.04)  # four times: still inside
        check_domain(None, 1.0)  # nothing recorded: nothing to compare with


def test_images_far_outside_the_training_domain_warn(tiny_kl_path):
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    record = base_model_record(vae, tiny_kl_path)
    torch.manual_seed(0)
    adapter = CtxAdapter(["a"], [4, 4, 4], exogenous_width=4, concept_width=2, base_model=record)
    model = ContextAutoencoder(vae, adapter).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    measured = reconstruction_mse(model.codec, images * 2 - 1)
    model.adapter.config["base_model"]["reconstruction_mse"] = (
        measured / 10
    )  # trained on images 10x easier to reconstruct
    with pytest.warns(OutOfDomainWarning, match=f"{measured:.3g} per pixel, 10 times"):
        model.counterfactual(images, "a")
    model.adapter.config["base_model"]["reconstruction_mse"] = measured  # these very images: inside
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDomainWarning)
        model.reconstruct(images, "obs")
