"""The flags of ``examples/finetune.py``: its own flag groups, combined with the shared ones
of ``args`` into ``FinetuneArguments``, the presets and ``parse_finetune_arguments``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import HfArgumentParser

from ..heads import HEADS
from ..layers import EXOGENOUS_BIASES
from ..objective import Objective
from ..pinning import loads_anywhere, local_path, portable_name
from .args import QUAD_AUTOENCODER, ImageDataArguments, OptimizationArguments, RunArguments
from .flags import FlagGroup, check_at_least, flag

MAX_GRID_IMAGES = 64
"""The most images a row of the sample grids may hold (they are decoded at once)."""


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
    channels_last: bool = flag(
        "Run the autoencoder in channels_last memory format (faster convolutions on many "
        "GPUs and CPUs).",
        default=False,
    )
    vae_slicing: bool = flag(
        "Encode and decode a batch one image at a time (diffusers' enable_slicing: less "
        "memory, the same latents).",
        default=False,
    )
    vae_tiling: bool = flag(
        "Encode and decode large images tile by tiles (diffusers' enable_tiling: much less "
        "memory at high resolution, latents differ slightly at the seams).",
        default=False,
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
class AdapterArguments(FlagGroup):
    """The context module: shape and semantics of the adapter (saved in its
    ``config.json``)."""

    preset: Literal["ctxadapter", "paper"] = flag(
        "'ctxadapter' (the defaults listed here) or 'paper': the paper's exact setup (linear "
        "heads, the reference context layers, the Bernoulli pixel loss, one context per batch, "
        "no sample matching or sparsity, learning rate 1e-3) as the defaults of those flags.",
        default="ctxadapter",
    )
    exogenous_width: int = flag("Noise dimensions per concept.", default=32)
    concept_width: int = flag("Dimensions per concept in the causal layer.", default=8)
    expressive_depth: int = flag("Widths of the per-concept MLPs (1: none).", default=2)
    observational_mixing: Literal["block", "dense"] = flag(
        "'block' (no mixing of concepts' noise in the observational context) or 'dense' (the "
        "reference).",
        default="block",
    )
    exogenous_bias: Literal[EXOGENOUS_BIASES] = flag(
        "'shared' (reference: one exogenous bias for every context) or 'interventional' "
        "(intervened concepts take their own bias, so edits can shift them).",
        default="interventional",
    )
    heads: Literal[HEADS] = flag(
        "Posterior and latent heads: 'auto' ('mlp' below 4,096 latent values, 'conv' from 4,096), "
        "'mlp' (two hidden GELU layers), 'conv' (spatial heads for large latents), 'additive' "
        "(an MLP per concept block, summed: each block paints the latent on its own; small "
        "latents) or 'linear' (the paper's).",
        default="auto",
    )
    head_width: int = flag(
        "Hidden width of the MLP heads (of each block's MLP with --heads additive).", default=256
    )
    pooled: bool = flag("Ignore context labels: the 'CM pooled' ablation.", default=False)

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "exogenous_width", "concept_width", "expressive_depth")
        check_at_least(self, 1, "head_width")


@dataclass
class ObjectiveArguments(FlagGroup):
    """Objective: what is minimised, and how batches are formed."""

    loss: Literal["latent", "pixel"] = flag(
        "'latent' (cached latents, fast) or 'pixel' (through the frozen decoder).", default="latent"
    )
    beta: float = flag("Weight of the KL term.", default=1.0)
    sample_matching: float = flag(
        "Weight of the per-context sliced-Wasserstein terms that fit prior samples of each "
        "context, and counterfactuals under it (other images' noise decoded under it), to that "
        "context's latents in the batch (ctxadapter.objective; not in the paper; 0: off).",
        default=4.0,
    )
    prior_matching: float = flag(
        "Weight of the per-context sliced-Wasserstein term that fits each context's posterior "
        "samples in the batch to the N(0, I) prior they are generated from (ctxadapter.objective; "
        "not in the paper; 0: off).",
        default=4.0,
    )
    group_sparsity: float = flag("Weight of the causal-layer group-sparsity penalty.", default=3.0)
    sampler: Literal["mixed", "context_pure"] = flag(
        "'mixed' batches or 'context_pure' batches (one context each).", default="mixed"
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 0, "beta", "sample_matching", "prior_matching", "group_sparsity")

    def objective(self) -> Objective:
        """The one objective of a run: trained and validated (early stopping) alike."""
        return Objective(
            reconstruction=self.loss,
            beta=self.beta,
            sample_matching=self.sample_matching,
            prior_matching=self.prior_matching,
            group_sparsity=self.group_sparsity,
        )


@dataclass
class DecoderLoraArguments(FlagGroup):
    """Decoder fine-tuning (the paper's CM fine-tune): a LoRA on the frozen decoder, trained
    with the pixel loss after a warm-up fraction."""

    decoder_lora_rank: int = flag(
        "Rank of a LoRA on the decoder (the paper's fine-tune variant; needs --loss pixel). "
        "0: decoder frozen.",
        default=0,
    )
    unfreeze_decoder_after: float = flag(
        "Fraction of the training steps after which the decoder LoRA starts learning.", default=0.2
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 0, "decoder_lora_rank")
        if not 0 <= self.unfreeze_decoder_after < 1:
            raise ValueError(
                f"--unfreeze_decoder_after must be in [0, 1), got {self.unfreeze_decoder_after}"
            )


@dataclass
class ValidationArguments(FlagGroup):
    """Validation, early stopping and sample grids: how often the validation loss (which
    drives early stopping) and the sample pictures are made."""

    validation_epochs: int = flag(
        "Validation loss (for early stopping) every this many epochs.", default=1
    )
    early_stopping_patience: int = flag(
        "Stop after this many validations without improvement and restore the best weights "
        "(0: never stop early; the best weights are restored all the same).",
        default=20,
    )
    validation_steps: int = flag("Sample grids every this many steps.", default=500)
    validation_compositions: list[str] | None = flag(
        "Compositions shown in the sample grids. Default: quad's held-out compositions, or "
        "every pair of concepts (at most 12).",
        default=None,
    )
    num_validation_images: int = flag(
        f"Images per row of the sample grids (1 to {MAX_GRID_IMAGES}).", default=8
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "validation_epochs", "validation_steps", "num_validation_images")
        check_at_least(self, 0, "early_stopping_patience")
        if self.num_validation_images > MAX_GRID_IMAGES:
            raise ValueError(
                f"--num_validation_images must be at most {MAX_GRID_IMAGES} (one row of a grid), "
                f"got {self.num_validation_images}"
            )


@dataclass
class CheckpointArguments(FlagGroup):
    """Checkpoints: resumable training state, trainable weights only."""

    checkpointing_steps: int = flag(
        "Save a resumable checkpoint every this many steps.", default=500
    )
    checkpoints_total_limit: int | None = flag("Keep at most this many checkpoints.", default=None)
    resume_from_checkpoint: str | None = flag(
        "A checkpoint folder, or 'latest' for the newest in --output_dir.", default=None
    )

    def validate(self) -> None:
        super().validate()
        check_at_least(self, 1, "checkpointing_steps")
        if self.checkpoints_total_limit is not None:
            check_at_least(self, 1, "checkpoints_total_limit")


@dataclass
class HubArguments(FlagGroup):
    """Sharing on the Hub: where the adapter is pushed at the end, and the Hub id of its base."""

    push_to_hub: bool = flag("Push the adapter folder to the Hub at the end.", default=False)
    hub_model_id: str | None = flag(
        "Hub repository (default: the output folder's name).", default=None
    )
    hub_token: str | None = flag("Hub token (default: the saved login).", default=None)
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
    DecoderLoraArguments,
    ObjectiveArguments,
    AdapterArguments,
    ContextArguments,
    ImageDataArguments,
    EncodeArguments,
    AutoencoderArguments,
):
    """Flags of ``examples/finetune.py``: train a context adapter on a frozen autoencoder.

    ``--preset paper`` (``FinetuneArguments(**PRESETS["paper"])`` in Python) replaces the
    defaults of the flags in ``PRESETS["paper"]`` by the paper's setup; flags given explicitly
    still win."""

    def validate(self) -> None:
        super().validate()
        portable = loads_anywhere(portable_name(self.autoencoder))
        if self.push_to_hub and not (portable or self.hub_base_model_id):
            raise ValueError(
                f"--push_to_hub with the local autoencoder {self.autoencoder!r}: the adapter "
                f"would name a folder of this machine. Upload the autoencoder and pass its Hub "
                f"id with --hub_base_model_id."
            )
        if self.decoder_lora_rank and self.loss != "pixel":
            raise ValueError(
                "--decoder_lora_rank needs --loss pixel: the latent loss never runs the decoder."
            )


PRESETS: dict[str, dict] = {
    "ctxadapter": {},
    "paper": dict(
        preset="paper",
        heads="linear",
        observational_mixing="dense",
        exogenous_bias="shared",
        loss="pixel",
        sampler="context_pure",
        beta=1.0,
        sample_matching=0.0,
        prior_matching=0.0,
        group_sparsity=0.0,
        learning_rate=1e-3,
    ),
}
"""Preset name -> the ``FinetuneArguments`` defaults it replaces."""


def parse_finetune_arguments(argv: list[str] | None = None) -> FinetuneArguments:
    """Parse ``examples/finetune.py``'s flags (``sys.argv`` by default): a ``--preset`` sets
    the defaults of its flags, then the flags given on the command line are applied."""
    parser = HfArgumentParser(FinetuneArguments)
    preset = parser.parse_known_args(argv)[0].preset  # argparse checks it is a known preset
    parser.set_defaults(**PRESETS[preset])
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args
