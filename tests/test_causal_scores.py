"""Causal fidelity scores (``ctxadapter.evaluation.causal`` and ``.quad``) and quad's true
counterfactuals (``quad.counterfactual_latents``): hand cases, an oracle that edits perfectly,
and probes of features built by hand."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ctxadapter.data import quad
from ctxadapter.evaluation import (
    block_identifiability,
    counterfactual_success,
    quad_counterfactual_accuracy,
    quadrant_values,
)
from ctxadapter.evaluation.quad_counterfactuals import VALUE_LIMIT

# ------------------------------------------------------------------------ true counterfactuals


def test_counterfactual_latents_independent_maps_the_noise_at_its_quantile():
    _, latents = quad.sample("obs", 5, dependent=False, split="test")
    edited = quad.counterfactual_latents(latents, "quad2", dependent=False)
    j = quad.LATENT_NAMES.index("quad2")
    # do mean 1.47496736, do variance 1.35886756, observational variance 1.16426732
    expected = 1.47496736 + math.sqrt(1.35886756 / 1.16426732) * latents[:, j]
    np.testing.assert_allclose(edited[:, j], expected, rtol=1e-5)
    others = [i for i in range(8) if i != j]
    np.testing.assert_array_equal(edited[:, others], latents[:, others])
    np.testing.assert_allclose(quad.counterfactual_latents(latents, "obs"), latents, atol=1e-6)


def test_counterfactual_latents_dependent_moves_descendants_through_the_edges():
    _, latents = quad.sample("obs", 4, split="test")
    edited = quad.counterfactual_latents(latents, "quad4")
    name = {n: i for i, n in enumerate(quad.LATENT_NAMES)}
    d4 = edited[:, name["quad4"]] - latents[:, name["quad4"]]
    d3 = -0.72 * d4  # quad4 -> quad3
    d2 = 1.56 * d3  # quad3 -> quad2
    d1 = 1.34 * d4 - 1.23 * d2  # quad4 -> quad1 and quad2 -> quad1
    for var, delta in (("quad3", d3), ("quad2", d2), ("quad1", d1)):
        np.testing.assert_allclose(edited[:, name[var]] - latents[:, name[var]], delta, atol=1e-4)
    for var in ("size", "color", "shape", "orientation"):  # no descendants of quad4
        np.testing.assert_array_equal(edited[:, name[var]], latents[:, name[var]])
    with pytest.raises(ValueError, match=r"shape \[n, 8\]"):
        quad.counterfactual_latents(latents[:, :5], "quad4")


def test_counterfactuals_of_observational_samples_follow_the_interventional_distribution():
    _, observed = quad.sample("obs", 20000, split="test")
    _, intervened = quad.sample("quad3", 20000, split="validation")
    edited = quad.counterfactual_latents(observed, "quad3")
    standard_error = intervened.std(0) * math.sqrt(2 / len(observed))  # of the difference
    assert (np.abs(edited.mean(0) - intervened.mean(0)) < 4 * standard_error).all()
    np.testing.assert_allclose(edited.std(0), intervened.std(0), rtol=0.03)


# ---------------------------------------------------------------------------- scoring cases


def test_counterfactual_success_hand_cases():
    edit = torch.tensor([1.0, 0.4, 0.0, 0.2, -0.3, 2.0])
    true = torch.tensor([1.2, 1.0, 1.0, 0.0, 0.0, 1.0])
    out = counterfactual_success(edit, true, tolerance=0.25)
    # errors 0.2 (<= 0.6), 0.6 (> 0.5), 1.0 (> 0.5), 0.2 (<= 0.25), 0.3 (> 0.25), 1.0 (> 0.5)
    assert out["success"].tolist() == [True, False, False, True, False, False]
    torch.testing.assert_close(out["error"], torch.tensor([0.2, 0.6, 1.0, 0.2, 0.3, 1.0]))
    torch.testing.assert_close(out["no_edit_error"], true.abs())
    with pytest.raises(ValueError, match="must match"):
        counterfactual_success(edit, true[:3])


def _unit_images(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def test_quadrant_values_read_the_rendered_values_back():
    images, latents = quad.sample("obs", 200, split="test")
    read = quadrant_values(_unit_images(images))
    truth = torch.from_numpy(quad.standardize(latents)[:, :4]).clamp(-VALUE_LIMIT, VALUE_LIMIT)
    inner = truth.abs() < 2.5  # past that, an 8-bit level is a large step of the value
    assert (read - truth)[inner].abs().max() < 0.05
    assert read.abs().max() <= VALUE_LIMIT
    upscaled = nn.functional.interpolate(_unit_images(images[:8]), scale_factor=2)
    torch.testing.assert_close(quadrant_values(upscaled), read[:8], atol=1e-6, rtol=0)


class Oracle(nn.Module):
    """Edits quad images into their true counterfactual (``perfect``) or not at all."""

    def __init__(self, images: np.ndarray, latents: np.ndarray, perfect: bool):
        super().__init__()
        self.latents = {image.tobytes(): row for image, row in zip(images, latents, strict=True)}
        self.perfect, self.resolution = perfect, (64, 64)

    def counterfactual(self, pixels: torch.Tensor, context: str) -> torch.Tensor:
        keys = (pixels * 255).round().byte().permute(0, 2, 3, 1).numpy()
        rows = np.stack([self.latents[key.tobytes()] for key in keys])
        if self.perfect:
            rows = quad.counterfactual_latents(rows, context)
        return _unit_images(quad.latents_to_images(rows))


def test_quad_counterfactual_accuracy_of_a_perfect_and_of_a_null_edit():
    images, latents = quad.sample("obs", 40, split="test")
    perfect = quad_counterfactual_accuracy(Oracle(images, latents, True), images, latents)
    assert perfect["summary"]["success_all"] == 1.0
    assert perfect["summary"]["success_intervened"] == 1.0
    assert perfect["summary"]["mean_error"] < 0.02
    null = quad_counterfactual_accuracy(Oracle(images, latents, False), images, latents)
    summary = null["summary"]
    # an intervened quadrant moves by more than the tolerance unless clipped at VALUE_LIMIT
    assert summary["success_intervened"] < 0.2
    assert summary["mean_error"] == pytest.approx(summary["no_edit_error"], abs=0.01)
    # under size and orientation no quadrant moves, so not editing is right there
    assert null["per_concept"]["size"]["success_all"] == 1.0
    assert null["per_concept"]["size"]["success_intervened"] is None
    quad4 = null["per_concept"]["quad4"]
    assert quad4["quad4"]["mean_true_shift"] < -1  # quad4's do mean is -1.97 raw
    with pytest.raises(ValueError, match="equally many"):
        quad_counterfactual_accuracy(Oracle(images, latents, True), images, latents[:3])


# ----------------------------------------------------------------------- own-block probes


class Probed(nn.Module):
    """Its 'posterior concept values' are hand-built features of two concepts of width 2:
    block 0 holds ``a`` and ``a + b``, block 1 holds noise; ``a`` and ``b`` are written in
    pixel (0, 0) of channels 0 and 1."""

    def __init__(self):
        super().__init__()
        self.resolution = (4, 4)
        self.adapter = SimpleNamespace(
            concepts=["first", "second"],
            causal=SimpleNamespace(width=2),
            concepts_from_noise=lambda noise, context: noise,
        )

    def encode_noise(self, pixels: torch.Tensor) -> torch.Tensor:
        a, b = pixels[:, 0, 0, 0], pixels[:, 1, 0, 0]
        noise = pixels[:, 2, 1:3, 0]
        return torch.stack([a, a + b, noise[:, 0], noise[:, 1]], dim=1)


def test_block_identifiability_reads_own_and_other_blocks():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(300, 3, 4, 4, generator=generator)
    values = torch.stack([images[:, 0, 0, 0], images[:, 1, 0, 0]], dim=1)
    out = block_identifiability(Probed(), images, values)["per_concept"]
    assert out["first"]["own"] == pytest.approx(1, abs=1e-3)
    assert out["second"]["own"] < 0.05  # its own block is noise
    assert out["second"]["others"] == pytest.approx(1, abs=1e-3)  # (a + b) - a in block 0
    assert out["second"]["all"] == pytest.approx(1, abs=1e-3)
    with pytest.raises(ValueError, match=r"true_values must have shape \(300, 2\)"):
        block_identifiability(Probed(), images, values[:, :1])
