"""Intervention calibration (``ctxadapter.calibration``): only the interventional weights move,
the observational path is exactly unchanged, the distance to a reachable target falls, and bad
input fails before anything changes."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from ctxadapter import CtxAdapter
from ctxadapter.calibration import calibrate_interventions

CONCEPTS = ["a", "b", "c"]
SHAPE = [2, 2, 2]


def make_adapter(seed: int = 0, **kwargs) -> CtxAdapter:
    torch.manual_seed(seed)
    adapter = CtxAdapter(CONCEPTS, SHAPE, exogenous_width=4, concept_width=2, **kwargs)
    with torch.no_grad():  # stored BatchNorm statistics that are not the identity
        for module in adapter.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return adapter.eval()


def target_latents(adapter: CtxAdapter, context: str, n: int = 512) -> torch.Tensor:
    """Latents of ``context`` from a copy whose interventional exogenous weight is doubled: a
    target the calibration can reach exactly."""
    target = copy.deepcopy(adapter)
    with torch.no_grad():
        target.exogenous.weight_ivn.mul_(2.0)
        z = torch.randn(n, adapter.noise_size, generator=torch.Generator().manual_seed(5))
        return target.latents_from_noise(z, context)


def test_only_interventional_weights_move_and_obs_is_unchanged():
    adapter = make_adapter()
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    z = torch.randn(16, adapter.noise_size)
    latents = torch.randn(16, *SHAPE)
    with torch.no_grad():
        obs_before = adapter.latents_from_noise(z, "obs")
        posterior_before = adapter.posterior(latents)
    adapter.train()
    adapter.posterior_head.weight.requires_grad_(False)
    losses = calibrate_interventions(
        SimpleNamespace(adapter=adapter), {"a": target_latents(adapter, "a")}, steps=5
    )
    assert len(losses) == 5 and all(loss >= 0 for loss in losses)
    after = adapter.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert "exogenous.weight_ivn" in moved
    assert moved <= {"exogenous.weight_ivn", "causal.weight_ivn"}
    # modes and requires_grad flags are restored
    assert adapter.training
    assert not adapter.posterior_head.weight.requires_grad
    assert adapter.exogenous.weight_ivn.requires_grad and adapter.causal.weight_obs.requires_grad
    adapter.eval()
    with torch.no_grad():
        assert torch.equal(adapter.latents_from_noise(z, "obs"), obs_before)
        for new, old in zip(adapter.posterior(latents), posterior_before, strict=True):
            assert torch.equal(new, old)
    # the causal box constraint holds after the steps
    assert adapter.causal.weight_ivn.min() >= 0 and adapter.causal.weight_ivn.max() <= 1


def test_distance_to_a_reachable_target_falls():
    adapter = make_adapter()
    targets = {name: target_latents(adapter, name) for name in ("a", "c")}
    losses = calibrate_interventions(
        SimpleNamespace(adapter=adapter), targets, steps=300, learning_rate=1e-2, batch_size=256
    )
    first = sum(losses[:20]) / 20
    last = sum(losses[-20:]) / 20
    assert last < 0.5 * first


@pytest.mark.parametrize(
    ("latents", "match"),
    [
        ({}, "empty"),
        ({"obs": torch.zeros(4, *SHAPE)}, "single-concept"),
        ({"a+b": torch.zeros(4, *SHAPE)}, "single-concept"),
        ({"d": torch.zeros(4, *SHAPE)}, "d"),
        ({"a": torch.zeros(4, 2, 2)}, r"expected latents of shape \(N, 2, 2, 2\)"),
    ],
)
def test_bad_input_fails_before_any_change(latents, match):
    adapter = make_adapter()
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        calibrate_interventions(SimpleNamespace(adapter=adapter), latents, steps=3)
    assert all(torch.equal(before[k], v) for k, v in adapter.state_dict().items())


def test_pooled_adapter_and_bad_steps_are_rejected():
    good = {"a": torch.zeros(4, *SHAPE)}
    with pytest.raises(ValueError, match="pooled"):
        calibrate_interventions(SimpleNamespace(adapter=make_adapter(pooled=True)), good)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        calibrate_interventions(SimpleNamespace(adapter=make_adapter()), good, steps=0)
