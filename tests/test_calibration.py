"""Calibration (``ctxadapter.calibration``): each scope moves exactly the parameters it names
(with ``scope="interventions"`` the observational path is exactly unchanged), the distance to a
reachable target falls, a pooled adapter is fitted to its pooled latents, and bad input fails
before anything changes."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.calibration import calibrate
from ctxadapter.metrics import sliced_wasserstein
from ctxadapter.objective import Objective

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
    """Latents of ``context`` from a copy whose interventional exogenous weight is tripled: a
    target the interventional weights can reach."""
    target = copy.deepcopy(adapter)
    with torch.no_grad():
        target.exogenous.weight_ivn.mul_(3.0)
        z = torch.randn(n, adapter.noise_size, generator=torch.Generator().manual_seed(5))
        return target.latents_from_noise(z, context)


def generator_target(adapter: CtxAdapter, n: int = 512) -> dict[str, torch.Tensor]:
    """Latents of ``obs`` and ``b`` from a copy whose latent head is doubled: a target only the
    generator scope can reach (the interventional weights alone cannot move ``obs``)."""
    target = copy.deepcopy(adapter)
    with torch.no_grad():
        target.latent_head.weight.mul_(2.0)
        z = torch.randn(n, adapter.noise_size, generator=torch.Generator().manual_seed(6))
        return {name: target.latents_from_noise(z, name) for name in ("obs", "b")}


def calibrate_and_diff(adapter: CtxAdapter, latents, **kwargs) -> set[str]:
    """Run ``calibrate`` on a model holding ``adapter``; the names of the state entries that
    changed."""
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    losses = calibrate(SimpleNamespace(adapter=adapter), latents, **kwargs)
    assert len(losses) == kwargs["steps"] and all(loss >= 0 for loss in losses)
    return {k for k, v in adapter.state_dict().items() if not torch.equal(before[k], v)}


def test_interventions_scope_moves_only_interventional_weights_and_obs_is_unchanged():
    adapter = make_adapter()
    z = torch.randn(16, adapter.noise_size)
    latents = torch.randn(16, *SHAPE)
    with torch.no_grad():
        obs_before = adapter.latents_from_noise(z, "obs")
        posterior_before = adapter.posterior(latents)
    adapter.train()
    adapter.posterior_head.weight.requires_grad_(False)
    moved = calibrate_and_diff(
        adapter, {"a": target_latents(adapter, "a")}, steps=5, scope="interventions"
    )
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


def test_generator_scope_moves_the_generative_path_but_not_the_posterior():
    adapter = make_adapter()
    with torch.no_grad():  # weights outside the box: the generator scope projects both
        adapter.causal.weight_obs.add_(0.5)
    moved = calibrate_and_diff(adapter, generator_target(adapter), steps=5, posterior_steps=0)
    generative = {
        k
        for k in adapter.state_dict()
        if k.split(".")[0] in ("exogenous", "expressive", "causal", "latent_head")
        and "running" not in k
        and "num_batches" not in k
    }
    # every generative parameter but the interventional weights of concepts never intervened
    # on ("a", "c": their blocks of weight_ivn get no gradient) moves; nothing else does
    assert moved <= generative
    assert {"latent_head.weight", "exogenous.weight_obs", "causal.weight_obs"} <= moved
    assert not any(k.startswith("posterior_head") or "running" in k for k in moved)
    for weight in (adapter.causal.weight_obs, adapter.causal.weight_ivn):
        assert weight.min() >= 0 and weight.max() <= 1


def distance(adapter: CtxAdapter, targets: dict[str, torch.Tensor]) -> float:
    """Mean sliced W2 between fresh prior samples of each context and its target latents."""
    with torch.no_grad():
        z = torch.randn(2048, adapter.noise_size, generator=torch.Generator().manual_seed(9))
        return sum(
            sliced_wasserstein(adapter.latents_from_noise(z, name), real, 200).item()
            for name, real in targets.items()
        ) / len(targets)


@pytest.mark.parametrize(
    ("scope", "make_target", "factor"),
    [  # measured: 0.093 -> 0.058 and 0.202 -> 0.017
        ("interventions", lambda a: {n: target_latents(a, n, 2048) for n in ("a", "c")}, 0.7),
        ("generator", lambda a: generator_target(a, 2048), 0.25),
    ],
)
def test_distance_to_a_reachable_target_falls(scope, make_target, factor):
    adapter = make_adapter()
    targets = make_target(adapter)
    before = distance(adapter, targets)
    calibrate(
        SimpleNamespace(adapter=adapter),
        targets,
        steps=300,
        scope=scope,
        learning_rate=1e-2,
        batch_size=256,
        posterior_steps=0,
    )
    assert distance(adapter, targets) < factor * before


def test_interventions_scope_cannot_reach_an_observational_target():
    """The generator target moves ``obs``: the interventional weights alone leave ``obs`` where
    it was, the generator scope brings it close."""
    target = generator_target(make_adapter(), 2048)
    finals = {}
    for scope in ("interventions", "generator"):
        adapter = make_adapter()
        latents = target if scope == "generator" else {"b": target["b"]}
        calibrate(
            SimpleNamespace(adapter=adapter),
            latents,
            steps=200,
            scope=scope,
            learning_rate=1e-2,
            batch_size=256,
            posterior_steps=0,
        )
        finals[scope] = distance(adapter, {"obs": target["obs"]})
    assert finals["interventions"] == distance(make_adapter(), {"obs": target["obs"]})
    assert finals["generator"] < 0.25 * finals["interventions"]


def test_pooled_adapter_is_fitted_to_all_latents_as_one_observational_set():
    """A pooled adapter's target is the union of the contexts: with two contexts whose latents
    are constants -1 and +1, the fitted samples split into both values (the mixture), not their
    average."""
    adapter = make_adapter(pooled=True)
    latents = {"obs": torch.full((256, *SHAPE), -1.0), "a": torch.full((256, *SHAPE), 1.0)}
    calibrate(
        SimpleNamespace(adapter=adapter),
        latents,
        steps=400,
        learning_rate=1e-2,
        batch_size=256,
        posterior_steps=0,
    )
    with torch.no_grad():
        z = torch.randn(2000, adapter.noise_size, generator=torch.Generator().manual_seed(8))
        mean_value = adapter.latents_from_noise(z, "obs").flatten(1).mean(1)
    assert abs(mean_value.mean()) < 0.2  # half near -1, half near +1
    assert mean_value.abs().mean() > 0.6  # not all near 0


@pytest.mark.parametrize(
    ("latents", "scope", "match"),
    [
        ({}, "generator", "empty"),
        ({"obs": torch.zeros(4, *SHAPE)}, "interventions", "observational context never"),
        ({"d": torch.zeros(4, *SHAPE)}, "generator", "d"),
        ({"a": torch.zeros(4, 2, 2)}, "generator", r"expected latents of shape \(N, 2, 2, 2\)"),
        ({"a": torch.zeros(4, *SHAPE)}, "everything", "scope must be one of"),
    ],
)
def test_bad_input_fails_before_any_change(latents, scope, match):
    adapter = make_adapter()
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        calibrate(SimpleNamespace(adapter=adapter), latents, steps=3, scope=scope)
    assert all(torch.equal(before[k], v) for k, v in adapter.state_dict().items())


def test_pooled_interventions_and_bad_numbers_are_rejected():
    good = {"a": torch.zeros(4, *SHAPE)}
    pooled = SimpleNamespace(adapter=make_adapter(pooled=True))
    with pytest.raises(ValueError, match="pooled"):
        calibrate(pooled, good, scope="interventions")
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        calibrate(SimpleNamespace(adapter=make_adapter()), good, steps=0)
    with pytest.raises(ValueError, match="posterior_steps must be an integer >= 0, got -1"):
        calibrate(SimpleNamespace(adapter=make_adapter()), good, posterior_steps=-1)
    with pytest.raises(ValueError, match="learning_rate must be > 0, got 0.0"):
        calibrate(SimpleNamespace(adapter=make_adapter()), good, learning_rate=0.0)


def test_generator_scope_refits_the_posterior_to_the_moved_generator(tiny_kl_path):
    """Two calibrations from the same start and seed, without and with the refit: the
    generators come out identical, only the posterior heads differ, and the refitted model's
    own training loss is lower."""
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    latents = {
        name: torch.randn(256, 4, 4, 4, generator=torch.Generator().manual_seed(k)) + shift
        for k, (name, shift) in enumerate([("obs", 0.0), ("b", 2.0)])
    }
    everything = torch.cat(list(latents.values()))
    contexts = ["obs"] * 256 + ["b"] * 256
    states, losses = [], []
    for posterior_steps in (0, 200):
        torch.manual_seed(0)
        adapter = CtxAdapter(CONCEPTS, [4, 4, 4], exogenous_width=4, concept_width=2)
        model = ContextAutoencoder(vae, adapter).eval()
        calibrate(
            model,
            latents,
            steps=30,
            batch_size=64,
            posterior_steps=posterior_steps,
            objective=Objective(beta=4.0),
        )
        torch.manual_seed(1)
        with torch.no_grad():
            objective = Objective(beta=4.0)
            losses.append(model(contexts, latents=everything, objective=objective)["loss"].item())
        states.append(adapter.state_dict())
    changed = {k for k in states[0] if not torch.equal(states[0][k], states[1][k])}
    assert changed == {"posterior_head.weight", "posterior_head.bias"}
    assert losses[1] < losses[0] - 1.0
