"""``ContextAutoencoder``: a frozen pretrained autoencoder with a trainable ``CtxAdapter``.

Calling the model gives the training loss of a batch (``ctxadapter.objective.Objective``);
its methods generate, reconstruct and edit images. ``eval_mode`` runs a block in eval mode
without gradients and restores the modes afterwards (for evaluation and pictures).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from .adapter import CtxAdapter
from .codec import LatentCodec
from .domain import DOMAIN_SAMPLE, check_domain, reconstruction_mse
from .hub import push_adapter
from .images import model_input
from .lora import add_decoder_lora, load_decoder_lora, save_decoder_lora
from .objective import Objective
from .pinning import check_base_record, check_given_autoencoder, load_base_model

DECODE_BATCH_SIZE = 64
"""Latents decoded at once by ``generate``, ``reconstruct`` and ``counterfactual`` (each takes
``decode_batch_size=`` to change it)."""

BASE_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "proxies")
"""Keyword arguments of ``ContextAutoencoder.from_pretrained`` passed on to the base
autoencoder's ``from_pretrained`` as well as to the adapter's."""


def _check_edit(mode: str, strength: float) -> None:
    """Refuse an unknown counterfactual ``mode`` or a ``strength`` that is not a finite number
    at least 0, naming the value."""
    if mode not in ("residual", "decode"):
        raise ValueError(f"mode must be 'residual' or 'decode', got {mode!r}")
    if not (isinstance(strength, (int, float)) and 0 <= strength < math.inf):
        raise ValueError(f"strength must be a finite number at least 0, got {strength!r}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode and disable gradients for the ``with`` block; restore every
    submodule's previous mode afterwards (even if the block raises).

    ``with eval_mode(model): images = model.generate("a", 8)`` leaves a model that was training
    still training, with the same modes in every submodule.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


class ContextAutoencoder(nn.Module):
    """A frozen diffusers autoencoder (wrapped in a ``LatentCodec``) and a
    ``CtxAdapter`` between its encoder and decoder.

    Args:
        autoencoder: a diffusers image autoencoder (any family ``LatentCodec`` supports) or a
            ``LatentCodec``; frozen and kept in eval mode.
        adapter: the context module; its ``latent_shape`` must be a latent of this autoencoder.

    Images given to ``reconstruct`` and ``counterfactual`` are PIL images (any mode; 16-bit
    ones are scaled, not clipped), ``uint8`` tensors or arrays in ``[0, 255]``, or finite
    float tensors ``(N, 3, H, W)`` or arrays ``(N, H, W, 3)`` in ``[0, 1]`` (or ``[-1, 1]``, as
    diffusers reads them); all go through ``ctxadapter.images.model_input``, so images of
    another size are resized and centre-cropped as the training data is. Images returned are
    ``(N, 3, H, W)`` floats in ``[0, 1]`` by default, a list of PIL images with
    ``output_type="pil"``, as in diffusers.

    A context argument is one context for the whole batch (``"obs"``, ``"quad1"``, a
    composition ``"quad1+size"`` or a tuple of names) or a *list* with one context per sample,
    in every method alike (the diffusers habit for prompts).
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
        check_base_record(adapter.config["base_model"], self.codec)
        self.name_or_path: str | None = None
        """The folder or Hub id ``from_pretrained`` loaded the adapter from (else ``None``)."""

    @property
    def device(self) -> torch.device:
        """The adapter's device: where noise is drawn and what a ``torch.Generator`` for
        ``generate`` must live on (the autoencoder's is ``codec.device``)."""
        return self.adapter.latent_log_scale.device

    @property
    def dtype(self) -> torch.dtype:
        """The adapter's parameter dtype (float32 unless cast; the autoencoder's, which
        ``from_pretrained(torch_dtype=...)`` sets, is ``codec.dtype``)."""
        return self.adapter.latent_log_scale.dtype

    # ------------------------------------------------------------------ training objective
    def forward(
        self,
        contexts,
        pixel_values: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        objective: Objective | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training loss of a batch under ``objective`` (default: ``Objective()``, the loss
        ``examples/finetune.py`` trains with); see ``ctxadapter.objective.Objective`` for the
        arguments and the result."""
        return (objective or Objective())(self, contexts, latents, pixel_values, generator)

    def loss(self, contexts, **kwargs) -> dict[str, torch.Tensor]:
        """Alias of ``forward`` (call the module itself inside a distributed wrapper)."""
        return self(contexts, **kwargs)

    # ------------------------------------------------------------------ using a trained adapter
    def _pixels(self, images) -> torch.Tensor:
        """Images (``model_input``) -> ``(N, 3, H, W)`` float32 in ``[-1, 1]`` at the adapter's
        resolution."""
        return self.codec.preprocess(model_input(images, self.resolution), *self.resolution)

    def _encode(self, images, contexts="obs") -> tuple[torch.Tensor, torch.Tensor]:
        """Images (``model_input``) of ``contexts`` -> their latents and posterior mean noise,
        in the adapter's dtype; warns when the images are far outside the training domain
        (``ctxadapter.domain``)."""
        pixels = self._pixels(images)
        latents = self.codec.encode(pixels)
        recorded = (self.adapter.config["base_model"] or {}).get("reconstruction_mse")
        if recorded:
            sample = slice(0, DOMAIN_SAMPLE)
            check_domain(recorded, reconstruction_mse(self.codec, pixels[sample], latents[sample]))
        latents = latents.to(self.device, self.dtype)
        return latents, self.adapter.posterior(latents, contexts)[0]

    @torch.no_grad()
    def encode_noise(self, images, contexts="obs") -> torch.Tensor:
        """The posterior mean of the noise of ``images`` (the class docstring says which forms
        they may take) of ``contexts`` (one for all, or a list with one per image):
        ``(N, K*w_in)``, what ``reconstruct`` and ``counterfactual`` feed the context layers."""
        return self._encode(images, contexts)[1]

    def _decode(self, latents: torch.Tensor, output_type: str, decode_batch_size: int) -> Any:
        """Model-space latents -> images in ``output_type``, ``decode_batch_size`` at a time;
        an fp16 autoencoder whose config says ``force_upcast`` decodes in float32, as diffusers
        pipelines do. ``output_type="latent"`` returns the latents themselves."""
        if output_type == "latent":
            return latents
        if output_type not in ("pt", "pil", "np"):
            raise ValueError(
                f"output_type must be 'pt', 'pil', 'np' or 'latent', got {output_type!r}"
            )
        if decode_batch_size < 1:
            raise ValueError(f"decode_batch_size must be >= 1, got {decode_batch_size}")
        vae = self.codec.autoencoder
        upcast = self.codec.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.float()
        try:
            images = torch.cat(
                [self.codec.decode(chunk) for chunk in latents.split(decode_batch_size)]
            )
        finally:
            if upcast:
                vae.half()
        return self.codec.postprocess(images, output_type)

    def _noise(self, num_samples: int, generator) -> torch.Tensor:
        """Prior noise for ``num_samples`` samples: from one generator, or one per sample."""
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if isinstance(generator, list):
            if len(generator) != num_samples:
                raise ValueError(
                    f"Got {len(generator)} generators for {num_samples} samples: pass one "
                    f"generator, or one per sample."
                )
            return torch.cat([self.adapter.sample_noise(1, generator=g) for g in generator])
        return self.adapter.sample_noise(num_samples, generator=generator)

    @torch.no_grad()
    def generate(
        self,
        context,
        num_samples: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: Literal["pt", "pil", "np", "latent"] = "pt",
        decode_batch_size: int = DECODE_BATCH_SIZE,
    ) -> Any:
        """Sample images: ``z ~ N(0, I)``, the layers under ``context``, the latent head, the
        frozen decoder.

        Args:
            context: one context for every sample (``"obs"``, a concept, a composition
                ``"quad1+size"`` or a tuple of names), or a list with one context per sample.
            num_samples: ``N``.
            generator: a ``torch.Generator`` for reproducible noise, or a list of ``N`` (sample
                ``n`` then depends on generator ``n`` only, as in diffusers pipelines).
            output_type: ``"pt"`` (``(N, 3, H, W)`` in ``[0, 1]``), ``"np"``, ``"pil"``, or
                ``"latent"`` (the model-space latents ``(N, C, h, w)``, not decoded).
            decode_batch_size: latents decoded at once (bounds the decoder's memory).
        """
        z = self._noise(num_samples, generator)
        latents = self.adapter.latents_from_noise(z, context)
        return self._decode(latents, output_type, decode_batch_size)

    @torch.no_grad()
    def reconstruct(
        self,
        images,
        contexts,
        output_type: Literal["pt", "pil", "np", "latent"] = "pt",
        decode_batch_size: int = DECODE_BATCH_SIZE,
    ) -> Any:
        """Encode ``images`` of ``contexts`` (one for all, or a list with one per image), take
        the posterior mean of the noise (inferred under each image's context when the adapter
        has ``posterior_context``) and decode it under the same contexts."""
        _, mean = self._encode(images, contexts)
        return self._decode(
            self.adapter.latents_from_noise(mean, contexts), output_type, decode_batch_size
        )

    @torch.no_grad()
    def counterfactual(
        self,
        images,
        context,
        source_context="obs",
        mode: Literal["residual", "decode"] = "residual",
        strength: float = 1.0,
        output_type: Literal["pt", "pil", "np", "latent"] = "pt",
        decode_batch_size: int = DECODE_BATCH_SIZE,
    ) -> Any:
        """Counterfactual edit: the same noise (the posterior mean of each image, inferred under
        ``source_context``), another context.

        Args:
            images: the images to edit (see the class docstring).
            context: the new context: one for all images (a composition is ``"a+b"`` or a
                tuple of names), or a list with one per image.
            source_context: the context the images come from (``"obs"`` for ordinary images);
                one for all, or a list with one per image. An adapter with
                ``posterior_context`` infers the noise under it.
            mode: ``"residual"`` (default) adds to each image's own latent ``e`` only the change
                that the new context makes, ``e + head(c_new) - head(c_source)``, so that the
                edit keeps what the adapter does not model and an edit under ``source_context``
                is the autoencoder's own reconstruction; ``"decode"`` decodes ``head(c_new)``
                alone (the paper's edit: the reconstruction under the new context).
            strength: how far the edit goes along the change the new context makes: the latent
                is ``start + strength * (head(c_new) - head(c_source))``, where ``start`` is
                ``e`` (``"residual"``) or ``head(c_source)`` (``"decode"``). ``1`` is the
                adapter's own edit, ``0`` no edit; above ``1`` exaggerates it (for faint
                edits), at the cost of fidelity. A finite number at least 0.
            output_type: ``"pt"``, ``"np"``, ``"pil"`` or ``"latent"``.
            decode_batch_size: latents decoded at once.
        """
        _check_edit(mode, strength)
        latents = self._encode(images)[0]
        edited = self.edit_latents(latents, context, source_context, mode, strength)
        return self._decode(edited, output_type, decode_batch_size)

    def edit_latents(
        self,
        latents: torch.Tensor,
        context,
        source_context="obs",
        mode: Literal["residual", "decode"] = "residual",
        strength: float = 1.0,
    ) -> torch.Tensor:
        """``counterfactual`` on model-space latents ``(B, C, h, w)`` (``codec.encode``'s),
        returning the edited latents: encode once, edit under many contexts."""
        _check_edit(mode, strength)
        mean = self.adapter.posterior(latents, source_context)[0]
        target = self.adapter.latents_from_noise(mean, context)
        if strength == 1 and mode == "decode":  # the paper's edit, exactly
            return target
        source = self.adapter.latents_from_noise(mean, source_context)
        start = latents if mode == "residual" else source
        return start + strength * (target - source)

    # ------------------------------------------------------------------ decoder LoRA
    def add_decoder_lora(
        self, rank: int, alpha: float | None = None, target_modules: list[str] | None = None
    ) -> None:
        """Add a LoRA (peft) to the frozen decoder: the paper's fine-tune variant, trained with
        ``pixel`` loss (``ctxadapter.lora.add_decoder_lora``). Only the LoRA weights train;
        they are saved beside the adapter (``decoder_lora.safetensors``) and recorded in its
        config. ``AutoencoderKL`` only."""
        settings = add_decoder_lora(self.codec.autoencoder, rank, alpha, target_modules)
        self.adapter.config["decoder_lora"] = settings

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(
        self, save_directory, *, config: dict | None = None, model_card_kwargs=None, **kwargs
    ) -> None:
        """Save the adapter folder: the adapter (never the base autoencoder; see
        ``CtxAdapter.save_pretrained``, which takes ``config`` and ``kwargs``) and, if there is
        one, the decoder LoRA's weights. The model card's usage snippet loads
        ``save_directory`` unless ``model_card_kwargs`` names a ``repo_id``."""
        card = {"repo_id": os.fspath(save_directory), **(model_card_kwargs or {})}
        self.adapter.save_pretrained(
            save_directory, config=config, model_card_kwargs=card, **kwargs
        )
        if self.adapter.config["decoder_lora"]:
            save_decoder_lora(self.codec.autoencoder, save_directory)

    push_to_hub = push_adapter
    """Save the adapter folder and upload it to the Hub: ``model.push_to_hub(repo_id, ...)``
    (``ctxadapter.hub.push_adapter`` documents the arguments)."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        autoencoder=None,
        torch_dtype: torch.dtype | None = None,
        check_base: bool = True,
        **hub_kwargs,
    ) -> ContextAutoencoder:
        """Load an adapter (local folder or Hub id) and the base autoencoder its config records.

        Args:
            pretrained_model_name_or_path: the adapter's folder or Hub repository id.
            autoencoder: an already-loaded autoencoder to use instead of the recorded one; its
                weights (or the files it was loaded from) must have the fingerprint the adapter
                records (``check_base``).
            torch_dtype: dtype to load the base autoencoder in (the adapter stays float32).
            check_base: refuse a recorded base whose weights files, or an ``autoencoder``
                whose weights, do not have the fingerprint the adapter records
                (``ctxadapter.pinning``); ``False`` skips the check.
            hub_kwargs: ``revision``, ``token``, ``cache_dir``, ``local_files_only``... for the
                adapter; all but ``revision`` go to the base autoencoder too (whose revision
                is the one the adapter records).
        """
        adapter = CtxAdapter.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        given = autoencoder is not None
        if not given:
            base = adapter.config["base_model"]
            if not base:
                raise ValueError(
                    f"The adapter {str(pretrained_model_name_or_path)!r} records no base "
                    f"autoencoder; pass one with autoencoder=."
                )
            base_kwargs = {k: v for k, v in hub_kwargs.items() if k in BASE_HUB_KWARGS}
            autoencoder = load_base_model(base, torch_dtype, check_base, **base_kwargs)
        model = cls(autoencoder, adapter)
        if given and check_base:
            check_given_autoencoder(adapter.config["base_model"], model.codec.autoencoder)
        model.name_or_path = os.fspath(pretrained_model_name_or_path)
        if adapter.config["decoder_lora"]:
            load_decoder_lora(
                model.codec.autoencoder,
                adapter.config["decoder_lora"],
                pretrained_model_name_or_path,
                **hub_kwargs,
            )
        return model.eval()
