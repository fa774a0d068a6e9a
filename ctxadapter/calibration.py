"""Calibration: a second training stage that fits a trained adapter's samples to its data
(not in the paper).

With the paper's objective the adapter's prior samples fall short of the data in two ways
(``docs/results.md``, findings 3, 13, 14 and 23): an intervention that *shifts* a concept's
mean is often learned by the noise posterior rather than by the context layers, so samples from
``z ~ N(0, I)`` under that context miss the shift; and the generative path is trained only
through posterior samples, so prior samples of every context stay further from the data than
the reconstructions. ``calibrate`` trains the generative path directly: it minimises the sliced
Wasserstein-2 distance between latents generated from the prior under each context and that
context's training latents. The module's semantics are unchanged: only parameter values move.

Two scopes:

- ``"interventions"``: only the interventional weights (``exogenous.weight_ivn`` and
  ``causal.weight_ivn``). Nothing the observational context uses changes, so observational
  samples, reconstructions and counterfactual encodings are exactly as before.
- ``"generator"``: every parameter between the noise and the latents (the three context layers
  and the latent head), fitted on every context given, ``obs`` included. The posterior head no
  longer matches the moved generator, so it is then refitted to it (``posterior_steps`` steps
  of the training objective with everything else frozen), which restores reconstructions and
  counterfactual encodings; samples do not depend on it. A pooled adapter is fitted to all
  the latents as one observational set: the ablation gets the same second stage.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .contexts import OBSERVATIONAL, context_name, parse_context
from .objective import Objective

SCOPES = ("interventions", "generator")


def _tuned_parameters(adapter, scope: str) -> list[torch.nn.Parameter]:
    """The parameters ``scope`` tunes (see the module docstring)."""
    if scope == "interventions":
        return [adapter.exogenous.weight_ivn, adapter.causal.weight_ivn]
    generator = (adapter.exogenous, adapter.expressive, adapter.causal, adapter.latent_head)
    return [p for module in generator for p in module.parameters()]


def _check_latents(adapter, latents: Mapping[str, Tensor], scope: str) -> dict[str, Tensor]:
    """Validate ``latents`` for ``scope``; returns canonical context name -> ``(N, D)``."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if adapter.pooled and scope == "interventions":
        raise ValueError(
            "a pooled adapter never uses its interventional weights: there is nothing to "
            "calibrate with scope='interventions' (use scope='generator')"
        )
    if not latents:
        raise ValueError("latents is empty: pass each training context's latents")
    flat: dict[str, Tensor] = {}
    for key, values in latents.items():
        context = parse_context(key, adapter.concepts)
        if scope == "interventions" and not context:
            raise ValueError(
                f"context {key!r}: the observational context never uses the interventional "
                "weights; pass interventions only with scope='interventions'"
            )
        expected = (values.shape[0], *adapter.latent_shape)
        if values.ndim != 4 or tuple(values.shape) != expected or values.shape[0] < 1:
            raise ValueError(
                f"context {key!r}: expected latents of shape (N, "
                f"{', '.join(map(str, adapter.latent_shape))}), got {tuple(values.shape)}"
            )
        flat[context_name(context)] = values.flatten(1)
    if adapter.pooled:  # labels ignored: one observational target, as in training
        return {OBSERVATIONAL: torch.cat(list(flat.values()))}
    return flat


