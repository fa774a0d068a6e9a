"""The flags of ``examples/finetune.py``: its own flag groups, combined with the shared ones
of ``args`` into ``FinetuneArguments``, the presets and ``parse_finetune_arguments``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import HfArgumentParser

from ..config import PRESET_NAMES, AdapterConfig, read_settings
from ..objective import Objective
from ..pinning import loads_anywhere, local_path, portable_name
from .args import QUAD_AUTOENCODER, ImageDataArguments, OptimizationArguments, RunArguments
from .flags import FlagGroup, check_at_least, flag

GRID_IMAGES = 8
"""Images per row of the sample grids drawn during and after training."""

ENCODE_OPTIONS = ("channels_last", "slicing", "tiling")
"""The choices of ``--encode_options``."""


@dataclass
class AutoencoderArguments(FlagGroup):
    """The frozen autoencoder: which pretrained autoencoder the adapter sits in; its latent
    scaling and shift factors are read from its config."""

    pretrained_model_name_or_path: str | None = flag(
        "The frozen autoencoder (any diffusers image autoencoder, see docs/variants.md): a Hub "
        "id, a folder, or one that ships with ctxadapter: 'ctxadapter:quad-autoencoder' (quad "
        "images) or 'ctxadapter:photo-autoencoder' (photographs, offline). Default: the quad "
        "one.",
        default=None,
    )
    revision: str | None = flag("Revision of the autoencoder on the Hub.", default=None)
    subfolder: str | None = flag("Subfolder of the autoencoder, e.g. 'vae'.", default=None)

    @property
    def autoencoder(self) -> str:
        """``pretrained_model_name_or_path`` (the folder of a shipped autoencoder given by its
        name), or the shipped quad autoencoder's folder."""
        return local_path(self.pretrained_model_name_or_path or str(QUAD_AUTOENCODER))


@dataclass
class EncodeArguments(FlagGroup):
    """The encode pass: how the frozen autoencoder runs when every image is encoded once into
    the latent cache (and when samples are decoded)."""

    encode_batch_size: int = flag("Images per encoder pass while caching latents.", default=64)
    autoencoder_dtype: Literal["float32", "float16", "bfloat16"] = flag(
        "The dtype the frozen autoencoder is loaded in (the adapter trains in float32).",
        default="float32",
    )
    encode_options: list[str] = flag(
        "Any of 'channels_last' (run the autoencoder in channels_last memory format: faster "
        "convolutions on many GPUs and CPUs), 'slicing' (encode and decode a batch one image at "
        "a time: less memory, the same latents) and 'tiling' (tile by tile: much less memory at "
        "high resolution, latents differ slightly at the seams).",
        default_factory=list,
    )
    streaming: bool = flag(
        "Read the dataset as a stream (datasets' load_dataset(..., streaming=True)) while it "
        "is checked and encoded into the latent cache, instead of preparing an Arrow copy of "
        "it first: memory and local disk hold the latents, never the images.",
        default=False,
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "encode_batch_size")
        unknown = [option for option in self.encode_options if option not in ENCODE_OPTIONS]
        if unknown:
            raise ValueError(
                f"--encode_options must be among {ENCODE_OPTIONS}, got {', '.join(unknown)}"
            )


@dataclass
class ContextArguments(FlagGroup):
    """Contexts: which column holds each image's context, and the concepts' names."""

    context_column: str = flag(
        "The column holding each image's context: 'obs', a concept, 'a+b' or a list of names.",
        default="context",
    )
    concepts: list[str] | None = flag(
        "Concept names, in order. Default: inferred from the data's contexts.", default=None
    )


