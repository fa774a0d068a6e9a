"""Reusable pieces of the Accelerate training loops behind ``examples/finetune.py`` and
``examples/pretrain_autoencoder.py``: their flags (dataclasses read by transformers'
``HfArgumentParser``), data preparation, the learning-rate schedule, checkpoint hooks that keep
only trainable weights, and the loops themselves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

from .adapter import HEADS, CtxAdapter
from .codec import SUPPORTED_AUTOENCODERS, LatentCodec
from .contexts import parse_context
from .data import (
    CachedLatents,
    ContextBatchSampler,
    cache_latents,
    collate_batch,
    load_image_dataset,
    validate_dataset,
)
from .data import steps_per_epoch as count_steps
from .layers import EXOGENOUS_BIASES
from .model import ContextAutoencoder, base_model_record
from .objective import Objective
from .viz import all_pairs, concept_graph_image, context_grid, write_report

logger = logging.getLogger(__name__)


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class DataArguments:
    """Where the images and their contexts come from (shared by both scripts)."""

    dataset_name: str | None = _help(
        "A Hub dataset id, a save_to_disk folder or a local dataset. Default: the built-in quad "
        "data.",
        default=None,
    )
    dataset_config_name: str | None = _help("The dataset's configuration name.", default=None)
    train_data_dir: str | None = _help(
        "An imagefolder with a metadata.jsonl holding a context column.", default=None
    )
    image_column: str = _help("The column holding the images.", default="image")
    context_column: str = _help(
        "The column holding each image's context: 'obs', a concept, 'a+b' or a list of names.",
        default="context",
    )
    resolution: int | None = _help(
        "Images are resized and centre-cropped to this size (a multiple of the autoencoder's "
        "downsampling factor). Default: the autoencoder's sample_size.",
        default=None,
    )
    validation_fraction: float = _help(
        "Fraction of the training rows held out for validation when the dataset has no "
        "'validation' split.",
        default=0.05,
    )
    quad_images_per_context: int = _help(
        "Training images per context of the built-in quad data.", default=2000
    )
    quad_variant: str = _help(
        "Built-in quad data: 'dependent' (concepts causally related) or 'independent'.",
        default="dependent",
    )
    cache_dir: str | None = _help(
        "Where downloads, Arrow files and the latent cache are kept. Default: the datasets cache.",
        default=None,
    )
    seed: int = _help("Seed for data order, initialisation and noise.", default=0)
    output_dir: str = _help("Where the results are written.", default="ctxadapter-quad")
    train_batch_size: int = _help("Batch size per device.", default=512)
    max_train_steps: int | None = _help(
        "Total optimizer steps; overrides --num_train_epochs.", default=None
    )
    num_train_epochs: int = _help("Epochs, when --max_train_steps is not given.", default=100)
    gradient_accumulation_steps: int = _help("Batches accumulated per optimizer step.", default=1)
    learning_rate: float = _help("Peak learning rate (Adam).", default=1e-3)
    lr_scheduler: str = _help(
        "A transformers schedule name; the default warms up linearly, then follows a cosine to "
        "--min_learning_rate.",
        default="cosine_with_min_lr",
    )
    lr_warmup_steps: int = _help("Linear warm-up steps.", default=200)
    min_learning_rate: float = _help("Final learning rate of cosine_with_min_lr.", default=1e-5)
    mixed_precision: str | None = _help(
        "'no', 'fp16' or 'bf16' (default: accelerate config).", default=None
    )
    report_to: str = _help(
        "Where to log: 'tensorboard', 'wandb', 'all' or 'none'.", default="tensorboard"
    )
    dataloader_num_workers: int = _help("Data loading worker processes.", default=0)


def quad_default(args: DataArguments) -> bool:
    """True when the built-in quad data is used."""
    return not args.dataset_name and not args.train_data_dir


def load_splits(args: DataArguments, concepts=None, with_contexts: bool = True):
    """Load and validate the training data, before anything is written.

    The validation rows are the dataset's ``validation`` split if it has one, else a seeded
    ``--validation_fraction`` of the training rows.

    Returns:
        ``(train, validation, concepts, train_contexts, validation_contexts)``: two
        ``datasets.Dataset`` s, the concept list and the canonical context of every row (the
        last three are ``None`` when ``with_contexts`` is false: contexts pooled).
    """
    if args.quad_variant not in ("dependent", "independent"):
        raise ValueError(
            f"--quad_variant must be 'dependent' or 'independent', got {args.quad_variant!r}"
        )
    if not 0 < args.validation_fraction < 1:
        raise ValueError(f"--validation_fraction must be in (0, 1), got {args.validation_fraction}")
    data = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        cache_dir=args.cache_dir,
        quad_images_per_context=args.quad_images_per_context,
        quad_dependent=args.quad_variant == "dependent",
        seed=args.seed,
    )
    train = data["train"]
    if len(train) == 0:
        raise ValueError("The training dataset is empty.")
    if "validation" in data and len(data["validation"]):
        validation = data["validation"]
    else:
        parts = train.train_test_split(test_size=args.validation_fraction, seed=args.seed)
        train, validation = parts["train"], parts["test"]
    if not with_contexts:
        validate_dataset(train, args.image_column, None)
        return train, validation, None, None, None
    concepts, train_contexts = validate_dataset(
        train, args.image_column, args.context_column, concepts
    )
    _, validation_contexts = validate_dataset(
        validation, args.image_column, args.context_column, concepts
    )
    return train, validation, concepts, train_contexts, validation_contexts


def make_optimizer(model: torch.nn.Module, learning_rate: float, **kwargs) -> torch.optim.Adam:
    """Adam over ``model``'s trainable parameters, fused on CPU and CUDA: one kernel for all
    parameters, since a small adapter's step is otherwise dominated by per-tensor optimizer
    overhead (``docs/benchmarks.md``). ``kwargs`` override ``torch.optim.Adam``'s arguments."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"fused": trainable[0].device.type in ("cpu", "cuda")} | kwargs
    return torch.optim.Adam(trainable, lr=learning_rate, **kwargs)


