"""``ContextAutoencoder``: a frozen pretrained autoencoder with a trainable :class:`CtxAdapter`.

The objective, per sample (``spec/context-module.md``)::

    loss = reconstruction NLL + beta * KL(q(z | e) || N(0, I)) + causal penalty

- ``reconstruction="latent"``: Gaussian NLL of the encoder's model-space latent ``e`` given the
  adapter's ``e_hat``, with a learned scale, summed over latent entries. Needs no autoencoder
  pass, so it trains on cached latents.
- ``reconstruction="pixel"``: decode ``e_hat`` with the frozen decoder and take the Bernoulli NLL
  (binary cross-entropy summed over pixels and channels, images in ``[0, 1]``), as in the paper.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import diffusers
import torch
from torch import nn

from .adapter import CtxAdapter
from .codec import SUPPORTED_AUTOENCODERS, LatentCodec

PIXEL_EPS = 1e-4
"""Decoded pixels are clamped to ``[eps, 1 - eps]`` before the Bernoulli likelihood."""


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per sample: ``(N, D)`` -> ``(N,)`` nats."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


def base_model_record(autoencoder, pretrained_model_name_or_path: str, revision: str | None = None,
                      subfolder: str | None = None) -> dict:
    """What an adapter's config records about its base autoencoder (see :class:`CtxAdapter`)."""
    codec = LatentCodec(autoencoder)
    return dict(
        pretrained_model_name_or_path=str(pretrained_model_name_or_path),
        revision=revision,
        subfolder=subfolder,
        class_name=type(autoencoder).__name__,
        scaling_factor=codec.scaling_factor,
        shift_factor=codec.shift_factor,
    )


