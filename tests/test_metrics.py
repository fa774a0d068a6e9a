"""Tests for ctxadapter.evaluation.metrics: hand-computable cases."""

from __future__ import annotations

import math

import pytest
import torch

from ctxadapter.evaluation.metrics import (
    ConceptCompoScores,
    concept_compo_scores,
    mse,
    psnr,
    recon_bits_per_pixel,
)
from ctxadapter.evaluation.wasserstein import sliced_wasserstein

# --------------------------------------------------------------------------------------------
# concept_compo_scores
# --------------------------------------------------------------------------------------------


def _images(n: int, offset: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64) * 0.5 + offset).clamp(0, 1)


def test_concept_compo_means_over_the_right_contexts() -> None:
    contexts = ["obs", "quad1", "quad2", "quad1+quad2", "quad1+size"]
    real = {c: _images(20, 0.1 * i, seed=i) for i, c in enumerate(contexts)}
    generated = {c: _images(20, 0.1 * i + 0.05, seed=10 + i) for i, c in enumerate(contexts)}
    scores = concept_compo_scores(real, generated, num_projections=25, seed=3)
    assert isinstance(scores, ConceptCompoScores)
    # every context uses the same projections: equal to the stand-alone call with the same seed
    for c in contexts:
        expected = sliced_wasserstein(real[c], generated[c], num_projections=25, seed=3)
        assert scores.per_context[c] == pytest.approx(float(expected), rel=1e-12)
    pc = scores.per_context
    assert scores.concept_contexts == ("obs", "quad1", "quad2")
    assert scores.compo_contexts == ("quad1+quad2", "quad1+size")
    assert scores.concept == pytest.approx((pc["obs"] + pc["quad1"] + pc["quad2"]) / 3)
    assert scores.compo == pytest.approx((pc["quad1+quad2"] + pc["quad1+size"]) / 2)
    assert scores.num_images == {c: 20 for c in contexts}
    assert scores.num_projections == 25
    assert scores.seed == 3
    d = scores.to_dict()
    assert d["concept"] == scores.concept and d["num_projections"] == 25

    # explicit held-out compositions: the other "+" context enters neither mean
    only = concept_compo_scores(real, generated, compositions=["quad1+size"], num_projections=25)
    assert only.compo == pytest.approx(only.per_context["quad1+size"])
    assert only.concept_contexts == ("obs", "quad1", "quad2")
    assert "quad1+quad2" in only.per_context


def test_concept_compo_truncates_to_equal_sizes() -> None:
    real = {"obs": _images(30, 0.0, 1), "a+b": _images(12, 0.2, 2)}
    generated = {"obs": _images(25, 0.1, 3), "a+b": _images(40, 0.3, 4)}
    scores = concept_compo_scores(real, generated, num_projections=10)
    assert scores.num_images == {"obs": 25, "a+b": 12}
    expected = sliced_wasserstein(real["obs"][:25], generated["obs"][:25], num_projections=10)
    assert scores.per_context["obs"] == pytest.approx(float(expected))
    assert scores.concept == scores.per_context["obs"]
    capped = concept_compo_scores(real, generated, num_projections=10, max_images=5)
    assert capped.num_images == {"obs": 5, "a+b": 5}


def test_concept_compo_no_compositions() -> None:
    real = {"obs": _images(8, 0.0, 1)}
    scores = concept_compo_scores(real, {"obs": real["obs"]}, num_projections=5)
    assert scores.concept == 0.0
    assert scores.compo is None


def test_concept_compo_errors() -> None:
    real = {"obs": _images(8, 0.0, 1), "a": _images(8, 0.0, 2)}
    with pytest.raises(ValueError, match="'a'"):
        concept_compo_scores(real, {"obs": real["obs"]})
    with pytest.raises(ValueError, match="x\\+y"):
        concept_compo_scores(real, dict(real), compositions=["x+y"])
    with pytest.raises(ValueError, match="'a'"):
        concept_compo_scores(real, dict(real), compositions=["a"])
    with pytest.raises(ValueError, match="context 'a'.*48.*3"):
        concept_compo_scores(real, {"obs": real["obs"], "a": torch.rand(8, 3)})
    with pytest.raises(ValueError, match="num_projections.*-1"):
        concept_compo_scores(real, dict(real), num_projections=-1)