def make_scheduler(args: DataArguments, optimizer: torch.optim.Optimizer, total_steps: int):
    """The learning-rate schedule (transformers' ``get_scheduler``); the paper's default is a
    linear warm-up then a cosine decay to ``min_learning_rate``."""
    extra = {"min_lr": args.min_learning_rate} if args.lr_scheduler == "cosine_with_min_lr" else {}
    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=extra,
    )


def make_accelerator(args: DataArguments, **kwargs) -> Accelerator:
    """An ``Accelerator`` logging under ``output_dir/logs``."""
    project = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
    )
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project,
        **kwargs,
    )


def tracker_config(args) -> dict:
    """Flags as a flat dict of scalars for the trackers (tensorboard takes no lists)."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(args).items()
    }


# ---------------------------------------------------------------------------- checkpoints


CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str) -> list[Path]:
    """``checkpoint-<step>`` folders of ``output_dir``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [p for p in Path(output_dir).iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def prune_checkpoints(output_dir: str, keep: int | None) -> None:
    """Delete the oldest checkpoints so that at most ``keep - 1`` remain before a new one is
    saved (``None``: keep all)."""
    if keep is None:
        return
    existing = list_checkpoints(output_dir)
    for old in existing[: max(0, len(existing) - keep + 1)]:
        shutil.rmtree(old)


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str | None) -> Path | None:
    """``"latest"`` -> the newest checkpoint in ``output_dir`` (``None`` if there is none), a
    path -> that path (which must exist)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        existing = list_checkpoints(output_dir)
        return existing[-1] if existing else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r}: no such checkpoint folder."
        )
    return path


# ---------------------------------------------------------------------------- pretraining


@dataclass
class PretrainArguments(DataArguments):
    """Flags of ``examples/pretrain_autoencoder.py``: a small ``AutoencoderKL`` trained on the
    images of any dataset (contexts pooled)."""

    output_dir: str = _help(
        "Where the diffusers AutoencoderKL folder is written.", default="quad-autoencoder"
    )
    block_out_channels: list[int] = _help(
        "Channels per resolution level; n levels downsample by 2**(n-1).",
        default_factory=lambda: [16, 32, 64, 64],
    )
    layers_per_block: int = _help("ResNet layers per level.", default=1)
    latent_channels: int = _help("Latent channels.", default=4)
    norm_num_groups: int = _help("GroupNorm groups.", default=8)
    kl_weight: float = _help("Weight of the KL term against the per-pixel MSE.", default=1e-6)
    train_batch_size: int = _help("Batch size per device.", default=32)
    max_train_steps: int | None = _help("Total optimizer steps.", default=1000)
    lr_warmup_steps: int = _help("Linear warm-up steps.", default=100)
    learning_rate: float = _help("Peak learning rate (AdamW).", default=1e-3)
    validation_steps: int = _help(
        "Log the held-out PSNR every this many steps (0: only at the end).", default=1000
    )


def pretrain_autoencoder(args: PretrainArguments) -> AutoencoderKL:
    """Train an ``AutoencoderKL`` from scratch on the dataset's images (every context pooled),
    set its ``scaling_factor`` to ``1 / std`` of the latents, and save it to ``output_dir``."""
    if args.max_train_steps is None or args.max_train_steps < 1:
        raise ValueError(
            f"--max_train_steps must be a positive integer, got {args.max_train_steps}"
        )
    train, validation, *_ = load_splits(args, with_contexts=False)
    if len(train) < args.train_batch_size:  # no full batch: the loop would never step
        raise ValueError(
            f"--train_batch_size {args.train_batch_size} is larger than the {len(train)} "
            f"training images; use a smaller batch or more images."
        )
    resolution = args.resolution or 64
    levels = len(args.block_out_channels)
    if resolution % 2 ** (levels - 1):
        raise ValueError(f"--resolution {resolution} must be a multiple of {2 ** (levels - 1)}.")
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        norm_num_groups=args.norm_num_groups,
        sample_size=resolution,
    )
    processor = VaeImageProcessor(vae_scale_factor=2 ** (levels - 1))

    def collate(indices):
        images = [image.convert("RGB") for image in train[indices][args.image_column]]
        return processor.preprocess(images, height=resolution, width=resolution, resize_mode="crop")

    loader = torch.utils.data.DataLoader(
        range(len(train)),
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate)
    scheduler = make_scheduler(args, optimizer, args.max_train_steps)
    vae, optimizer, loader, scheduler = accelerator.prepare(vae, optimizer, loader, scheduler)
    if accelerator.is_main_process:
        accelerator.init_trackers("pretrain_autoencoder", config=tracker_config(args))
    progress = tqdm(
        range(args.max_train_steps),
        disable=not accelerator.is_local_main_process,
        desc="Pretraining autoencoder",
    )
    step = 0
    while step < args.max_train_steps:
        for pixels in loader:
            with accelerator.accumulate(vae):
                with accelerator.autocast():  # encode/decode bypass the wrapped forward
                    posterior = vae.encode(pixels).latent_dist
                    decoded = vae.decode(posterior.sample()).sample
                mse = torch.nn.functional.mse_loss(decoded.float(), pixels.float())
                kl = posterior.kl().mean() / pixels[0].numel()
                loss = mse + args.kl_weight * kl
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                progress.update(1)
                progress.set_postfix(mse=f"{mse.item():.4f}")
                accelerator.log({"mse": mse.item(), "kl": kl.item()}, step=step)
                if args.validation_steps and step % args.validation_steps == 0:
                    unwrapped = accelerator.unwrap_model(vae).eval()
                    psnr = _autoencoder_metrics(
                        unwrapped, validation, args.image_column, processor, resolution, 256
                    )["validation_psnr_db"]
                    unwrapped.train()
                    accelerator.log({"validation_psnr_db": psnr}, step=step)
                    progress.write(f"step {step}: held-out PSNR {psnr:.2f} dB")
                if step >= args.max_train_steps:
                    break
    vae = accelerator.unwrap_model(vae).eval()
    metrics = _autoencoder_metrics(vae, validation, args.image_column, processor, resolution)
    vae.register_to_config(scaling_factor=metrics["scaling_factor"])
    if accelerator.is_main_process:
        vae.save_pretrained(args.output_dir)
        (Path(args.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info("Autoencoder saved to %s: %s", args.output_dir, metrics)
    accelerator.end_training()
    return vae


@torch.no_grad()
def _autoencoder_metrics(
    vae,
    validation: datasets.Dataset,
    image_column: str,
    processor: VaeImageProcessor,
    resolution: int,
    max_images: int = 512,
) -> dict:
    """Held-out PSNR of the reconstructions and the latent scaling factor ``1 / std``."""
    rows = validation.select(range(min(max_images, len(validation))))
    latents, sq_errors = [], []
    for start in range(0, len(rows), 64):
        images = [im.convert("RGB") for im in rows[start : start + 64][image_column]]
        pixels = processor.preprocess(
            images, height=resolution, width=resolution, resize_mode="crop"
        ).to(vae.device, vae.dtype)
        mean = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(mean).sample.clamp(-1, 1)
        latents.append(mean.float().cpu())
        sq_errors.append(((decoded - pixels).float().cpu() / 2).pow(2).flatten(1).mean(1))
    mse = torch.cat(sq_errors)
    psnr = (-10 * torch.log10(mse.clamp_min(1e-10))).mean().item()
    return {
        "validation_psnr_db": round(psnr, 3),
        "validation_images": len(rows),
        "scaling_factor": round(1.0 / torch.cat(latents).std().item(), 5),
    }


# ---------------------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneArguments(DataArguments):
    """Flags of ``examples/finetune.py``: train a context adapter on a frozen autoencoder.

    ``--preset paper`` (``FinetuneArguments(**PRESETS["paper"])`` in Python) replaces the
    defaults of the flags in ``PRESETS["paper"]`` by the paper's setup; flags given explicitly
    still win."""

    preset: str = _help(
        "'ctxadapter' (the defaults listed here) or 'paper': the paper's exact setup (linear "
        "heads, the reference context layers, the Bernoulli pixel loss, one context per batch, "
        "no sample matching or sparsity) as the defaults of those flags.",
        default="ctxadapter",
    )

    pretrained_model_name_or_path: str | None = _help(
        "The frozen autoencoder (diffusers AutoencoderKL or AutoencoderTiny): a Hub id or a "
        "folder. Default: the project's small autoencoder pretrained on quad.",
        default=None,
    )
    revision: str | None = _help("Revision of the autoencoder on the Hub.", default=None)
    subfolder: str | None = _help("Subfolder of the autoencoder, e.g. 'vae'.", default=None)
    concepts: list[str] | None = _help(
        "Concept names, in order. Default: inferred from the data's contexts.", default=None
    )
    exogenous_width: int = _help("Noise dimensions per concept.", default=32)
    concept_width: int = _help("Dimensions per concept in the causal layer.", default=8)
    expressive_depth: int = _help("Widths of the per-concept MLPs (1: none).", default=2)
    observational_mixing: str = _help(
        "'block' (no mixing of concepts' noise in the observational context) or 'dense' (the "
        "reference).",
        default="block",
    )
    exogenous_bias: str = _help(
        "'shared' (reference: one exogenous bias for every context) or 'interventional' "
        "(intervened concepts take their own bias, so edits can shift them).",
        default="interventional",
    )
    composition: str = _help(
        "'reference' or 'strict' causal-layer compositions.", default="reference"
    )
    pooled: bool = _help("Ignore context labels: the 'CM pooled' ablation.", default=False)
    heads: str = _help(
        "Posterior and latent heads: 'mlp' (two hidden GELU layers) or 'linear' (the paper's).",
        default="mlp",
    )
    head_width: int = _help("Hidden width of the MLP heads.", default=256)
    beta: float = _help("Weight of the KL term.", default=1.0)
    loss: str = _help(
        "'latent' (cached latents, fast) or 'pixel' (through the frozen decoder).", default="latent"
    )
    sampler: str = _help(
        "'mixed' batches or 'context_pure' batches (one context each).", default="mixed"
    )
    group_sparsity: float = _help("Weight of the causal-layer group-sparsity penalty.", default=3.0)
    l2: float = _help("Weight of the causal-layer Frobenius-norm penalty.", default=0.0)
    sample_matching: float = _help(
        "Weight of the per-context sliced-Wasserstein term that fits prior samples of each "
        "context to that context's latents in the batch (ctxadapter.objective; not in the "
        "paper; 0: off).",
        default=4.0,
    )
    decoder_lora_rank: int = _help(
        "Rank of a LoRA on the decoder (the paper's fine-tune variant; needs --loss pixel). "
        "0: decoder frozen.",
        default=0,
    )
    unfreeze_decoder_after: float = _help(
        "Fraction of the training steps after which the decoder LoRA starts learning.", default=0.2
    )
    validation_epochs: int = _help(
        "Validation loss (for early stopping) every this many epochs.", default=1
    )
    early_stopping_patience: int = _help(
        "Stop after this many validations without improvement and restore the best weights "
        "(0: never stop early; the best weights are restored all the same).",
        default=20,
    )
    validation_steps: int = _help("Sample grids every this many steps.", default=500)
    validation_compositions: list[str] | None = _help(
        "Compositions shown in the sample grids. Default: quad's held-out compositions, or "
        "every pair of concepts (at most 12).",
        default=None,
    )
    num_validation_images: int = _help("Images per row of the sample grids.", default=8)
    checkpointing_steps: int = _help(
        "Save a resumable checkpoint every this many steps.", default=500
    )
    checkpoints_total_limit: int | None = _help("Keep at most this many checkpoints.", default=None)
    resume_from_checkpoint: str | None = _help(
        "A checkpoint folder, or 'latest' for the newest in --output_dir.", default=None
    )
    push_to_hub: bool = _help("Push the adapter folder to the Hub at the end.", default=False)
    hub_model_id: str | None = _help(
        "Hub repository (default: the output folder's name).", default=None
    )
    hub_token: str | None = _help("Hub token (default: the saved login).", default=None)


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
        group_sparsity=0.0,
    ),
}
"""Preset name -> the ``FinetuneArguments`` defaults it replaces."""


def parse_finetune_arguments(argv: list[str] | None = None) -> FinetuneArguments:
    """Parse ``examples/finetune.py``'s flags (``sys.argv`` by default): a ``--preset`` sets
    the defaults of its flags, then the flags given on the command line are applied."""
    parser = HfArgumentParser(FinetuneArguments)
    (args,) = parser.parse_args_into_dataclasses(argv)
    if args.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {tuple(PRESETS)}, got {args.preset!r}")
    parser.set_defaults(**PRESETS[args.preset])
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args


def check_finetune_arguments(args: FinetuneArguments) -> None:
    """Reject bad flag values before any work is done."""
    choices = {
        "loss": ("latent", "pixel"),
        "sampler": ("mixed", "context_pure"),
        "observational_mixing": ("dense", "block"),
        "composition": ("reference", "strict"),
        "heads": HEADS,
        "exogenous_bias": EXOGENOUS_BIASES,
        "preset": tuple(PRESETS),
    }
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise ValueError(f"--{name} must be one of {allowed}, got {getattr(args, name)!r}")
    if args.decoder_lora_rank and args.loss != "pixel":
        raise ValueError(
            "--decoder_lora_rank needs --loss pixel: the latent loss never runs the decoder."
        )
    for name in (
        "train_batch_size",
        "gradient_accumulation_steps",
        "validation_epochs",
        "validation_steps",
        "checkpointing_steps",
        "num_train_epochs",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.early_stopping_patience < 0:
        raise ValueError(
            f"--early_stopping_patience must be >= 0, got {args.early_stopping_patience}"
        )
    for name in ("beta", "group_sparsity", "l2", "sample_matching"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be >= 1, got {args.max_train_steps}")
    if not 0 <= args.unfreeze_decoder_after < 1:
        raise ValueError(
            f"--unfreeze_decoder_after must be in [0, 1), got {args.unfreeze_decoder_after}"
        )


def load_autoencoder(name_or_path: str, revision: str | None = None, subfolder: str | None = None):
    """Load a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` named by its config's
    ``_class_name``."""
    import diffusers

    config = AutoencoderKL.load_config(name_or_path, revision=revision, subfolder=subfolder)
    class_name = config.get("_class_name", "AutoencoderKL")
    supported = {c.__name__ for c in SUPPORTED_AUTOENCODERS}
    if class_name not in supported:
        raise ValueError(f"{name_or_path!r} is a {class_name}; supported: {sorted(supported)}.")
    return getattr(diffusers, class_name).from_pretrained(
        name_or_path, revision=revision, subfolder=subfolder
    )


class EarlyStopping:
    """Tracks the validation loss, counts rounds without improvement, and keeps the best
    trainable weights; saved in checkpoints (``accelerator.register_for_checkpointing``)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss = math.inf
        self.bad_rounds = 0
        self.best_state: dict[str, torch.Tensor] = {}

    def update(self, loss: float, state: dict[str, torch.Tensor]) -> bool:
        """Record a validation loss; returns True when training should stop."""
        if loss < self.best_loss:
            self.best_loss, self.bad_rounds = loss, 0
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
        else:
            self.bad_rounds += 1
        return self.patience > 0 and self.bad_rounds >= self.patience

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "bad_rounds": self.bad_rounds,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.bad_rounds = state["best_loss"], state["bad_rounds"]
        self.best_state = state["best_state"]


class NoiseGenerator:
    """The ``torch.Generator`` of the training noise, saved in checkpoints so that a resumed run
    draws exactly the noise an uninterrupted one would (the global generator is also drawn from
    by data loaders when they start an epoch, which differs between the two)."""

    def __init__(self, seed: int, device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The adapter's state (and the decoder LoRA's, if any): what a checkpoint keeps."""
    state = {f"adapter.{k}": v for k, v in model.adapter.state_dict().items()}
    state.update({k: v for k, v in model.state_dict().items() if "lora_" in k})
    return state


TRAINABLE_WEIGHTS_NAME = "trainable.safetensors"


def register_checkpoint_hooks(accelerator: Accelerator, model) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` keep only the trainable weights (the
    adapter and any decoder LoRA), never the frozen autoencoder, in safetensors."""
    import safetensors.torch

    def save(models, weights, output_dir):
        if accelerator.is_main_process:
            state = {k: v.contiguous() for k, v in trainable_state(model).items()}
            safetensors.torch.save_file(state, os.path.join(output_dir, TRAINABLE_WEIGHTS_NAME))
        weights.clear()

    def load(models, input_dir):
        state = safetensors.torch.load_file(os.path.join(input_dir, TRAINABLE_WEIGHTS_NAME))
        expected = set(trainable_state(model))
        if set(state) != expected:
            raise ValueError(
                f"Checkpoint {input_dir} does not match the model: missing "
                f"{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}."
            )
        model.load_state_dict(state, strict=False)
        models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def default_compositions(concepts: list[str], quad_data: bool) -> list[str]:
    """The compositions shown in sample grids by default."""
    if quad_data:
        from .quad import HELDOUT_COMPOSITIONS

        return list(HELDOUT_COMPOSITIONS)
    return all_pairs(concepts)[:12]


def training_objective(args: FinetuneArguments) -> Objective:
    """The one objective of a run: trained, validated (early stopping) and refitted alike."""
    return Objective(
        reconstruction=args.loss,
        beta=args.beta,
        sample_matching=args.sample_matching,
        group_sparsity=args.group_sparsity,
        l2=args.l2,
    )


@torch.no_grad()
def validation_loss(model, loader, args: FinetuneArguments) -> float:
    """Mean loss over the validation batches (eval mode, fixed noise)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=model.adapter.latent_log_scale.device).manual_seed(0)
    total, count = 0.0, 0
    for batch in loader:
        out = model(
            batch["contexts"],
            latents=batch["latents"],
            pixel_values=batch.get("pixel_values"),
            objective=training_objective(args),
            generator=generator,
        )
        total += out["loss"].item() * len(batch["latents"])
        count += len(batch["latents"])
    model.train(was_training)
    return total / max(count, 1)


