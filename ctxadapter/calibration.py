"""Intervention calibration: a second training stage for a trained adapter (not in the paper).

With the paper's objective an intervention that *shifts* a concept's mean is often learned by
the noise posterior rather than by the context layers, so samples from ``z ~ N(0, I)`` under
that context miss the shift (``docs/results.md``, findings 3, 13 and 14).
``calibrate_interventions`` fixes this after training: it tunes only the interventional
weights (``exogenous.weight_ivn`` and ``causal.weight_ivn``) so that, for each single-concept
context, latents generated from the prior match that context's training latents in sliced
Wasserstein-2 distance. Nothing the observational context uses changes, so observational
samples and the posterior are exactly as before. The module's semantics are unchanged: only
the values of the interventional weights move.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .contexts import context_name, parse_context
from .metrics import random_projections


def calibrate_interventions(
    model,
    latents: Mapping[str, Tensor],
    steps: int = 1500,
    learning_rate: float = 1e-3,
    batch_size: int = 256,
    num_projections: int = 128,
    seed: int = 0,
) -> list[float]:
    """Tune the interventional weights of ``model.adapter`` in place; returns the losses.

    Each step takes the next context of ``latents`` in turn, draws ``batch_size`` prior noises
    and ``batch_size`` of its latents (with replacement), and minimises the squared sliced
    Wasserstein-2 distance between the generated and real latents along ``num_projections``
    fresh random directions (Adam, ``learning_rate``). The causal box constraint is applied to
    ``causal.weight_ivn`` after every step. The adapter's other parameters are left untouched
    and its ``requires_grad`` flags and mode are restored; BatchNorm runs with its stored
    statistics.

    Args:
        model: a trained ``ctxadapter.ContextAutoencoder`` (its adapter must not be pooled).
        latents: context name -> model-space latents ``(N, C, h, w)`` of that context's training
            images (e.g. from the latent cache). Single-concept interventions only: ``"obs"``
            never uses the interventional weights and compositions are held out.
        steps: optimizer steps (contexts taken in turn).
        learning_rate: Adam's learning rate.
        batch_size: generated and real latents per step.
        num_projections: random directions per step.
        seed: seed of the noise, the real-latent draws and the directions.

    Returns:
        The loss of every step (squared SW2 per latent dimension, before the step).
    """
    adapter = model.adapter
    if adapter.pooled:
        raise ValueError("a pooled adapter ignores contexts: there is nothing to calibrate")
    if not latents:
        raise ValueError("latents is empty: pass each intervened context's training latents")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    names: list[str] = []
    for key, values in latents.items():
        context = parse_context(key, adapter.concepts)
        if len(context) != 1:
            raise ValueError(
                f"context {key!r}: calibration takes single-concept interventions only "
                f"(one of {list(adapter.concepts)})"
            )
        expected = (values.shape[0], *adapter.latent_shape)
        if values.ndim != 4 or tuple(values.shape) != expected or values.shape[0] < 1:
            raise ValueError(
                f"context {key!r}: expected latents of shape (N, "
                f"{', '.join(map(str, adapter.latent_shape))}), got {tuple(values.shape)}"
            )
        names.append(context_name(context))
    device = adapter.latent_log_scale.device
    real = {
        n: v.flatten(1).to(device, adapter.latent_log_scale.dtype)
        for n, v in zip(names, latents.values(), strict=True)
    }
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    tuned = [adapter.exogenous.weight_ivn, adapter.causal.weight_ivn]
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
        dim = next(iter(real.values())).shape[1]
        for step in range(int(steps)):
            name = names[step % len(names)]
            noise = torch.randn(batch_size, adapter.noise_size, generator=generator)
            generated = adapter.latents_from_noise(noise.to(device), name).flatten(1)
            rows = torch.randint(0, real[name].shape[0], (batch_size,), generator=generator)
            directions = random_projections(
                dim, num_projections, int(torch.randint(0, 2**62, (), generator=generator))
            ).to(device, generated.dtype)
            fake_sorted = (generated @ directions.T).sort(dim=0).values
            real_sorted = (real[name][rows.to(device)] @ directions.T).sort(dim=0).values
            loss = (fake_sorted - real_sorted).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # the box constraint, on the tuned weight only
                adapter.causal.weight_ivn.clamp_(0.0, 1.0)
            losses.append(loss.item())
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        adapter.train(training)
    return losses
