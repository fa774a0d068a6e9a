"""Which diffusers autoencoders ``LatentCodec`` drives, and how: the registry
``AUTOENCODER_FAMILIES`` (class name -> geometry, encoder output, normalisation),
``UNSUPPORTED_AUTOENCODERS`` (class name -> why it is refused), the checks of a config's latent
statistics, used by ``ctxadapter.codec.load_autoencoder`` to refuse an unsupported class from its
``config.json`` alone, before any weights are read. The latent normalisation itself is
described in ``ctxadapter.codec``; ``docs/variants.md`` tabulates the families."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import diffusers
import torch

__all__ = [
    "AUTOENCODER_FAMILIES",
    "SUPPORTED_AUTOENCODERS",
    "UNSUPPORTED_AUTOENCODERS",
    "AutoencoderFamily",
    "Geometry",
    "channel_statistics",
    "config_normalisation",
    "family_of",
    "full_config",
    "refusal",
]


# -- the families --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """What an autoencoder's config says about its shapes (raw latents, before any patchify)."""

    image_channels: int
    out_channels: int
    latent_channels: int
    downsample_factor: int


@dataclass(frozen=True)
class AutoencoderFamily:
    """How ``LatentCodec`` drives one diffusers autoencoder class.

    Attributes:
        class_name: the diffusers class (``diffusers.<class_name>``).
        encoder_output: the field of ``encode(x)`` used: ``"latent_dist"`` (its posterior mean,
            and its log-variance for ``encode_distribution``), or the deterministic
            ``"latents"`` / ``"latent"``.
        frames: the autoencoder takes 5-D ``(B, C, T, H, W)`` video tensors; images go in as
            ``T = 1`` and the single latent frame is squeezed out.
        geometry: config -> ``Geometry``; raises ``ValueError`` for a config the family's code
            cannot handle consistently (e.g. an encoder and decoder of different factors).
        latent_patch: config -> ``p``: the pipeline folds ``p x p`` latent patches into channels
            before normalising (``AutoencoderKLFlux2``: its ``patch_size``), 1 otherwise.
        batch_norm_stats: ``latents_mean`` / ``latents_std`` are the running statistics of the
            autoencoder's latent batch norm ``bn`` (``AutoencoderKLFlux2``) rather than config
            entries.
    """

    class_name: str
    encoder_output: Literal["latent_dist", "latents", "latent"]
    geometry: Callable[[Mapping[str, Any]], Geometry]
    frames: bool = False
    latent_patch: Callable[[Mapping[str, Any]], int] = lambda config: 1
    batch_norm_stats: bool = False


def _power_of_two(class_name: str, key: str, value: int) -> int:
    value = int(value)
    if value < 1 or value & (value - 1):
        raise ValueError(f"{class_name}: {key}={value} is not a power of two")
    return value.bit_length() - 1


def _kl_geometry(config: Mapping[str, Any]) -> Geometry:
    # Every encoder block but the last halves the resolution (diffusers' vae_scale_factor).
    return Geometry(
        config["in_channels"],
        config["out_channels"],
        config["latent_channels"],
        2 ** (len(config["block_out_channels"]) - 1),
    )


def _tiny_geometry(config: Mapping[str, Any]) -> Geometry:
    # EncoderTiny: a stride-2 conv opens every block but the first. DecoderTiny: an upsample by
    # `upsampling_scaling_factor` closes every block but the last.
    # (AutoencoderTiny.spatial_scale_factor is 2 ** out_channels, not the resolution.)
    down = 2 ** (len(config["encoder_block_out_channels"]) - 1)
    up = config["upsampling_scaling_factor"] ** (len(config["decoder_block_out_channels"]) - 1)
    if up != down:
        raise ValueError(
            f"AutoencoderTiny encoder downsamples by {down} but its decoder upsamples by {up}"
        )
    return Geometry(config["in_channels"], config["out_channels"], config["latent_channels"], down)