# --------------------------------------------------------------------------------------------
# Recon, PSNR, MSE
# --------------------------------------------------------------------------------------------


def test_bits_per_pixel_hand_case() -> None:
    # Each pixel: target 0.5, prob 0.5 -> BCE = -(0.5 ln 0.5 + 0.5 ln 0.5) = ln 2 nats.
    # 1x2x2 image: 4 ln 2 nats / (H*W*ln 2 = 4 ln 2) = 1 bit per pixel.
    half = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    assert float(recon_bits_per_pixel(half, half)) == pytest.approx(1.0)
    # 3x2x2: 12 ln 2 nats, channels not in the denominator -> 3 bits per pixel.
    half3 = torch.full((2, 3, 2, 2), 0.5, dtype=torch.float64)
    assert float(recon_bits_per_pixel(half3, half3)) == pytest.approx(3.0)
    # channels-last layout gives the same
    half3_last = half3.permute(0, 2, 3, 1)
    assert float(recon_bits_per_pixel(half3_last, half3_last, channels_last=True)) == (
        pytest.approx(3.0)
    )
    # KL adds kl / (H*W*ln 2) per image, averaged over the batch.
    kl = torch.tensor([4 * math.log(2), 8 * math.log(2)], dtype=torch.float64)
    # per image: 3 + 1 and 3 + 2 -> mean 4.5
    assert float(recon_bits_per_pixel(half3, half3, kl=kl)) == pytest.approx(4.5)
    none = recon_bits_per_pixel(half3, half3, kl=kl, reduction="none")
    assert none.tolist() == pytest.approx([4.0, 5.0])
    assert float(recon_bits_per_pixel(half3, half3, kl=4 * math.log(2))) == pytest.approx(4.0)


def test_bits_per_pixel_binary_targets_and_clamp() -> None:
    # target 1 with prob 0.25: -ln 0.25 = 2 ln 2 nats -> 2 bits per pixel (1 channel).
    target = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    probs = torch.full_like(target, 0.25)
    assert float(recon_bits_per_pixel(probs, target)) == pytest.approx(2.0)
    # prob exactly 0 on a target 1 is clamped to eps: -ln(1e-6) / ln 2 bits, finite.
    got = recon_bits_per_pixel(torch.zeros_like(target), target)
    assert float(got) == pytest.approx(-math.log(1e-6) / math.log(2), rel=1e-6)


def test_bits_per_pixel_errors() -> None:
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="probs must be in"):
        recon_bits_per_pixel(x * 2 - 1, x)
    with pytest.raises(ValueError, match="target must be in"):
        recon_bits_per_pixel(x, x + 1.5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 4, 5\)"):
        recon_bits_per_pixel(x, torch.rand(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        recon_bits_per_pixel(x, x, kl=torch.zeros(3))


def test_psnr_and_mse() -> None:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x + 0.1  # no clipping: MSE = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB
    assert float(mse(x, y)) == pytest.approx(0.01)
    assert float(psnr(x, y)) == pytest.approx(20.0)
    # data_range 2 (images in [-1, 1]): 10 log10(4 / 0.01) = 20 + 20 log10(2)
    assert float(psnr(x, y, data_range=2.0)) == pytest.approx(20 + 20 * math.log10(2))
    # per-image average: errors 0.1 and 0.01 -> PSNR 20 and 40 -> mean 30
    a = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    b = torch.stack([a[0] + 0.1, a[1] + 0.01])
    assert float(psnr(a, b)) == pytest.approx(30.0)
    assert float(psnr(x, x)) == pytest.approx(100.0)  # MIN_MSE: finite for identical images
    assert psnr(x, y, reduction="none").tolist() == pytest.approx([20.0] * len(x))
    xu = (x * 255).round().to(torch.uint8)
    assert float(mse(xu, xu.float() / 255)) == 0.0
    with pytest.raises(ValueError, match=r"\(4, 3, 8, 8\).*\(4, 3, 8, 7\)"):
        psnr(x, torch.rand(4, 3, 8, 7))
    with pytest.raises(ValueError, match="empty"):
        mse(torch.rand(0, 3), torch.rand(0, 3))