def finetune(args: FinetuneArguments) -> Path:
    """Train a context adapter on a frozen autoencoder and write the output folder.

    Everything is validated before anything is written: the flags, the data (columns,
    contexts), the autoencoder and the resolution. Returns the output folder, which holds the
    adapter (``config.json``, ``model.safetensors``, ``README.md``), the sample grids, the
    concept-graph picture, ``metrics.json``, ``logs/`` and ``checkpoint-<step>/`` folders.
    """
    inputs = _resolve_inputs(args)
    set_seed(args.seed)
    adapter = _build_adapter(args, inputs)
    accelerator = make_accelerator(
        args, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )
    train_data, validation_data = _cached_latents(args, inputs, accelerator)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    model = ContextAutoencoder(inputs.codec, adapter)
    if args.decoder_lora_rank:
        model.add_decoder_lora(args.decoder_lora_rank)
    model.to(accelerator.device)
    run = _prepare_run(args, accelerator, model, train_data, validation_data)
    outcome = _train(args, run, ["obs", *inputs.concepts, *inputs.compositions])
    _write_outputs(args, run, inputs, outcome)
    accelerator.end_training()
    return Path(args.output_dir)


@dataclass
class _FinetuneInputs:
    """What ``finetune`` resolves and checks before it writes anything: the training and
    validation rows, the concept names, the canonical context of every row, the frozen
    autoencoder's codec, the image resolution with its latent shape ``(C, h, w)``, and the
    compositions shown in the sample grids."""

    train: datasets.Dataset
    validation: datasets.Dataset
    concepts: list[str]
    train_contexts: list[str]
    validation_contexts: list[str]
    codec: LatentCodec
    resolution: int
    latent_shape: tuple[int, int, int]
    compositions: list[str]