def _dc_geometry(config: Mapping[str, Any]) -> Geometry:
    # DC-AE: a down (up) block closes (opens) every stage with layers but the last; a first stage
    # without layers has a downsampling conv_in (upsampling conv_out) instead.
    def factor(layers: tuple[int, ...]) -> int:
        steps = sum(1 for i, n in enumerate(layers[:-1]) if n > 0) + (layers[0] == 0)
        return 2**steps

    down = factor(tuple(config["encoder_layers_per_block"]))
    up = factor(tuple(config["decoder_layers_per_block"]))
    if up != down:
        raise ValueError(f"AutoencoderDC encoder downsamples by {down} but its decoder by {up}")
    return Geometry(config["in_channels"], config["in_channels"], config["latent_channels"], down)


def _flux2_geometry(config: Mapping[str, Any]) -> Geometry:
    decoder = config["decoder_block_out_channels"] or config["block_out_channels"]
    if len(decoder) != len(config["block_out_channels"]):
        raise ValueError(
            f"AutoencoderKLFlux2 encoder has {len(config['block_out_channels'])} blocks but its "
            f"decoder {len(decoder)}"
        )
    _flux2_patch(config)
    return _kl_geometry(config)


def _flux2_patch(config: Mapping[str, Any]) -> int:
    height, width = config["patch_size"]
    if height != width:
        raise ValueError(f"AutoencoderKLFlux2: patch_size {tuple(config['patch_size'])} not square")
    return int(height)


def _qwen_geometry(config: Mapping[str, Any]) -> Geometry:
    stages = len(config["dim_mult"]) - 1
    if len(config["temperal_downsample"]) != stages:
        raise ValueError(
            f"AutoencoderKLQwenImage: {len(config['dim_mult'])} dim_mult entries need "
            f"{stages} temperal_downsample entries, got {len(config['temperal_downsample'])}"
        )
    channels = config["input_channels"]
    return Geometry(channels, channels, config["z_dim"], 2**stages)


