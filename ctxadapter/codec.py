"""Latent codec: a frozen diffusers autoencoder as a map between images and model-space latents.

Images are ``(N, 3, H, W)`` tensors in ``[-1, 1]`` (the diffusers convention). Model-space latents
are ``(N, C, H / f, W / f)`` float32 tensors, where ``f`` is the autoencoder's downsampling factor
and the affine map from the raw autoencoder latents is the one diffusers pipelines use::

    model = (raw - shift_factor) * scaling_factor
    raw = model / scaling_factor + shift_factor

with both factors read from ``autoencoder.config`` (``shift_factor`` missing or ``None`` -> 0).
The same map is applied to ``AutoencoderKL`` (posterior mean) and ``AutoencoderTiny`` (whose
``latents`` are a distilled approximation of the matching KL latents; ``scaling_factor`` is 1.0 and
``shift_factor`` 0.0 for TAESD, 1.5305 / 0.0609 for TAESD3 / TAEF1).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor

__all__ = ["SUPPORTED_AUTOENCODERS", "LatentCodec", "load_autoencoder"]

SUPPORTED_AUTOENCODERS = (AutoencoderKL, AutoencoderTiny)
"""The diffusers autoencoder classes a ``LatentCodec`` (and so a ``ContextAutoencoder``) wraps."""


def load_autoencoder(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    subfolder: str | None = None,
    **hub_kwargs,
) -> AutoencoderKL | AutoencoderTiny:
    """Load a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` named by its config's
    ``_class_name`` (``AutoencoderKL`` when the config names none).

    Args:
        name_or_path: a Hub repository id or a local folder.
        revision: the Hub revision.
        subfolder: the folder of the autoencoder inside the repository (e.g. ``"vae"``).
        hub_kwargs: passed on to ``from_pretrained`` (``torch_dtype``, ``token``,
            ``cache_dir``, ``local_files_only``...); the download options also to
            ``load_config``.

    Raises:
        ValueError: if the config names a class outside ``SUPPORTED_AUTOENCODERS``.
        OSError: if there is no such autoencoder (as ``from_pretrained`` raises).
    """
    config = AutoencoderKL.load_config(
        name_or_path, revision=revision, subfolder=subfolder, **hub_kwargs
    )
    class_name = config.get("_class_name", "AutoencoderKL")
    supported = {c.__name__: c for c in SUPPORTED_AUTOENCODERS}
    if class_name not in supported:
        raise ValueError(f"{name_or_path!r} is a {class_name}; supported: {sorted(supported)}.")
    return supported[class_name].from_pretrained(
        name_or_path, revision=revision, subfolder=subfolder, **hub_kwargs
    )


def _pair(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    height, width = resolution
    return int(height), int(width)


class LatentCodec(torch.nn.Module):
    """A frozen ``AutoencoderKL`` or ``AutoencoderTiny``: images <-> model-space latents.

    The autoencoder is registered as the submodule ``autoencoder``, its parameters are frozen
    (``requires_grad=False``) and it stays in eval mode whatever ``train()`` is called with.
    Moving the codec (``.to(device, dtype)``) moves the autoencoder; inputs are cast to the
    autoencoder's device and dtype, outputs are float32 on that device.

    Args:
        autoencoder: a diffusers ``AutoencoderKL`` (SD, SDXL, SD3, FLUX VAEs) or
            ``AutoencoderTiny`` (TAESD family).

    Raises:
        TypeError: if ``autoencoder`` is of any other class.
        ValueError: if its config has per-channel ``latents_mean`` / ``latents_std`` (not
            supported), a non-positive ``scaling_factor``, or (Tiny) encoder and decoder
            resolutions that do not match.
    """

    def __init__(self, autoencoder: AutoencoderKL | AutoencoderTiny) -> None:
        super().__init__()
        if not isinstance(autoencoder, SUPPORTED_AUTOENCODERS):
            supported = ", ".join(cls.__name__ for cls in SUPPORTED_AUTOENCODERS)
            raise TypeError(f"LatentCodec supports {supported}; got {type(autoencoder).__name__}")
        config = autoencoder.config
        if getattr(config, "latents_mean", None) is not None or (
            getattr(config, "latents_std", None) is not None
        ):
            raise ValueError(
                "autoencoders with per-channel latents_mean/latents_std in their config are not "
                "supported; only scalar scaling_factor and shift_factor are"
            )
        self.scaling_factor = float(config.scaling_factor)
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be positive, got {self.scaling_factor}")
        shift = getattr(config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)
        self.latent_channels = int(config.latent_channels)
        self.in_channels = int(config.in_channels)
        self.out_channels = int(config.out_channels)

        if isinstance(autoencoder, AutoencoderKL):
            # Every encoder block but the last halves the resolution (diffusers' vae_scale_factor).
            self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        else:
            # EncoderTiny: a stride-2 conv opens every block but the first. DecoderTiny: an
            # upsample by `upsampling_scaling_factor` closes every block but the last.
            # (AutoencoderTiny.spatial_scale_factor is 2 ** out_channels, not the resolution.)
            self.downsample_factor = 2 ** (len(config.encoder_block_out_channels) - 1)
            upsample = config.upsampling_scaling_factor ** (
                len(config.decoder_block_out_channels) - 1
            )
            if upsample != self.downsample_factor:
                raise ValueError(
                    f"AutoencoderTiny encoder downsamples by {self.downsample_factor} but its "
                    f"decoder upsamples by {upsample}"
                )

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

    # -- encode / decode -------------------------------------------------------------------------

    def _to_model_space(self, raw: torch.Tensor) -> torch.Tensor:
        return ((raw.float() - self.shift_factor) * self.scaling_factor).contiguous()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images to deterministic model-space latents (no gradient: the encoder is frozen).

        Args:
            images: ``(N, 3, H, W)`` float in ``[-1, 1]``; ``H`` and ``W`` multiples of
                ``downsample_factor``.

        Returns:
            ``(N, C, H / f, W / f)`` float32: ``(mean - shift_factor) * scaling_factor`` with the
            posterior mean (``AutoencoderKL``) or ``latents`` (``AutoencoderTiny``).
        """
        return self.encode_distribution(images)[0]

    @torch.no_grad()
    def encode_distribution(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode images to the posterior ``(mean, logvar)`` in model space (for a latent cache).

        Args:
            images: ``(N, 3, H, W)`` float in ``[-1, 1]``.

        Returns:
            ``mean``: ``(N, C, h, w)`` float32, as ``encode``. ``logvar``: ``(N, C, h, w)``
            float32 log-variance of the scaled posterior, ``logvar + 2 * log(scaling_factor)``
            (diffusers clamps the raw logvar to ``[-30, 20]``); ``None`` for ``AutoencoderTiny``,
            whose encoder is deterministic.
        """
        self._check_images(images)
        x = images.to(device=self.device, dtype=self.dtype)
        if isinstance(self.autoencoder, AutoencoderTiny):
            return self._to_model_space(self.autoencoder.encode(x).latents), None
        posterior = self.autoencoder.encode(x).latent_dist
        logvar = posterior.logvar.float() + 2.0 * math.log(self.scaling_factor)
        return self._to_model_space(posterior.mean), logvar.contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode model-space latents to images; differentiable with respect to ``latents``.

        Args:
            latents: ``(N, C, h, w)`` model-space latents (any float dtype).

        Returns:
            ``(N, 3, h * f, w * f)`` float32, nominally in ``[-1, 1]``. This is the raw decoder
            output, not clamped (as in diffusers); clamp or ``postprocess`` for display.
        """
        self._check_latents(latents)
        raw = latents / self.scaling_factor + self.shift_factor
        raw = raw.to(device=self.device, dtype=self.dtype)
        return self.autoencoder.decode(raw).sample.float()

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