def _resolve_inputs(args: FinetuneArguments) -> _FinetuneInputs:
    """Check the flags, load and validate the data and the autoencoder, and settle the
    resolution and the sample-grid compositions; raises on bad input and writes nothing. With
    the built-in quad data and no ``--concepts``, sets ``args.concepts`` to quad's concepts."""
    check_finetune_arguments(args)
    if args.pretrained_model_name_or_path is None:
        raise ValueError("--pretrained_model_name_or_path is required.")
    if not args.concepts and quad_default(args):
        from .quad import CONCEPTS

        args.concepts = list(CONCEPTS)
    train, validation, concepts, train_contexts, validation_contexts = load_splits(
        args, args.concepts
    )
    autoencoder = load_autoencoder(
        args.pretrained_model_name_or_path, args.revision, args.subfolder
    )
    codec = LatentCodec(autoencoder)
    resolution = args.resolution or getattr(autoencoder.config, "sample_size", None)
    if resolution is None:
        raise ValueError(f"{type(autoencoder).__name__} records no sample_size: pass --resolution.")
    latent_shape = codec.latent_shape(resolution)
    compositions = args.validation_compositions or default_compositions(
        concepts, quad_default(args)
    )
    for context in compositions:
        parse_context(context, concepts)  # raises on an unknown concept
    return _FinetuneInputs(
        train=train,
        validation=validation,
        concepts=concepts,
        train_contexts=train_contexts,
        validation_contexts=validation_contexts,
        codec=codec,
        resolution=resolution,
        latent_shape=latent_shape,
        compositions=compositions,
    )