class ContextAutoencoder(nn.Module):
    """A frozen diffusers autoencoder (wrapped in a :class:`LatentCodec`) and a
    :class:`CtxAdapter` between its encoder and decoder.

    Args:
        autoencoder: ``AutoencoderKL`` or ``AutoencoderTiny``; frozen and kept in eval mode.
        adapter: the context module; its ``latent_shape`` must be a latent of this autoencoder.

    Images given to :meth:`reconstruct` and :meth:`counterfactual` may be anything diffusers'
    ``VaeImageProcessor`` takes (PIL images, arrays or tensors in ``[0, 1]``, tensors in
    ``[-1, 1]``) at the adapter's resolution. Images returned are ``(N, 3, H, W)`` floats in
    ``[0, 1]`` by default, a list of PIL images with ``output_type="pil"``, as in diffusers.
    Generation and editing use the modules' current mode: call ``.eval()`` after training
    (``from_pretrained`` returns an eval-mode model).
    """

    def __init__(self, autoencoder, adapter: CtxAdapter):
        super().__init__()
        if not isinstance(autoencoder, LatentCodec):
            autoencoder = LatentCodec(autoencoder)
        self.codec = autoencoder
        self.adapter = adapter
        channels, height, width = adapter.latent_shape
        factor = self.codec.downsample_factor
        if channels != self.codec.latent_channels:
            raise ValueError(
                f"The adapter's latent_shape {tuple(adapter.latent_shape)} does not match the "
                f"autoencoder, whose latents have shape ({self.codec.latent_channels}, H/{factor}, "
                f"W/{factor})."
            )
        self.resolution = (height * factor, width * factor)
        recorded = adapter.config["base_model"] or {}
        for key in ("scaling_factor", "shift_factor"):
            value = recorded.get(key)
            if value is not None and not math.isclose(value, getattr(self.codec, key)):
                raise ValueError(
                    f"The adapter was trained on latents with {key}={value}, but this autoencoder "
                    f"has {key}={getattr(self.codec, key)}."
                )

    # ------------------------------------------------------------------ training objective
    def forward(
        self,
        contexts,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        reconstruction: Literal["latent", "pixel"] = "latent",
        beta: float = 1.0,
        group_sparsity: float = 0.0,
        l2: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training loss for a batch; :meth:`loss` is the same.

        Args:
            contexts: one context for the batch or one per sample (see
                :func:`ctxadapter.contexts.context_mask`).
            pixel_values: images ``(N, 3, H, W)`` in ``[-1, 1]``; needed for ``pixel`` loss,
                or to encode when ``latents`` is not given.
            latents: cached model-space latents ``(N, C, h, w)`` (skips the encoder).
            reconstruction: ``"latent"`` or ``"pixel"``.
            beta: weight of the KL term.
            group_sparsity, l2: weights of the causal-layer regularisers.

        Returns:
            ``loss`` (scalar to minimise), ``reconstruction`` and ``kl`` (batch means of the
            per-sample terms, nats) and ``causal_penalty``.
        """
        if reconstruction not in ("latent", "pixel"):
            raise ValueError(f"reconstruction must be 'latent' or 'pixel', got {reconstruction!r}")
        if latents is None:
            if pixel_values is None:
                raise ValueError("Pass pixel_values (images in [-1, 1]) or cached latents.")
            latents = self.codec.encode(pixel_values)
        if reconstruction == "pixel" and pixel_values is None:
            raise ValueError("reconstruction='pixel' needs pixel_values, the target images.")
        mask = self.adapter.context_mask(contexts, latents.shape[0])
        out = self.adapter(latents, mask, generator=generator)
        if reconstruction == "latent":
            log_scale = self.adapter.latent_log_scale
            error = ((latents.to(out.latents.dtype) - out.latents) * torch.exp(-log_scale)).pow(2)
            nll = 0.5 * error.flatten(1).sum(dim=1)
            nll = nll + error[0].numel() * (log_scale + 0.5 * math.log(2 * math.pi))
        else:
            probs = ((self.codec.decode(out.latents) + 1) / 2).clamp(PIXEL_EPS, 1 - PIXEL_EPS)
            target = ((pixel_values.to(probs) + 1) / 2).clamp(0, 1)
            nll = nn.functional.binary_cross_entropy(probs, target, reduction="none")
            nll = nll.flatten(1).sum(dim=1)
        kl = gaussian_kl(out.mean, out.logvar)
        penalty = self.adapter.causal_penalty(mask, group_sparsity=group_sparsity, l2=l2)
        recon, kl = nll.mean(), kl.mean()
        return dict(loss=recon + beta * kl + penalty, reconstruction=recon, kl=kl,
                    causal_penalty=penalty)

    def loss(self, contexts, **kwargs) -> dict[str, torch.Tensor]:
        """Alias of :meth:`forward` (call the module itself inside a distributed wrapper)."""
        return self(contexts, **kwargs)

    # ------------------------------------------------------------------ using a trained adapter
    def _images_to_latents(self, images) -> torch.Tensor:
        pixels = self.codec.preprocess(images, *self.resolution)
        return self.codec.encode(pixels)

    def _check_resolution(self, images) -> None:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            if tuple(images.shape[-2:]) != self.resolution:
                raise ValueError(
                    f"Images of size {tuple(images.shape[-2:])} given, but this adapter works at "
                    f"{self.resolution} (latent_shape {tuple(self.adapter.latent_shape)} times "
                    f"the downsampling factor {self.codec.downsample_factor})."
                )

    @torch.no_grad()
    def generate(
        self,
        context,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        output_type: Literal["pt", "pil", "np"] = "pt",
    ) -> Any:
        """Sample images under one context: ``z ~ N(0, I)``, the layers under ``context``, the
        latent head, the frozen decoder.

        Args:
            context: ``"obs"``, a concept, or a composition (``"quad1+size"``, a tuple of names).
            num_samples: ``N``.
            generator: a ``torch.Generator`` for reproducible noise.
            output_type: ``"pt"`` (``(N, 3, H, W)`` in ``[0, 1]``), ``"np"`` or ``"pil"``.
        """
        if isinstance(context, list):
            context = tuple(context)
        z = self.adapter.sample_noise(num_samples, generator=generator)
        latents = self.adapter.latents_from_noise(z, context)
        return self.codec.postprocess(self.codec.decode(latents), output_type)

    @torch.no_grad()
    def reconstruct(self, images, contexts, output_type: Literal["pt", "pil", "np"] = "pt") -> Any:
        """Encode ``images``, take the posterior mean of the noise and decode it under
        ``contexts`` (one for all, or one per image)."""
        self._check_resolution(images)
        latents = self._images_to_latents(images)
        mean, _ = self.adapter.posterior(latents)
        decoded = self.codec.decode(self.adapter.latents_from_noise(mean, contexts))
        return self.codec.postprocess(decoded, output_type)

    def counterfactual(self, images, context, output_type: Literal["pt", "pil", "np"] = "pt"):
        """Counterfactual edit: the same noise (the posterior mean of each image), another
        context. The same computation as :meth:`reconstruct` with the new context."""
        if isinstance(context, list):
            context = tuple(context)
        return self.reconstruct(images, context, output_type)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory, **kwargs):
        """Save the adapter (never the base autoencoder); see :meth:`CtxAdapter.save_pretrained`."""
        return self.adapter.save_pretrained(save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Push the adapter folder to the Hub; see :meth:`CtxAdapter.push_to_hub`."""
        return self.adapter.push_to_hub(repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        autoencoder=None,
        torch_dtype: torch.dtype | None = None,
        **hub_kwargs,
    ) -> ContextAutoencoder:
        """Load an adapter (local folder or Hub id) and the base autoencoder its config records.

        Args:
            pretrained_model_name_or_path: the adapter's folder or Hub repository id.
            autoencoder: an already-loaded autoencoder to use instead of the recorded one.
            torch_dtype: dtype to load the base autoencoder in (the adapter stays float32).
            hub_kwargs: ``revision``, ``token``, ``cache_dir``, ``local_files_only``... for the
                adapter.
        """
        adapter = CtxAdapter.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if autoencoder is None:
            base = adapter.config["base_model"]
            if not base:
                raise ValueError(
                    f"The adapter {str(pretrained_model_name_or_path)!r} records no base "
                    f"autoencoder; pass one with autoencoder=."
                )
            supported = {c.__name__: c for c in SUPPORTED_AUTOENCODERS}
            if base["class_name"] not in supported:
                raise ValueError(
                    f"Unsupported base autoencoder class {base['class_name']!r}; supported: "
                    f"{sorted(supported)}."
                )
            autoencoder = getattr(diffusers, base["class_name"]).from_pretrained(
                base["pretrained_model_name_or_path"],
                revision=base.get("revision"),
                subfolder=base.get("subfolder"),
                torch_dtype=torch_dtype,
            )
        return cls(autoencoder, adapter).eval()
