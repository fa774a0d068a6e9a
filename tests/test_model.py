"""ContextAutoencoder on tiny autoencoders loaded from disk with ``from_pretrained``.

Each test runs on an SD-like ``AutoencoderKL``, an SD3/FLUX-like (shifted, 16-channel)
``AutoencoderKL`` and a TAESD-like ``AutoencoderTiny``, all saved by ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image
from torch.testing import assert_close

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.codec import LatentCodec
from ctxadapter.contexts import context_mask
from ctxadapter.model import eval_mode
from ctxadapter.objective import Objective, gaussian_kl
from ctxadapter.pinning import base_model_record

CONCEPTS = ["a", "b", "c"]
RESOLUTION = 32
# name -> (fixture, class)
CASES = {
    "kl": ("tiny_kl_path", AutoencoderKL),
    "sd3": ("tiny_sd3_path", AutoencoderKL),
    "taesd": ("tiny_taesd_path", AutoencoderTiny),
}


def load_vae(request: pytest.FixtureRequest, name: str):
    fixture, cls = CASES[name]
    return cls.from_pretrained(request.getfixturevalue(fixture))


def vae_path(request: pytest.FixtureRequest, name: str) -> str:
    return request.getfixturevalue(CASES[name][0])


def make_adapter(vae, seed: int = 0, **kwargs) -> CtxAdapter:
    torch.manual_seed(seed)
    shape = list(LatentCodec(vae).latent_shape(RESOLUTION))
    return CtxAdapter(CONCEPTS, latent_shape=shape, exogenous_width=8, concept_width=4, **kwargs)


ELBO = dict.fromkeys(
    ("sample_matching", "prior_matching", "covariance_matching", "edit_order", "group_sparsity"),
    0.0,
)
"""The ``Objective`` weights that leave the reconstruction and KL terms alone."""


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest):
    """(name, ContextAutoencoder over a freshly loaded tiny autoencoder)."""
    vae = load_vae(request, request.param)
    return request.param, ContextAutoencoder(vae, make_adapter(vae))


# ---------------------------------------------------------------------------------- device, modes


def test_device_and_dtype_are_the_adapters(case):
    _, model = case
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    model.codec.to(torch.float64)  # the autoencoder's dtype is the codec's own
    assert model.dtype == torch.float32 and model.codec.dtype == torch.float64
    model.adapter.to(torch.float64)
    assert model.dtype == torch.float64
    assert model.device == model.adapter.latent_log_scale.device


def test_eval_mode_restores_every_mode_and_disables_gradients(case):
    _, model = case
    model.train()
    model.adapter.expressive.eval()  # a submodule in another mode than its parent
    before = {name: module.training for name, module in model.named_modules()}
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
        assert not torch.is_grad_enabled()
    assert {name: module.training for name, module in model.named_modules()} == before
    assert torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="inside"), eval_mode(model):
        raise RuntimeError("inside")
    assert {name: module.training for name, module in model.named_modules()} == before


# ---------------------------------------------------------------------------------- training loss


@pytest.mark.parametrize("reconstruction", ["latent", "pixel"])
def test_loss_trains_only_the_adapter(case, images, reconstruction):
    _, model = case
    model.train()
    assert not model.codec.autoencoder.training  # the frozen autoencoder stays in eval mode
    objective = Objective(reconstruction=reconstruction, **ELBO | dict(group_sparsity=0.1, l2=0.1))
    out = model.loss(["obs", "a+b"], pixel_values=images, objective=objective)
    for key in ("loss", "reconstruction", "kl", "causal_penalty", "sample_matching"):
        assert out[key].ndim == 0, key
        assert torch.isfinite(out[key]), key
    assert out["sample_matching"].item() == 0  # off here
    assert out["prior_matching"].item() == 0
    assert out["loss"].item() == pytest.approx(
        (out["reconstruction"] + out["kl"] + out["causal_penalty"]).item(), rel=1e-5
    )


@pytest.mark.parametrize("log_scale", [0.0, math.log(2.0)])
def test_latent_loss_by_hand(case, images, log_scale):
    _, model = case
    model.eval()
    with torch.no_grad():
        model.adapter.latent_log_scale.fill_(log_scale)
    latents = model.codec.encode(images)
    contexts = ["a", "obs"]
    with torch.no_grad():
        out = model.adapter(latents, contexts, generator=seeded(7))
        result = model.loss(
            contexts, latents=latents, generator=seeded(7), objective=Objective(beta=0.5, **ELBO)
        )
    d = latents[0].numel()
    sigma2 = math.exp(2 * log_scale)
    squared = (latents - out.latents).pow(2).flatten(1).sum(dim=1)
    expected = 0.5 * squared / sigma2 + d * (log_scale + 0.5 * math.log(2 * math.pi))
    assert_close(result["reconstruction"], expected.mean())
    kl = 0.5 * (out.mean.pow(2) + out.logvar.exp() - 1 - out.logvar).sum(dim=1).mean()
    assert_close(result["kl"], kl)
    assert_close(result["loss"], expected.mean() + 0.5 * kl)


def test_pixel_loss_by_hand(case, images):
    _, model = case
    model.eval()
    contexts = ["b", "obs"]
    with torch.no_grad():
        latents = model.codec.encode(images)
        out = model.adapter(latents, contexts, generator=seeded(5))
        result, matched = (
            model.loss(
                contexts,
                pixel_values=images,
                objective=Objective(reconstruction="pixel", **settings),
                generator=seeded(5),
            )
            for settings in (ELBO, {})  # the ELBO; the defaults' matching terms
        )
        of_mean = model.adapter.latents_from_noise(out.mean, contexts).view_as(out.latents)

    def bce(decoded):
        probs = ((model.codec.decode(decoded) + 1) / 2).clamp(1e-4, 1 - 1e-4)
        target = (images + 1) / 2
        return -(target * probs.log() + (1 - target) * (1 - probs).log()).flatten(1).sum(dim=1)

    assert_close(result["reconstruction"], bce(out.latents).mean(), rtol=1e-4, atol=1e-3)
    # with the matching rows decoded, the posterior mean's decoding is reconstructed too
    both = (bce(out.latents).mean() + bce(of_mean).mean()) / 2
    assert_close(matched["reconstruction"], both, rtol=1e-4, atol=1e-3)


def test_gaussian_kl_by_hand():
    assert_close(gaussian_kl(torch.ones(2, 3), torch.zeros(2, 3)), torch.full((2,), 1.5))
    assert_close(gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)), torch.zeros(1))
    logvar = torch.full((1, 2), math.log(2.0))
    expected = 2 * 0.5 * (2 - 1 - math.log(2.0))
    assert gaussian_kl(torch.zeros(1, 2), logvar).item() == pytest.approx(expected)


def test_loss_argument_errors(case, images):
    _, model = case
    with pytest.raises(ValueError, match="'both'"):
        Objective(reconstruction="both")
    with pytest.raises(ValueError, match="pixel_values"):
        model.loss("obs")
    with pytest.raises(ValueError, match="pixel"):
        pixel = Objective(reconstruction="pixel")
        model.loss("obs", latents=model.codec.encode(images), objective=pixel)
    with pytest.raises(ValueError, match="'d'"):
        model.loss("d", pixel_values=images)


def test_group_sparsity_with_interventions_trains_without_nan(case, images):
    _, model = case
    model.train()
    optimizer = torch.optim.Adam(model.adapter.parameters(), lr=1e-2)
    latents = model.codec.encode(images)
    for contexts in (["obs", "a"], ["b+c", "c"], ["a", "obs"]):
        optimizer.zero_grad()
        objective = Objective(group_sparsity=1.0, l2=1.0, sample_matching=1.0)
        out = model.loss(contexts, latents=latents, objective=objective)
        out["loss"].backward()
        optimizer.step()
        model.adapter.apply_constraints_()
    for name, param in model.adapter.named_parameters():
        assert torch.isfinite(param).all(), name


# ---------------------------------------------------------------------------------- generation


def test_generate(case):
    name, model = case
    model.eval()
    images = model.generate("a+b", num_samples=3, generator=seeded(0))
    assert images.shape == (3, 3, RESOLUTION, RESOLUTION)
    assert images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert_close(model.generate("a+b", num_samples=3, generator=seeded(0)), images, rtol=0, atol=0)
    assert not torch.equal(model.generate("a+b", num_samples=3, generator=seeded(1)), images)
    assert not torch.equal(model.generate("obs", num_samples=3, generator=seeded(0)), images)
    # The same thing by hand: prior noise, the layers under the context, the frozen decoder.
    with torch.no_grad():
        z = torch.randn(3, model.adapter.noise_size, generator=seeded(0))
        decoded = model.codec.decode(model.adapter.latents_from_noise(z, "a+b"))
    assert_close(images, ((decoded + 1) / 2).clamp(0, 1), msg=name)
    # A composition as a tuple of names is the same composition; a list is one per sample.
    assert_close(model.generate(("b", "a"), num_samples=3, generator=seeded(0)), images)
    mixed = model.generate(["obs", "a+b", "a"], num_samples=3, generator=seeded(0))
    assert_close(mixed[1], images[1])
    assert_close(mixed[0], model.generate("obs", num_samples=3, generator=seeded(0))[0])


def test_generate_pil(case):
    _, model = case
    model.eval()
    pil = model.generate("a+b", num_samples=3, generator=seeded(0), output_type="pil")
    assert isinstance(pil, list) and len(pil) == 3
    for image in pil:
        assert isinstance(image, Image.Image)
        assert image.size == (RESOLUTION, RESOLUTION)
        assert image.mode == "RGB"


def test_reconstruct_and_counterfactual(case, images):
    _, model = case
    model.eval()
    photos = (images + 1) / 2  # [0, 1], as a user would pass them
    reconstructed = model.reconstruct(photos, "obs")
    assert reconstructed.shape == (2, 3, RESOLUTION, RESOLUTION)
    assert reconstructed.min() >= 0 and reconstructed.max() <= 1
    edited = model.counterfactual(photos, "a", mode="decode")
    assert edited.shape == (2, 3, RESOLUTION, RESOLUTION)
    assert_close(model.counterfactual(photos, "a", mode="decode"), edited, rtol=0, atol=0)
    assert not torch.allclose(edited, reconstructed)
    # By hand: the posterior mean of each image as the noise, under the new context.
    with torch.no_grad():
        mean, _ = model.adapter.posterior(model.codec.encode(images))
        decoded = model.codec.decode(model.adapter.latents_from_noise(mean, "a"))
    assert_close(edited, ((decoded + 1) / 2).clamp(0, 1), rtol=1e-4, atol=1e-4)
    # One context per image.
    per_image = model.reconstruct(photos, ["obs", "a"])
    assert_close(per_image[0], reconstructed[0])
    assert_close(per_image[1], model.reconstruct(photos, "a")[1])
    # A reconstruction infers each image's noise under its own context, an edit under the
    # source context (obs): the two differ for an image of "a" (posterior_context).
    assert not torch.allclose(per_image[1], edited[1])
    with torch.no_grad():
        by_context = model.adapter.posterior(model.codec.encode(images), ["obs", "a"])[0]
    assert_close(model.encode_noise(photos, ["obs", "a"]), by_context, rtol=1e-5, atol=1e-5)
    pil = model.counterfactual(photos, "b+c", output_type="pil")
    assert len(pil) == 2 and pil[0].size == (RESOLUTION, RESOLUTION)


def test_residual_counterfactual_keeps_the_image(case, images):
    _, model = case
    model.eval()
    photos = (images + 1) / 2
    with torch.no_grad():
        latents = model.codec.encode(images)
        own = ((model.codec.decode(latents) + 1) / 2).clamp(0, 1)
        mean, _ = model.adapter.posterior(latents, "b")  # the source context's noise
        shifted = latents + model.adapter.latents_from_noise(mean, "a")
        shifted = shifted - model.adapter.latents_from_noise(mean, "b")
        by_hand = ((model.codec.decode(shifted) + 1) / 2).clamp(0, 1)
    # An edit under the images' own context is the autoencoder's reconstruction.
    assert_close(model.counterfactual(photos, "obs"), own, rtol=1e-5, atol=1e-5)
    assert_close(model.counterfactual(photos, "b", source_context="b"), own, rtol=1e-5, atol=1e-5)
    # Otherwise the latent moves by the change the new context makes.
    edited = model.counterfactual(photos, "a", source_context="b")
    assert_close(edited, by_hand, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(edited, own)
    with pytest.raises(ValueError, match="'both'"):
        model.counterfactual(photos, "a", mode="both")


def test_counterfactual_strength(case, images):
    _, model = case
    model.eval()
    photos = (images + 1) / 2
    with torch.no_grad():
        latents = model.codec.encode(images)
        mean, _ = model.adapter.posterior(latents)
        change = model.adapter.latents_from_noise(mean, "a") - model.adapter.latents_from_noise(
            mean, "obs"
        )
        twice = ((model.codec.decode(latents + 2 * change) + 1) / 2).clamp(0, 1)
    # 0: no edit (the autoencoder's reconstruction; in decode mode, the source reconstruction).
    own = model.counterfactual(photos, "obs")
    assert_close(model.counterfactual(photos, "a", strength=0), own, rtol=1e-5, atol=1e-5)
    assert_close(
        model.counterfactual(photos, "a", mode="decode", strength=0.0),
        model.reconstruct(photos, "obs"),
        rtol=1e-5,
        atol=1e-5,
    )
    # 2: twice the change the new context makes, from the image's own latent.
    assert_close(model.counterfactual(photos, "a", strength=2), twice, rtol=1e-4, atol=1e-4)
    for bad in (-0.5, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match=f"strength must be .* got {bad!r}"):
            model.counterfactual(photos, "a", strength=bad)


# ---------------------------------------------------------------------------------- mismatches


def test_mismatched_adapter_is_rejected(request):
    vae = load_vae(request, "kl")  # 4 latent channels
    adapter = CtxAdapter(CONCEPTS, latent_shape=[16, 4, 4])
    with pytest.raises(ValueError) as error:
        ContextAutoencoder(vae, adapter)
    message = str(error.value)
    assert "(16, 4, 4)" in message
    assert "(4, " in message


def test_another_size_is_cropped_as_training_does_whatever_the_kind(case):
    from ctxadapter.images import model_input

    _, model = case
    model.eval()
    wide = torch.zeros(1, 3, 32, 48, dtype=torch.uint8)  # 32 x 48: the centre 32 columns are 200
    wide[..., 8:40] = 200
    pil = Image.fromarray(wide[0].permute(1, 2, 0).numpy())
    kinds = (wide, wide.float() / 255, wide[0].permute(1, 2, 0).numpy()[None], pil, [pil])
    for given in kinds:  # the shorter side fits: only the 8 columns each side are cropped
        assert_close(model_input(given, (32, 32)), torch.full((1, 3, 32, 32), 200 / 255))
    centre = model.reconstruct(torch.full((1, 3, 32, 32), 200, dtype=torch.uint8), "obs")
    assert_close(model.reconstruct(pil, "obs"), centre, rtol=0, atol=1e-4)  # float rounding


# ------------------------------------------------------------------------- saving and loading


@pytest.mark.parametrize("name", list(CASES))
def test_from_pretrained_loads_recorded_base(request, tmp_path, name):
    path = vae_path(request, name)
    vae = load_vae(request, name)
    adapter = make_adapter(vae, base_model=base_model_record(vae, path))
    model = ContextAutoencoder(vae, adapter)
    model.train()
    model.loss(["obs", "a", "b", "a+c"], pixel_values=torch.rand(4, 3, 32, 32) * 2 - 1)
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {
        "config.json",
        "model.safetensors",
        "README.md",
    }
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["base_model"]["class_name"] == CASES[name][1].__name__
    assert config["base_model"]["pretrained_model_name_or_path"] == path

    loaded = ContextAutoencoder.from_pretrained(tmp_path / "adapter")
    assert not loaded.training and not loaded.adapter.training
    assert isinstance(loaded.codec.autoencoder, CASES[name][1])
    assert loaded.codec.autoencoder is not vae
    for key, value in vae.state_dict().items():
        assert torch.equal(loaded.codec.autoencoder.state_dict()[key], value), key
    assert_close(
        loaded.generate("a+b", num_samples=2, generator=seeded(0)),
        model.generate("a+b", num_samples=2, generator=seeded(0)),
        rtol=0,
        atol=0,
    )

    override = load_vae(request, name)
    with_override = ContextAutoencoder.from_pretrained(tmp_path / "adapter", autoencoder=override)
    assert with_override.codec.autoencoder is override
    assert_close(
        with_override.generate("c", num_samples=2, generator=seeded(1)),
        model.generate("c", num_samples=2, generator=seeded(1)),
        rtol=0,
        atol=0,
    )


def test_relative_base_folder_is_recorded_absolute(request, tmp_path, monkeypatch):
    vae = load_vae(request, "kl")
    vae.save_pretrained(tmp_path / "work" / "my-vae")
    monkeypatch.chdir(tmp_path / "work")
    record = base_model_record(vae, "my-vae")
    assert record["pretrained_model_name_or_path"] == str(tmp_path / "work" / "my-vae")
    make_adapter(vae, base_model=record).save_pretrained(tmp_path / "adapter")
    monkeypatch.chdir(tmp_path)  # another working directory still finds the base
    loaded = ContextAutoencoder.from_pretrained(tmp_path / "adapter")
    assert isinstance(loaded.codec.autoencoder, AutoencoderKL)
    # a Hub id is recorded as given
    assert base_model_record(vae, "user/some-vae")["pretrained_model_name_or_path"] == (
        "user/some-vae"
    )


def test_missing_base_autoencoder_error_names_it(request, tmp_path):
    vae = load_vae(request, "kl")
    vae.save_pretrained(tmp_path / "gone")
    record = base_model_record(vae, tmp_path / "gone")
    make_adapter(vae, base_model=record).save_pretrained(tmp_path / "adapter")
    for path in (tmp_path / "gone").iterdir():
        path.unlink()
    with pytest.raises(OSError, match="pass it with autoencoder=") as error:
        ContextAutoencoder.from_pretrained(tmp_path / "adapter")
    assert str(tmp_path / "gone") in str(error.value)
    loaded = ContextAutoencoder.from_pretrained(tmp_path / "adapter", autoencoder=vae)
    assert loaded.codec.autoencoder is vae


def test_from_pretrained_uses_recorded_subfolder_and_revision(request, tmp_path, monkeypatch):
    vae = load_vae(request, "kl")
    vae.save_pretrained(tmp_path / "repo" / "vae")
    record = base_model_record(vae, tmp_path / "repo", revision="v1", subfolder="vae")
    assert record["revision"] == "v1" and record["subfolder"] == "vae"
    make_adapter(vae, base_model=record).save_pretrained(tmp_path / "adapter")
    calls = []
    original = AutoencoderKL.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        calls.append((str(path), dict(kwargs)))
        kwargs.pop("revision")  # a local folder has no revisions
        return original(cls, path, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(spy))
    loaded = ContextAutoencoder.from_pretrained(tmp_path / "adapter", torch_dtype=torch.float64)
    [(path, kwargs)] = calls
    assert path == str(tmp_path / "repo")
    assert kwargs["revision"] == "v1" and kwargs["subfolder"] == "vae"
    assert kwargs["torch_dtype"] == torch.float64
    assert loaded.codec.autoencoder.dtype == torch.float64
    assert loaded.adapter.latent_log_scale.dtype == torch.float32
    for key, value in vae.state_dict().items():
        assert_close(loaded.codec.autoencoder.state_dict()[key], value.double()), key
    images = loaded.generate("a", num_samples=1, generator=seeded(0))
    assert images.shape == (1, 3, RESOLUTION, RESOLUTION) and images.dtype == torch.float32


def test_saved_weights_exclude_the_autoencoder(request, tmp_path):
    import safetensors.torch

    vae = load_vae(request, "kl")
    model = ContextAutoencoder(vae, make_adapter(vae))
    model.save_pretrained(tmp_path / "adapter")
    tensors = safetensors.torch.load_file(tmp_path / "adapter" / "model.safetensors")
    assert set(tensors) == set(model.adapter.state_dict())
    assert not set(tensors) & {f"codec.autoencoder.{k}" for k in vae.state_dict()}
    assert not set(tensors) & set(vae.state_dict())


def test_from_pretrained_without_base_needs_an_autoencoder(request, tmp_path):
    vae = load_vae(request, "kl")
    model = ContextAutoencoder(vae, make_adapter(vae)).eval()
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="autoencoder"):
        ContextAutoencoder.from_pretrained(tmp_path / "adapter")
    loaded = ContextAutoencoder.from_pretrained(tmp_path / "adapter", autoencoder=vae)
    assert_close(
        loaded.generate("a", num_samples=2, generator=seeded(0)),
        model.generate("a", num_samples=2, generator=seeded(0)),
        rtol=0,
        atol=0,
    )


def test_override_with_other_scaling_factor_is_rejected(request, tmp_path):
    vae = load_vae(request, "kl")  # scaling_factor 0.18215
    adapter = make_adapter(vae, base_model=base_model_record(vae, vae_path(request, "kl")))
    adapter.save_pretrained(tmp_path / "adapter")
    other = load_vae(request, "taesd")  # same latent shape, scaling_factor 1.0
    with pytest.raises(ValueError) as error:
        ContextAutoencoder.from_pretrained(tmp_path / "adapter", autoencoder=other)
    message = str(error.value)
    assert "scaling_factor" in message
    assert "0.18215" in message and "1.0" in message


def test_recorded_shift_factor_is_checked(request, tmp_path):
    vae = load_vae(request, "sd3")
    record = base_model_record(vae, vae_path(request, "sd3"))
    assert record["shift_factor"] == pytest.approx(0.0609)
    adapter = make_adapter(vae, base_model={**record, "shift_factor": 0.5})
    with pytest.raises(ValueError) as error:
        ContextAutoencoder(vae, adapter)
    assert "shift_factor" in str(error.value) and "0.5" in str(error.value)


def test_push_to_hub_uploads_only_the_adapter(request, fake_hub):
    vae = load_vae(request, "kl")
    model = ContextAutoencoder(vae, make_adapter(vae))  # no base recorded, no run folder
    assert model.push_to_hub("user/model") == "url"
    [(repo_id, folder)] = fake_hub
    assert repo_id == "user/model"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}


def test_context_masks_reach_the_adapter(case, images):
    """A prebuilt (N, K) mask is accepted by the loss like names."""
    _, model = case
    model.eval()
    latents = model.codec.encode(images)
    mask = context_mask(["a", "b+c"], CONCEPTS, 2)
    with torch.no_grad():
        by_names = model.loss(["a", "b+c"], latents=latents, generator=seeded(0))
        by_mask = model.loss(mask, latents=latents, generator=seeded(0))
    assert_close(by_mask["loss"], by_names["loss"])


# ---------------------------------------------------------------------------------- pipeline habits


def test_a_list_of_generators_gives_one_per_sample(case):
    _, model = case
    model.eval()
    together = model.generate("a", num_samples=3, generator=[seeded(5), seeded(6), seeded(7)])
    alone = model.generate("a", num_samples=1, generator=seeded(6))
    assert_close(together[1:2], alone)  # sample 1 depends on generator 1 only
    with pytest.raises(ValueError, match="Got 2 generators for 3 samples"):
        model.generate("a", num_samples=3, generator=[seeded(0), seeded(1)])


def test_latent_output_and_chunked_decoding(case):
    _, model = case
    model.eval()
    latents = model.generate("a+b", num_samples=5, generator=seeded(0), output_type="latent")
    assert latents.shape == (5, *model.adapter.latent_shape)
    with torch.no_grad():
        z = torch.randn(5, model.adapter.noise_size, generator=seeded(0))
        assert_close(latents, model.adapter.latents_from_noise(z, "a+b"))
    whole = model.generate("a+b", num_samples=5, generator=seeded(0))
    chunked = model.generate("a+b", num_samples=5, generator=seeded(0), decode_batch_size=2)
    assert_close(chunked, whole, rtol=0, atol=1e-5)  # batch size changes float reductions
    images = whole[:2]
    edited = model.counterfactual(images, "a", output_type="latent")
    assert edited.shape == (2, *model.adapter.latent_shape)
    with pytest.raises(ValueError, match="output_type must be 'pt', 'pil', 'np' or 'latent'"):
        model.generate("a", output_type="tensor")


def test_a_list_of_contexts_is_one_per_image_in_every_method(case):
    _, model = case
    model.eval()
    images = model.generate("obs", num_samples=2, generator=seeded(0))
    edited = model.counterfactual(images, ["a", "b"])
    assert_close(edited[0], model.counterfactual(images[:1], "a")[0], atol=1e-5, rtol=0)
    assert_close(edited[1], model.counterfactual(images[1:], "b")[0], atol=1e-5, rtol=0)
    composed = model.counterfactual(images, ("a", "b"))
    assert_close(composed, model.counterfactual(images, "a+b"))
    with pytest.raises(ValueError, match="Got 3 contexts for a batch of 2"):
        model.reconstruct(images, ["a", "b", "obs"])


def test_fp16_decoding_is_upcast_when_the_config_says_so(tiny_kl_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_kl_path).half().float()  # fp16-exact weights
    model = ContextAutoencoder(vae, make_adapter(vae)).eval()
    reference = model.generate("a", num_samples=2, generator=seeded(0))  # decoded in float32
    vae.half()
    vae.register_to_config(force_upcast=False)
    plain = model.generate("a", num_samples=2, generator=seeded(0))  # decoded in float16
    vae.register_to_config(force_upcast=True)
    upcast = model.generate("a", num_samples=2, generator=seeded(0))
    assert vae.dtype == torch.float16  # back to fp16 after decoding
    assert_close(upcast, reference, rtol=0, atol=1e-6)
    assert not torch.equal(plain, reference)