def _build_adapter(args: FinetuneArguments, inputs: _FinetuneInputs) -> CtxAdapter:
    """A freshly initialised adapter (drawn from the global torch generator) for the data's
    concepts and the autoencoder's latent shape, recording the base autoencoder."""
    return CtxAdapter(
        concepts=inputs.concepts,
        latent_shape=list(inputs.latent_shape),
        exogenous_width=args.exogenous_width,
        concept_width=args.concept_width,
        expressive_depth=args.expressive_depth,
        observational_mixing=args.observational_mixing,
        exogenous_bias=args.exogenous_bias,
        composition=args.composition,
        pooled=args.pooled,
        heads=args.heads,
        head_width=args.head_width,
        base_model=base_model_record(
            inputs.codec.autoencoder,
            args.pretrained_model_name_or_path,
            args.revision,
            args.subfolder,
        ),
    )


def _cached_latents(
    args: FinetuneArguments, inputs: _FinetuneInputs, accelerator: Accelerator
) -> tuple[CachedLatents, CachedLatents]:
    """The training and validation rows as ``CachedLatents`` datasets. Their latents (and, for
    ``--loss pixel``, their pixels) are encoded once into the latent cache under
    ``--cache_dir``, by the main process first so that the others reuse its files."""
    cache_root = os.path.join(
        args.cache_dir or datasets.config.HF_DATASETS_CACHE, "ctxadapter-latents"
    )
    splits = (
        (inputs.train, inputs.train_contexts),
        (inputs.validation, inputs.validation_contexts),
    )
    with accelerator.main_process_first():
        train_cache, validation_cache = (
            cache_latents(
                rows,
                inputs.codec,
                contexts,
                args.image_column,
                inputs.resolution,
                cache_root,
                keep_pixels=args.loss == "pixel",
            )
            for rows, contexts in splits
        )
    return (
        CachedLatents(train_cache, inputs.concepts),
        CachedLatents(validation_cache, inputs.concepts),
    )


