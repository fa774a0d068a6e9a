"""Scores against the quad dataset's causal structure (``ctxadapter.evaluation.quad``): hand cases
with constant-colour images, and a smoke test on a tiny autoencoder (random weights)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from ctxadapter import ContextAutoencoder, CtxAdapter, evaluation
from ctxadapter.data import quad, quad_render
from ctxadapter.evaluation.causal import graph_auroc
from ctxadapter.evaluation.quad import (
    CORNER_RADIUS,
    QUADRANTS,
    corner_masks,
    counterfactual_shifts,
)

GREY = (0.5, 0.5, 0.5)
# The quadrants as quad_render.render paints them: rows, columns.
SLICES = {
    "quad1": (slice(32, 64), slice(0, 32)),
    "quad2": (slice(32, 64), slice(32, 64)),
    "quad3": (slice(0, 32), slice(0, 32)),
    "quad4": (slice(0, 32), slice(32, 64)),
}
# What the fake model's counterfactual paints under each context (the rest stays grey).
EDITS = {
    "quad1": {"quad1": (1.0, 0.0, 0.0)},
    "quad2": {"quad2": (0.5, 0.75, 0.5), "quad4": (0.6, 0.5, 0.5), "quad1": (0.5, 0.5, 0.8)},
}


# ---------------------------------------------------------------------------------------------
# graph_auroc


def test_graph_auroc_hand_case_with_a_tie():
    # Off-diagonal magnitudes: (0,1) .3, (0,2) .8, (1,0) .1, (1,2) .5, (2,0) .2, (2,1) .5.
    graph = torch.tensor([[9.0, 0.3, -0.8], [0.1, 9.0, 0.5], [-0.2, 0.5, 9.0]])
    truth = torch.zeros(3, 3, dtype=torch.bool)
    truth[0, 1] = truth[2, 1] = True
    # Positives .3 and .5 against negatives .8, .1, .5, .2: .3 beats 2; .5 beats 2, ties 1.
    assert graph_auroc(graph, truth) == pytest.approx(4.5 / 8)
    # 0/1 truth and numpy input give the same; the diagonal plays no part.
    graph[0, 0] = -100.0
    assert graph_auroc(graph.numpy(), truth.int()) == pytest.approx(4.5 / 8)


def test_graph_auroc_perfect_reversed_and_all_ties():
    truth = quad.ancestral_relation()
    assert graph_auroc(truth.float() * -2.0 + 0.1, truth) == 1.0  # magnitudes, not signs
    assert graph_auroc(1.0 - truth.float(), truth) == 0.0
    assert graph_auroc(torch.ones(6, 6), truth) == 0.5


@pytest.mark.parametrize(
    ("graph", "truth", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), r"square .* shape \(2, 3\)"),
        (torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool), r"K >= 2"),
        (torch.zeros(3, 3), torch.zeros(4, 4, dtype=torch.bool), r"\(4, 4\), the graph \(3, 3\)"),
        (torch.zeros(3, 3), torch.eye(3, dtype=torch.bool), "0 positives and 6 negatives"),
        (torch.zeros(3, 3), torch.ones(3, 3, dtype=torch.bool), "6 positives and 0 negatives"),
        (torch.zeros(3, 3), torch.full((3, 3), 2), r"bool or 0/1, got values \[2\]"),
        (torch.full((3, 3), math.nan), torch.ones(3, 3, dtype=torch.bool), "non-finite"),
    ],
)
def test_graph_auroc_errors(graph, truth, message):
    with pytest.raises(ValueError, match=message):
        graph_auroc(graph, truth)


# ---------------------------------------------------------------------------------------------
# corner regions


def test_corner_regions_avoid_every_shape():
    masks = corner_masks((64, 64))
    assert masks["quad1"][63, 0] and masks["quad2"][63, 63]
    assert masks["quad3"][0, 0] and masks["quad4"][0, 63]
    assert not any(mask[0, 31] or mask[31, 0] for mask in masks.values())  # 31.5 px < 34
    total = torch.stack(list(masks.values())).sum(0)
    assert total.max() == 1  # disjoint
    for name, (rows, cols) in SLICES.items():  # each inside its own quadrant
        assert masks[name].sum() == masks[name][rows, cols].sum() > 0
    # Largest shapes (s = 48), magenta on red, at several angles: none reaches a corner region.
    for shape in (0.0, 1 / 3, 2 / 3, 1.0):
        for orientation in (0.0, 0.0625, 0.125, 0.3):
            values = np.array([[0, 0, 0, 0, 1.0, 1.0, shape, orientation]])
            image = quad_render.render(values)[0]
            painted = torch.from_numpy(np.all(image == (255, 0, 255), axis=-1))
            assert painted.any() and not (painted & (total > 0)).any()
    assert CORNER_RADIUS > 24 * math.sqrt(2)


def test_corner_regions_scale_with_the_resolution():
    masks = corner_masks((32, 32))
    assert masks["quad3"][0, 0] and not masks["quad3"][15, 15]
    torch.testing.assert_close(masks["quad4"], masks["quad3"].flip(1))
    torch.testing.assert_close(masks["quad1"], masks["quad3"].flip(0))
    torch.testing.assert_close(masks["quad2"], masks["quad3"].flip(0, 1))


# ---------------------------------------------------------------------------------------------
# counterfactual_shifts on a fake model with constant-colour images


def paint(n: int, colours: dict, uint8: bool = False) -> torch.Tensor:
    """``n`` grey images (N, 3, 64, 64) in [0, 1] with ``colours`` (quadrant -> RGB) painted
    and a white disc of radius 33 at the centre (inside every shape's reach, so ignored)."""
    images = torch.tensor(GREY).view(1, 3, 1, 1).repeat(n, 1, 64, 64)
    for name, rgb in colours.items():
        rows, cols = SLICES[name]
        images[:, :, rows, cols] = torch.tensor(rgb).view(1, 3, 1, 1)
    offsets = torch.arange(64) + 0.5 - 32
    images[:, :, offsets[:, None] ** 2 + offsets[None, :] ** 2 <= 33**2] = 1.0
    if uint8:
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return images


class FakeModel(torch.nn.Module):
    """The unedited reference (under ``obs``) is grey; the edit under ``q`` paints
    ``EDITS[q]``. Records its inputs."""

    resolution = (64, 64)

    def __init__(self):
        super().__init__()
        self.inputs, self.calls = [], []

    def counterfactual(self, images, context):
        if context == "obs":  # the unedited reference
            self.inputs.append(images)
        self.calls.append(("counterfactual", context, len(images), self.training))
        return paint(len(images), EDITS.get(context, {}))


def fake_inputs():
    # Real obs: black with a blue quad3 (uint8, channels last); real do(quad1): grey with a red
    # quad1 (floats); real do(quad2): black with a green quad2 (uint8).
    obs = paint(5, {"quad3": (0, 0, 1)} | {q: (0, 0, 0) for q in ("quad1", "quad2", "quad4")}, True)
    real = {
        "quad1": paint(3, {"quad1": (1, 0, 0)}),
        "quad2": paint(
            4, {"quad2": (0, 1, 0)} | {q: (0, 0, 0) for q in ("quad1", "quad3", "quad4")}, True
        ),
    }
    return obs, real


@pytest.mark.parametrize("dependent", [True, False])
def test_counterfactual_shifts_hand_case(dependent):
    model = FakeModel().train()
    obs, real = fake_inputs()
    out = counterfactual_shifts(
        model, obs, real, concepts=("quad1", "quad2"), dependent=dependent, batch_size=2
    )
    json.dumps(out, allow_nan=False)
    assert model.training  # mode restored; the calls ran in eval mode, 3 batches of 5 images
    assert [c[:3] for c in model.calls[:3]] == [
        ("counterfactual", "obs", 2),
        ("counterfactual", "quad1", 2),
        ("counterfactual", "quad2", 2),
    ]
    assert len(model.calls) == 9 and not any(c[3] for c in model.calls)
    torch.testing.assert_close(torch.cat(model.inputs), obs.permute(0, 3, 1, 2).float() / 255)

    quad1, quad2 = out["shifts"]["quad1"], out["shifts"]["quad2"]
    for q in ("quad1", "quad2"):
        for r in QUADRANTS:
            assert out["shifts"][q][r]["recon"] == pytest.approx(GREY)
            assert out["shifts"][q][r]["real_obs"] == pytest.approx((0, 0, float(r == "quad3")))
    # do(quad1): the edit paints quad1 red like the real images, nothing else moves.
    assert quad1["quad1"]["edit"] == quad1["quad1"]["real_do"] == pytest.approx((1, 0, 0))
    assert quad1["quad1"]["moved"] == pytest.approx(1.0)
    assert quad1["quad1"]["drift"] == pytest.approx(math.sqrt(0.25 + 0.25 + 0.25))
    for r in ("quad2", "quad3", "quad4"):
        assert quad1[r]["real_do"] == pytest.approx(GREY)
        assert quad1[r]["moved"] is None  # the real images do not move there either
        assert quad1[r]["drift"] == 0.0
    # do(quad2): real target (0, 1, 0) everywhere black but quad2, from grey (-.5, +-.5, -.5).
    assert quad2["quad2"]["real_do"] == pytest.approx((0, 1, 0))
    assert quad2["quad2"]["moved"] == pytest.approx(0.125 / 0.75)  # (0, .25, 0) . (-.5, .5, -.5)
    assert quad2["quad4"]["moved"] == pytest.approx(-0.05 / 0.75)  # (.1, 0, 0) . (-.5, -.5, -.5)
    assert quad2["quad1"]["moved"] == pytest.approx(-0.15 / 0.75)
    assert quad2["quad3"]["moved"] == 0.0
    assert quad2["quad4"]["drift"] == pytest.approx(0.1)
    assert quad2["quad1"]["drift"] == pytest.approx(0.3)

    summary = out["summary"]
    assert summary["quad1"]["moved"] == pytest.approx(1.0)
    assert summary["quad1"]["non_descendants"] == ["quad2", "quad3", "quad4"]
    assert summary["quad1"]["max_drift"] == 0.0
    assert summary["quad2"]["moved"] == pytest.approx(1 / 6)
    # quad1 is a descendant of quad2 in the dependent SCM: its drift of 0.3 is allowed there.
    others = ["quad3", "quad4"] if dependent else ["quad1", "quad3", "quad4"]
    assert summary["quad2"]["non_descendants"] == others
    assert summary["quad2"]["max_drift"] == pytest.approx(0.1 if dependent else 0.3)
    assert out["num_obs_images"] == 5 and out["num_do_images"] == {"quad1": 3, "quad2": 4}
    assert out["resolution"] == [64, 64] and out["dependent"] is dependent


def test_counterfactual_shifts_errors():
    model, (obs, real) = FakeModel(), fake_inputs()
    with pytest.raises(ValueError, match="no images of context 'quad3'"):
        counterfactual_shifts(model, obs, real, concepts=("quad3",))
    with pytest.raises(ValueError, match="unknown concept 'color'"):
        counterfactual_shifts(model, obs, real, concepts=("color",))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        counterfactual_shifts(model, obs, real, concepts=("quad1",), batch_size=0)
    with pytest.raises(ValueError, match="obs_images is empty"):
        counterfactual_shifts(model, obs[:0], real, concepts=("quad1",))


# ---------------------------------------------------------------------------------------------
# a tiny real model


def test_counterfactual_shifts_and_graph_auroc_on_a_tiny_model(tiny_kl_path):
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    torch.manual_seed(0)
    adapter = CtxAdapter(
        list(quad.CONCEPTS), latent_shape=[4, 4, 4], exogenous_width=4, concept_width=2
    )
    model = ContextAutoencoder(vae, adapter).eval()  # 32 x 32: the 64 x 64 images are resized
    real = evaluation.heldout_quad_images(3, contexts=["obs", *QUADRANTS, "size"])
    out = evaluation.counterfactual_shifts(
        model, real["obs"], real, concepts=(*QUADRANTS, "size"), batch_size=2
    )
    json.dumps(out, allow_nan=False)
    assert set(out["shifts"]) == {*QUADRANTS, "size"} and out["resolution"] == [32, 32]
    for per_region in out["shifts"].values():
        assert set(per_region) == set(QUADRANTS)
        for entry in per_region.values():
            for key in ("recon", "edit", "real_obs", "real_do"):
                assert len(entry[key]) == 3 and all(0 <= v <= 1 for v in entry[key])
            assert entry["moved"] is None or math.isfinite(entry["moved"])
            assert math.isfinite(entry["drift"]) and entry["drift"] >= 0
    assert out["summary"]["quad4"]["non_descendants"] == []  # all quadrants descend from quad4
    assert out["summary"]["quad4"]["max_drift"] is None
    assert out["summary"]["size"]["moved"] is None  # size colours no quadrant
    assert out["summary"]["size"]["non_descendants"] == list(QUADRANTS)
    # The unedited reference's mean colour, by hand from the model's own output.
    pixels = evaluation.prepare_images(real["obs"], (32, 32))  # resized: floats in [0, 1]
    assert pixels.dtype == torch.float32
    mask = corner_masks((32, 32))["quad2"]
    recon = model.counterfactual(pixels, "obs")[:, :, mask].mean(dim=(0, 2))
    assert out["shifts"]["quad1"]["quad2"]["recon"] == pytest.approx(recon.tolist(), abs=1e-5)

    auroc = evaluation.graph_auroc(adapter.concept_graph(), quad.ancestral_relation())
    assert 0.0 <= auroc <= 1.0