def _wan_geometry(config: Mapping[str, Any]) -> Geometry:
    # The encoder halves the resolution after every stage but the last, after folding
    # `patch_size` x `patch_size` pixel patches into channels (Wan 2.2).
    patch = config["patch_size"] or 1
    factor = 2 ** (len(config["dim_mult"]) - 1) * patch
    declared = config["scale_factor_spatial"]
    if declared is not None and declared != factor:
        raise ValueError(
            f"AutoencoderKLWan declares scale_factor_spatial={declared} but its encoder "
            f"downsamples by {factor}"
        )
    channels = []
    for key in ("in_channels", "out_channels"):
        if config[key] % (patch * patch):
            raise ValueError(f"AutoencoderKLWan: {key}={config[key]} with patch_size={patch}")
        channels.append(config[key] // (patch * patch))
    return Geometry(*channels, config["z_dim"], factor)


def _hunyuan_geometry(config: Mapping[str, Any], class_name: str, blocks: int) -> Geometry:
    ratio = config["spatial_compression_ratio"]
    steps = _power_of_two(class_name, "spatial_compression_ratio", ratio)
    if steps > blocks:
        raise ValueError(
            f"{class_name}: spatial_compression_ratio={ratio} needs more than "
            f"{len(config['block_out_channels'])} blocks"
        )
    return Geometry(config["in_channels"], config["out_channels"], config["latent_channels"], ratio)


def _asym_geometry(config: Mapping[str, Any]) -> Geometry:
    down = 2 ** (len(config["down_block_out_channels"]) - 1)
    up = 2 ** (len(config["up_block_out_channels"]) - 1)
    if up != down:
        raise ValueError(
            f"AsymmetricAutoencoderKL encoder downsamples by {down} but its decoder upsamples by "
            f"{up}"
        )
    return Geometry(config["in_channels"], config["out_channels"], config["latent_channels"], down)


def _kvae_geometry(config: Mapping[str, Any]) -> Geometry:
    if not config["double_z"]:
        raise ValueError("AutoencoderKLKVAE with double_z=False has no posterior to encode to")
    channels = config["in_channels"]
    return Geometry(channels, channels, config["z_channels"], 2 ** (len(config["ch_mult"]) - 1))


def _vq_geometry(config: Mapping[str, Any]) -> Geometry:
    # `encode` returns the quant_conv output, with vq_embed_dim channels, which `decode` takes.
    channels = config["vq_embed_dim"] or config["latent_channels"]
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    return Geometry(config["in_channels"], config["out_channels"], channels, factor)


_FAMILIES = (
    AutoencoderFamily("AutoencoderKL", "latent_dist", _kl_geometry),
    AutoencoderFamily("AutoencoderTiny", "latents", _tiny_geometry),
    AutoencoderFamily("AutoencoderDC", "latent", _dc_geometry),
    AutoencoderFamily(
        "AutoencoderKLFlux2",
        "latent_dist",
        _flux2_geometry,
        latent_patch=_flux2_patch,
        batch_norm_stats=True,
    ),
    AutoencoderFamily("AutoencoderKLQwenImage", "latent_dist", _qwen_geometry, frames=True),
    AutoencoderFamily("AutoencoderKLWan", "latent_dist", _wan_geometry, frames=True),
    AutoencoderFamily(
        "AutoencoderKLHunyuanImage",
        "latent_dist",
        # Encoder and decoder resample at every block but the last, up to the ratio.
        lambda c: _hunyuan_geometry(
            c, "AutoencoderKLHunyuanImage", len(c["block_out_channels"]) - 1
        ),
    ),
    AutoencoderFamily(
        "AutoencoderKLHunyuanImageRefiner",
        "latent_dist",
        lambda c: _hunyuan_geometry(
            c, "AutoencoderKLHunyuanImageRefiner", len(c["block_out_channels"]) - 1
        ),
        frames=True,
    ),
    AutoencoderFamily("AsymmetricAutoencoderKL", "latent_dist", _asym_geometry),
    AutoencoderFamily("AutoencoderKLKVAE", "latent_dist", _kvae_geometry),
    AutoencoderFamily("VQModel", "latents", _vq_geometry),
)

AUTOENCODER_FAMILIES: dict[str, AutoencoderFamily] = {
    family.class_name: family
    for family in _FAMILIES
    if getattr(diffusers, family.class_name, None) is not None
}
"""Class name -> ``AutoencoderFamily``, for every supported class this diffusers has: the single
source of truth of ``LatentCodec`` and ``load_autoencoder``."""

SUPPORTED_AUTOENCODERS: tuple[type, ...] = tuple(
    getattr(diffusers, name) for name in AUTOENCODER_FAMILIES
)
"""The diffusers autoencoder classes a ``LatentCodec`` (and so a ``ContextAutoencoder``) wraps
(derived from ``AUTOENCODER_FAMILIES``)."""

_VIDEO = (
    "it is a video autoencoder; ctxadapter works on images, and the only video autoencoders it "
    "supports are those whose image pipelines encode single frames (AutoencoderKLQwenImage, "
    "AutoencoderKLWan, AutoencoderKLHunyuanImageRefiner)"
)
_AUDIO = "it is an audio autoencoder or vocoder, not an image autoencoder"

UNSUPPORTED_AUTOENCODERS: dict[str, str] = {
    "AutoencoderKLQwenImage21": (
        "it encodes 4-channel RGBA images (in_channels=4) and ctxadapter's images are RGB"
    ),
    "AutoencoderRAE": (
        "its frozen vision encoder resizes every image to encoder_input_size and its decoder "
        "outputs a fixed image_size, so its latents do not scale with the resolution"
    ),
    "ConsistencyDecoderVAE": (
        "its decoder is a consistency-model sampler that draws random noise (decode takes a "
        "generator and num_inference_steps), not a deterministic map from latents to images"
    ),
    "AutoencoderKLTemporalDecoder": (
        "its decoder is temporal (Stable Video Diffusion): decode needs num_frames"
    ),
    "LTX2VideoDiffusionDecoderModel": "it is a video decoder only, with no encoder",
    "AutoencoderKLMiniMaxH3": (
        _VIDEO + "; it also takes ImageNet-normalised pixels rather than [-1, 1]"
    ),
    **dict.fromkeys(
        (
            "AutoencoderKLAllegro",
            "AutoencoderKLCogVideoX",
            "AutoencoderKLCosmos",
            "AutoencoderKLHunyuanVideo",
            "AutoencoderKLHunyuanVideo15",
            "AutoencoderKLKVAEVideo",
            "AutoencoderKLLTXVideo",
            "AutoencoderKLLTX2Video",
            "AutoencoderKLMagvit",
            "AutoencoderKLMochi",
            "AutoencoderVidTok",
            "Kandinsky6SRVAE",
        ),
        _VIDEO,
    ),
    **dict.fromkeys(
        (
            "AutoencoderKLKVAEAudio",
            "AutoencoderKLLTX2Audio",
            "AutoencoderKLMiniMaxH3Audio",
            "AutoencoderOobleck",
            "AutoencoderSAME",
            "Cosmos3AVAEAudioTokenizer",
            "LongCatAudioDiTVae",
            "MMAudioVAE",
            "MMAudioVocoder",
            "MiniMaxMusic3Vocoder",
        ),
        _AUDIO,
    ),
    "RFD4ProteinaAutoencoder": "it encodes protein structures, not images",
}
"""Class name -> why ``LatentCodec`` and ``load_autoencoder`` refuse that diffusers class."""


def refusal(class_name: str) -> str | None:
    """Why ``class_name`` is refused (``None``: it is supported)."""
    reason = UNSUPPORTED_AUTOENCODERS.get(class_name)
    if reason is not None:
        return f"{class_name} is not supported: {reason}"
    if class_name not in AUTOENCODER_FAMILIES:
        return f"supported: {list(AUTOENCODER_FAMILIES)}"
    return None


def full_config(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` completed with the defaults of ``cls.__init__`` (a saved config may omit some)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}


@dataclass(frozen=True)
class Normalisation:
    """The latent normalisation a config gives: scalar factors and optional statistics."""

    scaling_factor: float
    shift_factor: float
    latents_mean: torch.Tensor | None
    latents_std: torch.Tensor | None


def config_normalisation(class_name: str, config: Mapping[str, Any], channels: int):
    """The scalar factors and per-channel statistics of ``config`` (a ``Normalisation``),
    checked; missing factors are 1 and 0."""
    scale = config.get("scaling_factor")
    scale = 1.0 if scale is None else float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"{class_name}: scaling_factor must be positive, got {scale}")
    shift = config.get("shift_factor")
    shift = 0.0 if shift is None else float(shift)
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if (mean is None) != (std is None):
        raise ValueError(
            f"{class_name}: latents_mean and latents_std must be given together "
            f"(got only {'latents_mean' if std is None else 'latents_std'})"
        )
    if mean is not None:
        if shift:
            raise ValueError(
                f"{class_name}: both shift_factor and latents_mean are set; diffusers pipelines "
                f"use one or the other, so the latent normalisation is ambiguous"
            )
        mean, std = channel_statistics(class_name, "latents", mean, std, channels)
    return Normalisation(scale, shift, mean, std)


def channel_statistics(class_name: str, what: str, mean, std, channels: int):
    """Per-channel ``(mean, std)`` as float32 CPU vectors, checked: ``channels`` entries each,
    finite, ``std > 0``; errors name ``class_name`` and ``<what>_mean`` / ``<what>_std``."""
    mean = torch.as_tensor(mean, dtype=torch.float32).detach().cpu().flatten()
    std = torch.as_tensor(std, dtype=torch.float32).detach().cpu().flatten()
    for name, values in ((f"{what}_mean", mean), (f"{what}_std", std)):
        if values.numel() != channels:
            raise ValueError(
                f"{class_name}: {name} has {values.numel()} entries for {channels} latent channels"
            )
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"{class_name}: {what}_std must be positive and the statistics finite")
    return mean, std


def family_of(autoencoder: Any) -> AutoencoderFamily:
    """The family of ``autoencoder``'s class or of its nearest registered diffusers base class."""
    for cls in type(autoencoder).__mro__:
        if getattr(diffusers, cls.__name__, None) is not cls:
            continue
        if cls.__name__ in UNSUPPORTED_AUTOENCODERS:
            raise ValueError(f"{refusal(cls.__name__)}.")
        if cls.__name__ in AUTOENCODER_FAMILIES:
            return AUTOENCODER_FAMILIES[cls.__name__]
    supported = ", ".join(AUTOENCODER_FAMILIES)
    raise TypeError(f"LatentCodec supports {supported}; got {type(autoencoder).__name__}")