@dataclass
class _TrainingRun:
    """A fine-tuning run ready to train: ``model``, ``optimizer``, ``loader`` and ``scheduler``
    as ``accelerator.prepare`` returned them, ``unwrapped`` the bare ``ContextAutoencoder``,
    the training batches' ``sampler`` (reshuffled every epoch), the validation loader, the
    checkpointed early-stopping and noise state, and the optimizer steps per epoch and in all."""

    accelerator: Accelerator
    model: torch.nn.Module
    unwrapped: ContextAutoencoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: ContextBatchSampler
    loader: torch.utils.data.DataLoader
    validation_loader: torch.utils.data.DataLoader
    stopper: EarlyStopping
    noise: NoiseGenerator
    epoch_steps: int
    total_steps: int


def _prepare_run(
    args: FinetuneArguments,
    accelerator: Accelerator,
    model: ContextAutoencoder,
    train_data: CachedLatents,
    validation_data: CachedLatents,
) -> _TrainingRun:
    """Build the data loaders, the step counts, the optimizer (Adam over the trainable
    parameters), the learning-rate schedule, early stopping and the training noise; prepare them
    with ``accelerator`` and register what a checkpoint keeps (only the trainable weights)."""
    sampler = ContextBatchSampler(
        train_data.context_ids, args.train_batch_size, args.sampler, seed=args.seed
    )
    loader = torch.utils.data.DataLoader(
        train_data,
        batch_sampler=sampler,
        collate_fn=collate_batch,
        num_workers=args.dataloader_num_workers,
    )
    validation_loader = torch.utils.data.DataLoader(
        validation_data,
        batch_sampler=torch.utils.data.BatchSampler(
            range(len(validation_data)), args.train_batch_size, drop_last=False
        ),
        collate_fn=collate_batch,
    )
    epoch_steps = count_steps(
        len(sampler), accelerator.num_processes, args.gradient_accumulation_steps
    )
    total_steps = args.max_train_steps or args.num_train_epochs * epoch_steps
    optimizer = make_optimizer(model, args.learning_rate)
    scheduler = make_scheduler(args, optimizer, total_steps)
    stopper = EarlyStopping(args.early_stopping_patience)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    noise = NoiseGenerator(args.seed + accelerator.process_index, accelerator.device)
    accelerator.register_for_checkpointing(stopper, noise)
    unwrapped = accelerator.unwrap_model(model)
    register_checkpoint_hooks(accelerator, unwrapped)
    return _TrainingRun(
        accelerator=accelerator,
        model=model,
        unwrapped=unwrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        loader=loader,
        validation_loader=validation_loader,
        stopper=stopper,
        noise=noise,
        epoch_steps=epoch_steps,
        total_steps=total_steps,
    )