@dataclass
class SetupArguments(FlagGroup):
    """The adapter and its loss: a preset, changes to its architecture (``AdapterConfig``) and
    to its loss (``Objective``), how batches are formed and the decoder LoRA."""

    preset: Literal[PRESET_NAMES] = flag(
        "'ctxadapter' (the defaults) or 'paper': the paper's exact setup (linear heads, dense "
        "observational mixing, a shared exogenous bias, the Bernoulli pixel loss without "
        "sample or prior matching or sparsity, one context per batch, learning rate 1e-3) as "
        "the defaults of the adapter, the loss and the flags.",
        default="ctxadapter",
    )
    adapter_config: dict | str | None = flag(
        "A JSON file, or a JSON object, of AdapterConfig fields replacing the preset's "
        '(ctxadapter.config; docs/training.md), e.g. \'{"heads": "additive", "pooled": '
        "true}'.",
        default=None,
    )
    objective_config: dict | str | None = flag(
        "A JSON file, or a JSON object, of Objective fields replacing the preset's "
        '(ctxadapter.objective; docs/training.md), e.g. \'{"reconstruction": "pixel", '
        '"sample_matching": 2}\'.',
        default=None,
    )
    sampler: Literal["mixed", "context_pure"] = flag(
        "'mixed' batches or 'context_pure' batches (one context each).", default="mixed"
    )
    decoder_lora_rank: int = flag(
        "Rank of a LoRA on the decoder (the paper's fine-tune variant; needs the pixel loss). "
        "0: decoder frozen.",
        default=0,
    )

    def validate(self) -> None:
        super().validate()
        # Read the files once: the flags then record the changes themselves, which a
        # checkpoint compares on resumption.
        self.adapter_config = read_settings(self.adapter_config, "--adapter_config")
        self.objective_config = read_settings(self.objective_config, "--objective_config")
        self.adapter_settings()
        pixel = self.objective().reconstruction == "pixel"
        if self.decoder_lora_rank and not pixel:
            raise ValueError(
                "--decoder_lora_rank needs the pixel loss (--objective_config "
                '\'{"reconstruction": "pixel"}\' or --preset paper): the latent loss never '
                "runs the decoder."
            )
        check_at_least(self, 0, "decoder_lora_rank")

    def adapter_settings(self) -> AdapterConfig:
        """The adapter's architecture: the preset's, with ``--adapter_config`` applied."""
        return AdapterConfig.preset(self.preset).updated(self.adapter_config, "--adapter_config")

    def objective(self) -> Objective:
        """The one objective of a run, trained and validated (early stopping) alike: the
        preset's, with ``--objective_config`` applied."""
        return Objective.preset(self.preset).updated(self.objective_config, "--objective_config")


@dataclass
class ValidationArguments(FlagGroup):
    """Validation and early stopping: the validation loss after every epoch drives early
    stopping."""

    early_stopping_patience: int = flag(
        "Stop after this many validations without improvement and restore the best weights "
        "(0: never stop early; the best weights are restored all the same).",
        default=20,
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 0, "early_stopping_patience")


@dataclass
class CheckpointArguments(FlagGroup):
    """Checkpoints: resumable training state (trainable weights only) and sample grids."""

    checkpointing_steps: int = flag(
        "Save a resumable checkpoint and draw a sample grid every this many steps.", default=500
    )
    resume_from_checkpoint: str | None = flag(
        "A checkpoint folder, or 'latest' for the newest in --output_dir.", default=None
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "checkpointing_steps")


@dataclass
class HubArguments(FlagGroup):
    """Sharing on the Hub: where the adapter is pushed at the end (with the saved login of
    ``hf auth login``, or ``HF_TOKEN``), and the Hub id of its base."""

    push_to_hub: bool = flag("Push the adapter folder to the Hub at the end.", default=False)
    hub_model_id: str | None = flag(
        "Hub repository (default: the output folder's name).", default=None
    )
    hub_base_model_id: str | None = flag(
        "The Hub id of the base autoencoder, recorded in the pushed adapter; needed with "
        "--push_to_hub when --pretrained_model_name_or_path is a local folder.",
        default=None,
    )


# ------------------------------------------------------------------------- the two scripts
# A dataclass lists the fields of its bases last base first, so the groups are named in the
# reverse of the order in which --help shows them.


@dataclass
class FinetuneArguments(
    HubArguments,
    CheckpointArguments,
    RunArguments,
    ValidationArguments,
    OptimizationArguments,
    SetupArguments,
    ContextArguments,
    ImageDataArguments,
    EncodeArguments,
    AutoencoderArguments,
):
    """Flags of ``examples/finetune.py``: train a context adapter on a frozen autoencoder.

    ``--preset paper`` (``FinetuneArguments(**PRESETS["paper"])`` in Python) gives the paper's
    setup: the adapter of ``AdapterConfig.paper()``, the loss of ``Objective.paper()`` and the
    defaults of the flags in ``PRESETS["paper"]``; ``--adapter_config``,
    ``--objective_config`` and flags given explicitly still win."""

    def validate(self) -> None:
        super().validate()
        portable = loads_anywhere(portable_name(self.autoencoder))
        if self.push_to_hub and not (portable or self.hub_base_model_id):
            raise ValueError(
                f"--push_to_hub with the local autoencoder {self.autoencoder!r}: the adapter "
                f"would name a folder of this machine. Upload the autoencoder and pass its Hub "
                f"id with --hub_base_model_id."
            )


PRESETS: dict[str, dict] = {
    "ctxadapter": {},
    "paper": dict(preset="paper", sampler="context_pure", learning_rate=1e-3),
}
"""Preset name -> the ``FinetuneArguments`` defaults it replaces (its adapter and loss are
``AdapterConfig.preset(name)`` and ``Objective.preset(name)``)."""


def parse_finetune_arguments(argv: list[str] | None = None) -> FinetuneArguments:
    """Parse ``examples/finetune.py``'s flags (``sys.argv`` by default): a ``--preset`` sets
    the defaults of its flags, then the flags given on the command line are applied."""
    parser = HfArgumentParser(FinetuneArguments)
    preset = parser.parse_known_args(argv)[0].preset  # argparse checks it is a known preset
    parser.set_defaults(**PRESETS[preset])
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args
