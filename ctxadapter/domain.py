"""Whether images lie inside an adapter's training domain.

At the end of training, ``finetune`` records in the adapter's ``base_model`` record the base
autoencoder's reconstruction error on the validation images (``"reconstruction_mse"``: the
mean squared error per pixel on the ``[0, 1]`` scale). Images given to the adapter later
(``ContextAutoencoder.reconstruct`` and ``counterfactual``; the first ``DOMAIN_SAMPLE`` of
each call, one more decoder pass) are measured the same way, and
``check_domain`` warns when their error is more than ``DOMAIN_TOLERANCE`` times the recorded
one: a photo given to an adapter trained on quad patterns, say, whose edits would be garbage.
"""

from __future__ import annotations

import warnings

import torch

from .codec import LatentCodec

DOMAIN_TOLERANCE = 4.0
"""How many times the recorded reconstruction error images may reach before a warning."""
DOMAIN_IMAGES = 64
"""Validation images whose reconstruction error is recorded at the end of training."""
DOMAIN_SAMPLE = 8
"""Images of a call to ``reconstruct`` or ``counterfactual`` whose error is measured."""


class OutOfDomainWarning(UserWarning):
    """Images far outside the training domain of an adapter."""


@torch.no_grad()
def reconstruction_mse(
    codec: LatentCodec, pixels: torch.Tensor, latents: torch.Tensor | None = None
) -> float:
    """Mean squared error per pixel, on the ``[0, 1]`` scale, between ``pixels`` (``(N, 3, H,
    W)`` in ``[-1, 1]``) and their reconstruction by the autoencoder of ``codec`` (decoded from
    ``latents``, their ``codec.encode``, when given)."""
    pixels = pixels.to(codec.device, torch.float32)
    latents = codec.encode(pixels) if latents is None else latents
    decoded = codec.decode(latents.to(codec.device)).float().clamp(-1, 1)
    return ((decoded - pixels) / 2).pow(2).mean().item()


def check_domain(recorded: float | None, measured: float) -> None:
    """Warn (``OutOfDomainWarning``, naming both values) when the ``measured`` reconstruction
    error of some images is more than ``DOMAIN_TOLERANCE`` times the ``recorded`` one of the
    adapter's validation images; nothing when no error was recorded."""
    if recorded and measured > DOMAIN_TOLERANCE * recorded:
        warnings.warn(
            f"These images look far outside this adapter's training domain: the base "
            f"autoencoder reconstructs them with a mean squared error of {measured:.3g} per "
            f"pixel, {measured / recorded:.0f} times the {recorded:.3g} recorded on the "
            f"validation images at training time. Expect poor reconstructions and edits.",
            OutOfDomainWarning,
            stacklevel=2,
        )