def _resume(args: FinetuneArguments, run: _TrainingRun) -> tuple[int, int, int]:
    """Load ``--resume_from_checkpoint`` into the run, if given (``"latest"`` with no
    checkpoint yet starts afresh). Returns ``(global_step, first_epoch, skip_batches)``: the
    optimizer steps already done, the epoch they end in and the batches of that epoch already
    consumed (all 0 when starting afresh)."""
    checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is None:
        return 0, 0, 0
    run.accelerator.load_state(str(checkpoint))
    global_step = int(CHECKPOINT_PATTERN.match(checkpoint.name).group(1))
    run.accelerator.print(f"Resumed from {checkpoint} at step {global_step}.")
    return (
        global_step,
        global_step // run.epoch_steps,
        (global_step % run.epoch_steps) * args.gradient_accumulation_steps,
    )


@dataclass
class _Outcome:
    """How training went: the first entries of ``metrics.json``. ``epochs_completed`` counts the
    epochs of this run (a resumed run starts at its checkpoint's epoch) and
    ``validation_history`` holds ``{"step", "validation_loss"}`` dicts."""

    steps: int
    epochs_completed: int
    stopped_early: bool
    best_validation_loss: float
    validation_history: list[dict]


def _train(args: FinetuneArguments, run: _TrainingRun, grid_contexts: list[str]) -> _Outcome:
    """The training loop, resumed from ``--resume_from_checkpoint`` if given: optimizer steps
    until ``total_steps`` (the decoder LoRA, if any, frozen for the first
    ``--unfreeze_decoder_after`` of them), a validation loss every ``--validation_epochs``
    epochs and at the end, and early stopping. Ends with the best weights (by validation loss)
    restored and the model in eval mode. ``grid_contexts`` are the rows of the sample grids."""
    accelerator, unwrapped = run.accelerator, run.unwrapped
    objective = training_objective(args)
    global_step, first_epoch, skip_batches = _resume(args, run)
    if accelerator.is_main_process:
        accelerator.init_trackers("ctxadapter", config=tracker_config(args))
    num_epochs = math.ceil(run.total_steps / run.epoch_steps)
    unfreeze_step = int(args.unfreeze_decoder_after * run.total_steps)
    lora_params = [p for n, p in unwrapped.named_parameters() if "lora_" in n]
    progress = tqdm(
        range(run.total_steps),
        initial=global_step,
        desc="Training adapter",
        disable=not accelerator.is_local_main_process,
    )
    history: list[dict] = []
    stop, epoch = False, first_epoch
    for epoch in range(first_epoch, num_epochs):
        run.model.train()
        run.sampler.shuffle_for_epoch(epoch)
        batches = (
            accelerator.skip_first_batches(run.loader, skip_batches)
            if epoch == first_epoch and skip_batches
            else run.loader
        )
        for batch in batches:
            with accelerator.accumulate(run.model):
                out = run.model(
                    batch["contexts"],
                    latents=batch["latents"],
                    pixel_values=batch.get("pixel_values"),
                    objective=objective,
                    generator=run.noise.generator,
                )
                accelerator.backward(out["loss"])
                if lora_params and global_step < unfreeze_step:
                    for p in lora_params:
                        p.grad = None
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad()
                if accelerator.sync_gradients:
                    unwrapped.adapter.apply_constraints_()
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            _after_optimizer_step(args, run, out, global_step, progress, grid_contexts)
            if global_step >= run.total_steps:
                break
        if (epoch + 1) % args.validation_epochs == 0 or global_step >= run.total_steps:
            loss = validation_loss(unwrapped, run.validation_loader, args)
            history.append({"step": global_step, "validation_loss": loss})
            accelerator.log({"validation_loss": loss}, step=global_step)
            stop = run.stopper.update(loss, trainable_state(unwrapped))
        if stop or global_step >= run.total_steps:
            break
    progress.close()
    if run.stopper.best_state:
        unwrapped.load_state_dict(run.stopper.best_state, strict=False)
    unwrapped.eval()
    return _Outcome(
        steps=global_step,
        epochs_completed=epoch + 1 - first_epoch,
        stopped_early=stop,
        best_validation_loss=run.stopper.best_loss,
        validation_history=history,
    )