def calibrate(
    model,
    latents: Mapping[str, Tensor],
    steps: int = 3000,
    scope: str = "generator",
    learning_rate: float = 1e-3,
    batch_size: int = 512,
    num_projections: int = 128,
    seed: int = 0,
    posterior_steps: int = 1000,
    objective: Objective | None = None,
    progress: bool = False,
) -> list[float]:
    """Fit the prior samples of ``model.adapter`` to ``latents`` in place; returns the losses.

    Every step draws, for each context of ``latents``, ``batch_size`` prior noises and
    ``batch_size`` of its latents (with replacement), generates latents from the noises under
    that context (all contexts in one mixed-context batch) and minimises the squared sliced
    Wasserstein-2 distance between generated and real latents along ``num_projections`` fresh
    random directions, averaged over the contexts. Adam, with the learning rate decayed from
    ``learning_rate`` to ``learning_rate / 100`` on a cosine; the causal box constraint is
    applied after every step. The adapter's ``requires_grad`` flags and mode are restored;
    BatchNorm runs with its stored statistics.

    Args:
        model: a trained ``ctxadapter.ContextAutoencoder``.
        latents: context name -> model-space latents ``(N, C, h, w)`` of that context's training
            images (e.g. from the latent cache). With ``scope="interventions"``, interventions
            only (``"obs"`` never uses the interventional weights).
        steps: optimizer steps.
        scope: ``"generator"`` (every parameter from noise to latents; the default) or
            ``"interventions"`` (only the interventional weights). See the module docstring.
        learning_rate: Adam's initial learning rate (of the calibration and of the refit;
            each decays on its own cosine).
        batch_size: generated and real latents per context and step.
        num_projections: random directions per step.
        seed: seed of the noise, the real-latent draws and the directions.
        posterior_steps: with ``scope="generator"``, steps of the posterior-head refit (0:
            none). A refit needs ``model`` to be a ``ContextAutoencoder``: its ``forward``
            gives the loss.
        objective: the ``ctxadapter.objective.Objective`` of the refit (the training run's;
            default: the paper's).
        progress: show a tqdm progress bar.

    Returns:
        The loss of every calibration step (squared SW2 per latent dimension, averaged over the
        contexts, before the step).
    """
    adapter = model.adapter
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if int(posterior_steps) != posterior_steps or posterior_steps < 0:
        raise ValueError(f"posterior_steps must be an integer >= 0, got {posterior_steps!r}")
    real = _check_latents(adapter, latents, scope)
    device, dtype = adapter.latent_log_scale.device, adapter.latent_log_scale.dtype
    real = {name: values.to(device, dtype) for name, values in real.items()}
    names = list(real)
    # the contexts of one step's generated rows, built once: block k is context names[k]
    rows = [name for name in names for _ in range(batch_size)]
    contexts = adapter.context_mask(rows, len(rows))
    dim = next(iter(real.values())).shape[1]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    tuned = _tuned_parameters(adapter, scope)
    flags = {p: p.requires_grad for p in adapter.parameters()}
    training = adapter.training
    losses = []
    try:
        adapter.eval()
        for p in adapter.parameters():
            p.requires_grad_(False)
        for p in tuned:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(tuned, lr=learning_rate)
        schedule = _cosine(optimizer, steps)
        for _ in tqdm(range(int(steps)), desc="Calibrating", disable=not progress):
            noise = torch.randn(len(contexts), adapter.noise_size, generator=generator)
            generated = adapter.latents_from_noise(noise.to(device, dtype), contexts)
            target = torch.stack(
                [
                    real[name][
                        torch.randint(0, len(real[name]), (batch_size,), generator=generator)
                    ]
                    for name in names
                ]
            )
            directions = torch.randn(dim, num_projections, generator=generator)
            directions = (directions / directions.norm(dim=0)).to(device, dtype)
            fake = (generated.view(len(names), batch_size, dim) @ directions).sort(dim=1).values
            loss = (fake - (target @ directions).sort(dim=1).values).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if scope == "generator":
                adapter.apply_constraints_()
            else:  # the box constraint on the tuned weight only: weight_obs stays as it was
                with torch.no_grad():
                    adapter.causal.weight_ivn.clamp_(0.0, 1.0)
            losses.append(loss.item())
        if scope == "generator" and posterior_steps:
            _refit_posterior(
                model,
                real,
                posterior_steps,
                learning_rate,
                batch_size,
                generator,
                objective,
            )
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        adapter.train(training)
    return losses


def _cosine(optimizer, steps: int) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """The schedule of both stages: over ``steps`` steps, a cosine from the optimizer's
    learning rate to 1/100 of it."""
    learning_rate = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=int(steps), eta_min=learning_rate / 100
    )


def _refit_posterior(model, real, steps, learning_rate, batch_size, generator, objective):
    """Fit only the posterior head to the (frozen) generator: Adam on ``model``'s own loss over
    batches of ``batch_size`` latents drawn from every context of ``real``, with the same
    learning-rate schedule as the calibration."""
    adapter = model.adapter
    for p in adapter.parameters():
        p.requires_grad_(False)
    head = list(adapter.posterior_head.parameters())
    for p in head:
        p.requires_grad_(True)
    latents = torch.cat(list(real.values())).view(-1, *adapter.latent_shape)
    names = [name for name, values in real.items() for _ in range(len(values))]
    contexts = adapter.context_mask(names, len(names))  # one mask row per latent, built once
    optimizer = torch.optim.Adam(head, lr=learning_rate)
    schedule = _cosine(optimizer, steps)
    for _ in range(int(steps)):
        rows = torch.randint(0, len(latents), (batch_size,), generator=generator)
        rows = rows.to(latents.device)
        out = model(contexts[rows], latents=latents[rows], objective=objective)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        schedule.step()
