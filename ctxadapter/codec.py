"""Latent codec: a frozen diffusers autoencoder as a map between images and model-space latents.

Images are ``(N, 3, H, W)`` tensors in ``[-1, 1]`` (the diffusers convention). Model-space latents
are ``(N, C, H / f, W / f)`` float32 tensors, where ``f`` is the downsampling factor: the latents
a diffusion model of that autoencoder sees, normalised as the family's diffusers pipelines do,
before any packing into transformer tokens. For every supported family the map from the raw
autoencoder latent (the posterior mean, or the encoder's deterministic latent) is::

    model = ((patchify(raw) - latents_mean) / latents_std - shift_factor) * scaling_factor
    raw = unpatchify((model / scaling_factor + shift_factor) * latents_std + latents_mean)

per channel, with ``scaling_factor`` and ``shift_factor`` read from the config (missing or
``None``: 1 and 0), ``latents_mean`` / ``latents_std`` from the config's per-channel statistics
(Qwen-Image, Wan, Playground-style SDXL VAEs) or, for ``AutoencoderKLFlux2``, from its latent
batch-norm running statistics (``std = sqrt(running_var + batch_norm_eps)``), and ``patchify``
the identity except for ``AutoencoderKLFlux2``, whose pipeline folds every 2 x 2 latent patch
into channels before normalising (so its model space has ``4 x 32`` channels at ``f = 16``).

Video autoencoders whose image pipelines encode single frames (``AutoencoderKLQwenImage``,
``AutoencoderKLWan``, ``AutoencoderKLHunyuanImageRefiner``) are run on ``(N, C, 1, H, W)``
tensors; their latent frame axis is dropped, so the rest of the library sees 4-D latents.

``AUTOENCODER_FAMILIES`` says how each supported class is driven; ``UNSUPPORTED_AUTOENCODERS``
why the other diffusers autoencoders are refused (both in ``ctxadapter.families``, re-exported
here with ``load_autoencoder``). ``docs/variants.md`` tabulates the families.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import diffusers
import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor

from .families import (
    AUTOENCODER_FAMILIES,
    SUPPORTED_AUTOENCODERS,
    UNSUPPORTED_AUTOENCODERS,
    AutoencoderFamily,
    Geometry,
    channel_statistics,
    config_normalisation,
    family_of,
    full_config,
    refusal,
)

__all__ = [
    "AUTOENCODER_FAMILIES",
    "SUPPORTED_AUTOENCODERS",
    "UNSUPPORTED_AUTOENCODERS",
    "AutoencoderFamily",
    "Geometry",
    "LatentCodec",
    "load_autoencoder",
]


def load_autoencoder(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    subfolder: str | None = None,
    **hub_kwargs,
):
    """Load the diffusers autoencoder named by its config's ``_class_name`` (``AutoencoderKL``
    when the config names none), if ``LatentCodec`` supports it.

    The class and its config are checked before any weights are read.

    Args:
        name_or_path: a Hub repository id or a local folder.
        revision: the Hub revision.
        subfolder: the folder of the autoencoder inside the repository (e.g. ``"vae"``).
        hub_kwargs: passed on to ``from_pretrained`` (``torch_dtype``, ``token``,
            ``cache_dir``, ``local_files_only``...); the download options also to
            ``load_config``.

    Raises:
        ValueError: if the config names a class outside ``AUTOENCODER_FAMILIES`` (with the
            reason for the diffusers autoencoders in ``UNSUPPORTED_AUTOENCODERS``), or a config
            ``LatentCodec`` would refuse.
        OSError: if there is no such autoencoder (as ``from_pretrained`` raises).
    """
    config = diffusers.AutoencoderKL.load_config(
        name_or_path, revision=revision, subfolder=subfolder, **hub_kwargs
    )
    class_name = config.get("_class_name", "AutoencoderKL")
    reason = refusal(class_name)
    if reason is not None:
        raise ValueError(f"{str(name_or_path)!r} is a {class_name}; {reason}.")
    cls = getattr(diffusers, class_name)
    family = AUTOENCODER_FAMILIES[class_name]
    full = full_config(cls, config)
    geometry = family.geometry(full)
    if not family.batch_norm_stats:
        config_normalisation(class_name, full, geometry.latent_channels)
    return cls.from_pretrained(name_or_path, revision=revision, subfolder=subfolder, **hub_kwargs)


def _pair(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    height, width = resolution
    return int(height), int(width)


def _patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(N, C * p * p, h / p, w / p)``, channel ``c * p * p + i * p + j``
    holding pixel ``(i, j)`` of each patch (``Flux2Pipeline._patchify_latents``)."""
    if p == 1:
        return latents
    n, c, h, w = latents.shape
    latents = latents.view(n, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
    return latents.reshape(n, c * p * p, h // p, w // p)


def _unpatchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of ``_patchify`` (``Flux2Pipeline._unpatchify_latents``)."""
    if p == 1:
        return latents
    n, c, h, w = latents.shape
    latents = latents.reshape(n, c // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3)
    return latents.reshape(n, c // (p * p), h * p, w * p)


class LatentCodec(torch.nn.Module):
    """A frozen diffusers image autoencoder: images <-> model-space latents.

    The autoencoder is registered as the submodule ``autoencoder``, its parameters are frozen
    (``requires_grad=False``) and it stays in eval mode whatever ``train()`` is called with.
    Moving the codec (``.to(device, dtype)``) moves the autoencoder; inputs are cast to the
    autoencoder's device and dtype, outputs are float32 on that device.

    Attributes:
        family: the ``AutoencoderFamily`` of the autoencoder's class.
        scaling_factor, shift_factor: the config's scalar factors (1 and 0 where it has none).
        latents_mean, latents_std: ``(C,)`` float32 per-channel statistics of model-space
            channels (config or batch-norm statistics), or ``None``.
        latent_patch_size: the side of the latent patches folded into channels (1 but for
            ``AutoencoderKLFlux2``).
        latent_channels, downsample_factor: of the model-space latents ``(C, H / f, W / f)``.
        in_channels, out_channels: of the images.

    Args:
        autoencoder: an instance of one of ``SUPPORTED_AUTOENCODERS`` (``AutoencoderKL``, the
            SD / SDXL / SD3 / FLUX.1 VAEs; ``AutoencoderTiny``, TAESD; ``AutoencoderDC``, SANA;
            ``AutoencoderKLFlux2``; ``AutoencoderKLQwenImage``; ``AutoencoderKLWan``;
            ``AutoencoderKLHunyuanImage`` and its refiner's; ``AsymmetricAutoencoderKL``;
            ``AutoencoderKLKVAE``; ``VQModel``) or of a subclass.

    Raises:
        TypeError: if ``autoencoder`` is of no known diffusers autoencoder class.
        ValueError: if it is a diffusers autoencoder that cannot be supported (the message gives
            the reason), or its config is inconsistent (e.g. a non-positive ``scaling_factor``,
            statistics of the wrong length, encoder and decoder resolutions that do not match).
    """

    def __init__(self, autoencoder) -> None:
        super().__init__()
        self.family = family_of(autoencoder)
        class_name = self.family.class_name
        config = autoencoder.config
        geometry = self.family.geometry(config)
        self.latent_patch_size = p = self.family.latent_patch(config)
        self.latent_channels = int(geometry.latent_channels) * p * p
        self.downsample_factor = int(geometry.downsample_factor) * p
        self.in_channels = int(geometry.image_channels)
        self.out_channels = int(geometry.out_channels)

        norm = config_normalisation(class_name, config, geometry.latent_channels)
        mean, std = norm.latents_mean, norm.latents_std
        if self.family.batch_norm_stats:
            bn = autoencoder.bn
            mean, std = channel_statistics(
                class_name,
                "bn.running",
                bn.running_mean,
                torch.sqrt(bn.running_var.float() + config.batch_norm_eps),
                self.latent_channels,
            )
        self.scaling_factor = norm.scaling_factor
        self.shift_factor = norm.shift_factor
        self.latents_mean, self.latents_std = mean, std
        # model = (raw - offset) * scale, per model-space channel.
        mean = torch.zeros(self.latent_channels) if mean is None else mean
        std = torch.ones(self.latent_channels) if std is None else std
        self._offset = (mean + self.shift_factor * std).view(1, -1, 1, 1)
        self._scale = (self.scaling_factor / std).view(1, -1, 1, 1)

        autoencoder.requires_grad_(False)
        autoencoder.eval()
        self.autoencoder = autoencoder
        # VaeImageProcessor passes tensors with `vae_latent_channels` channels through untouched
        # (as latents); never let that swallow 3-channel images (e.g. a 3-channel-latent VAE).
        passthrough = self.latent_channels if self.latent_channels != self.in_channels else 0
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.downsample_factor,
            vae_latent_channels=passthrough,
            do_convert_rgb=True,
        )

    # -- module state -------------------------------------------------------------------------

    def train(self, mode: bool = True) -> LatentCodec:
        """Set the codec's mode; the frozen autoencoder always stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The autoencoder's parameter dtype (what inputs are cast to)."""
        return self.autoencoder.dtype

    @property
    def device(self) -> torch.device:
        """The autoencoder's device (where inputs are moved to)."""
        return self.autoencoder.device

    @property
    def has_posterior(self) -> bool:
        """Whether the encoder gives a posterior (``encode_distribution`` returns a logvar)."""
        return self.family.encoder_output == "latent_dist"

    # -- shapes ---------------------------------------------------------------------------------

    def latent_shape(self, resolution: int | tuple[int, int]) -> tuple[int, int, int]:
        """Latent shape ``(C, H / f, W / f)`` for images of ``resolution`` (``H`` or ``(H, W)``).

        Raises:
            ValueError: if a side is not a positive multiple of the downsampling factor ``f``.
        """
        height, width = _pair(resolution)
        f = self.downsample_factor
        for side in (height, width):
            if side <= 0 or side % f:
                raise ValueError(
                    f"resolution {resolution!r} must be a positive multiple of the autoencoder's "
                    f"downsampling factor {f}"
                )
        return self.latent_channels, height // f, width // f

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (N, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        self.latent_shape((images.shape[2], images.shape[3]))

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents of shape (N, {self.latent_channels}, h, w), "
                f"got {tuple(latents.shape)}"
            )

    def _from_frames(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.family.frames:
            return tensor
        if tensor.ndim != 5 or tensor.shape[2] != 1:
            raise RuntimeError(
                f"{self.family.class_name} returned {tuple(tensor.shape)} for a single frame"
            )
        return tensor[:, :, 0]

    # -- encode / decode -------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images to deterministic model-space latents (no gradient: the encoder is frozen).

        Args:
            images: ``(N, 3, H, W)`` float in ``[-1, 1]``; ``H`` and ``W`` multiples of
                ``downsample_factor``.

        Returns:
            ``(N, C, H / f, W / f)`` float32: the normalised posterior mean (``latent_dist``
            families) or deterministic latent (``AutoencoderTiny``, ``AutoencoderDC``,
            ``VQModel``; before quantisation), as in the module docstring.
        """
        return self.encode_distribution(images)[0]

    @torch.no_grad()
    def encode_distribution(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode images to the posterior ``(mean, logvar)`` in model space (for a latent cache).

        Args:
            images: ``(N, 3, H, W)`` float in ``[-1, 1]``.

        Returns:
            ``mean``: ``(N, C, h, w)`` float32, as ``encode``. ``logvar``: ``(N, C, h, w)``
            float32 log-variance of the normalised posterior, ``patchify(logvar) + 2 * log(s)``
            with ``s = scaling_factor / latents_std`` per channel (diffusers clamps the raw
            logvar to ``[-30, 20]``); ``None`` where ``has_posterior`` is false (the encoder is
            deterministic).
        """
        self._check_images(images)
        x = images.to(device=self.device, dtype=self.dtype)
        if self.family.frames:
            x = x.unsqueeze(2)
        output = self.autoencoder.encode(x)
        p = self.latent_patch_size
        scale = self._scale.to(x.device)
        if self.has_posterior:
            posterior = output.latent_dist
            raw, logvar = posterior.mean, posterior.logvar
            logvar = _patchify(self._from_frames(logvar).float(), p) + 2.0 * torch.log(scale)
            logvar = logvar.contiguous()
        else:
            raw, logvar = getattr(output, self.family.encoder_output), None
        raw = _patchify(self._from_frames(raw).float(), p)
        return ((raw - self._offset.to(x.device)) * scale).contiguous(), logvar

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode model-space latents to images; differentiable with respect to ``latents``.

        Args:
            latents: ``(N, C, h, w)`` model-space latents (any float dtype).

        Returns:
            ``(N, 3, h * f, w * f)`` float32, nominally in ``[-1, 1]``. This is the autoencoder's
            own decoder output, not clamped here (as in diffusers; the Qwen-Image and Wan
            decoders clamp it themselves, and a ``VQModel`` quantises the latents first, as its
            ``decode`` does); clamp or ``postprocess`` for display.
        """
        self._check_latents(latents)
        raw = latents / self._scale.to(latents.device) + self._offset.to(latents.device)
        raw = _unpatchify(raw, self.latent_patch_size)
        raw = raw.to(device=self.device, dtype=self.dtype)
        if self.family.frames:
            raw = raw.unsqueeze(2)
        return self._from_frames(self.autoencoder.decode(raw).sample).float()

    # -- image I/O ---------------------------------------------------------------------------------

    def preprocess(
        self,
        images: PipelineImageInput,
        height: int | None = None,
        width: int | None = None,
        resize_mode: Literal["default", "fill", "crop"] = "default",
    ) -> torch.Tensor:
        """PIL images / numpy ``(N, H, W, 3)`` / tensors ``(N, 3, H, W)`` in ``[0, 1]`` -> tensor.

        Goes through ``self.image_processor`` (a ``VaeImageProcessor``): PIL images are converted
        to RGB, and everything is resized to ``(height, width)`` or, by default, down to the
        nearest multiple of ``downsample_factor``.

        Returns:
            ``(N, 3, H, W)`` float32 in ``[-1, 1]`` on the CPU.
        """
        return self.image_processor.preprocess(
            images, height=height, width=width, resize_mode=resize_mode
        ).float()

    def postprocess(
        self, images: torch.Tensor, output_type: Literal["pt", "pil", "np"] = "pt"
    ) -> Any:
        """Decoded images ``(N, 3, H, W)`` in ``[-1, 1]`` -> display form (clamped to ``[0, 1]``).

        Args:
            images: e.g. the output of ``decode`` (detached here).
            output_type: ``"pt"``: ``(N, 3, H, W)`` float tensor in ``[0, 1]``; ``"np"``:
                ``(N, H, W, 3)`` float32 array in ``[0, 1]``; ``"pil"``: list of PIL images.
        """
        if output_type not in ("pt", "pil", "np"):
            raise ValueError(f"output_type must be 'pt', 'pil' or 'np', got {output_type!r}")
        return self.image_processor.postprocess(images.detach().float(), output_type=output_type)