def _after_optimizer_step(
    args: FinetuneArguments,
    run: _TrainingRun,
    out: dict[str, torch.Tensor],
    global_step: int,
    progress: tqdm,
    grid_contexts: list[str],
) -> None:
    """Report optimizer step ``global_step`` (``out``: the model's outputs on its last batch):
    advance ``progress``, log the losses and the learning rate, save a checkpoint every
    ``--checkpointing_steps`` (pruned to ``--checkpoints_total_limit``) and, on the main
    process, a sample grid of ``grid_contexts`` every ``--validation_steps``."""
    accelerator = run.accelerator
    progress.update(1)
    logs = {k: v.item() for k, v in out.items()} | {"lr": run.scheduler.get_last_lr()[0]}
    progress.set_postfix(loss=f"{logs['loss']:.4g}")
    accelerator.log(logs, step=global_step)
    if global_step % args.checkpointing_steps == 0:
        if accelerator.is_main_process:
            prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{global_step}"))
    if global_step % args.validation_steps == 0 and accelerator.is_main_process:
        grid = context_grid(
            run.unwrapped, grid_contexts, args.num_validation_images, seed=args.seed
        )
        grid.save(Path(args.output_dir) / f"samples-{global_step}.png")
        _log_image(accelerator, "samples", grid, global_step)


def _write_outputs(
    args: FinetuneArguments, run: _TrainingRun, inputs: _FinetuneInputs, outcome: _Outcome
) -> None:
    """On the main process, write the output folder: the pictures of ``write_report``, the
    adapter (``save_pretrained``, with its model card) and ``metrics.json``; then push the
    adapter to the Hub if ``--push_to_hub``."""
    accelerator, model = run.accelerator, run.unwrapped
    if not accelerator.is_main_process:
        return
    output = Path(args.output_dir)
    files = write_report(
        model,
        output,
        num_samples=args.num_validation_images,
        seed=args.seed,
        compositions=inputs.compositions,
    )
    _log_image(
        accelerator,
        "concept_graph",
        concept_graph_image(model.adapter.concept_graph(), inputs.concepts),
        outcome.steps,
    )
    model.save_pretrained(output, model_card_kwargs={"sample_grid": "contexts.png"})
    metrics = asdict(outcome) | {
        "concepts": inputs.concepts,
        "train_images": len(inputs.train),
        "validation_images": len(inputs.validation),
        "pictures": sorted(Path(p).name for p in files.values()),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if args.push_to_hub:
        model.push_to_hub(args.hub_model_id or output.name, token=args.hub_token)


def _log_image(accelerator: Accelerator, tag: str, image, step: int) -> None:
    """Send a PIL image to the tensorboard tracker, if there is one."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
