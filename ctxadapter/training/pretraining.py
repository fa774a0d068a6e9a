"""The pretraining loop behind ``examples/pretrain_autoencoder.py``: a small diffusers
``AutoencoderKL`` trained from scratch on the images of any dataset (contexts pooled), such as
the quad autoencoder that ships with ctxadapter."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from ..evaluation.metrics import psnr
from ..images import preprocess_images
from ..processes import process_state
from .args import ImageDataArguments, OptimizationArguments, RunArguments
from .flags import check_at_least, flag
from .inputs import load_splits
from .optimization import make_scheduler
from .output_dir import check_output_dir, output_lock, staged_folder
from .tracking import make_accelerator, tracker_config

logger = logging.getLogger(__name__)


@dataclass
class PretrainArguments(RunArguments, OptimizationArguments, ImageDataArguments):
    """Flags of ``examples/pretrain_autoencoder.py``: a small ``AutoencoderKL`` trained on the
    images of any dataset (contexts pooled)."""

    output_dir: str | None = flag(
        "Where the diffusers AutoencoderKL folder is written. Default: named after the data, "
        "'<dataset or image folder name>-autoencoder' ('quad-autoencoder' for the built-in "
        "quad data).",
        default=None,
    )
    train_batch_size: int = flag("Batch size per device.", default=32)
    max_train_steps: int | None = flag("Total optimizer steps.", default=1000)
    lr_warmup_steps: int = flag("Linear warm-up steps.", default=100)
    learning_rate: float = flag("Peak learning rate (AdamW).", default=1e-3)
    dataloader_num_workers: int = flag("Image decoding worker processes.", default=0)
    block_out_channels: list[int] = flag(
        "Channels per resolution level; n levels downsample by 2**(n-1).",
        default_factory=lambda: [16, 32, 64, 64],
    )
    layers_per_block: int = flag("ResNet layers per level.", default=1)
    latent_channels: int = flag("Latent channels.", default=4)
    norm_num_groups: int = flag("GroupNorm groups.", default=8)
    kl_weight: float = flag("Weight of the KL term against the per-pixel MSE.", default=1e-6)
    validation_steps: int = flag(
        "Log the held-out PSNR every this many steps (0: only at the end).", default=1000
    )

    @property
    def autoencoder_dir(self) -> str:
        """``output_dir``, or the folder named after the data."""
        if self.output_dir:
            return self.output_dir
        data = self.dataset_name or self.train_data_dir
        return f"{Path(data).resolve().name if data else 'quad'}-autoencoder"

    def validate(self) -> None:
        super().validate()
        if self.max_train_steps is None:
            raise ValueError("--max_train_steps must be a positive integer, got None")
        check_at_least(self, 0, "dataloader_num_workers", "validation_steps", "kl_weight")
        check_at_least(self, 1, "layers_per_block", "latent_channels", "norm_num_groups")
        resolution = self.resolution or 64
        factor = 2 ** (len(self.block_out_channels) - 1)
        if resolution % factor:
            raise ValueError(f"--resolution {resolution} must be a multiple of {factor}.")


def pretrain_autoencoder(args: PretrainArguments) -> AutoencoderKL:
    """Train an ``AutoencoderKL`` from scratch on the dataset's images (every context pooled),
    set its ``scaling_factor`` to ``1 / std`` of the latents, and save it to ``output_dir``
    (default: named after the data, ``PretrainArguments.autoencoder_dir``), which is locked for
    the run (``output_lock``: a second run into it is refused). A ``--train_batch_size`` larger
    than the training images becomes their number, with a note."""
    args.validate()  # the fields may have been changed since construction
    args = dataclasses.replace(args, output_dir=args.autoencoder_dir)
    with output_lock(args.output_dir, enabled=process_state().is_main_process):
        return pretrain_locked(args)


def pretrain_locked(args: PretrainArguments) -> AutoencoderKL:
    """The body of ``pretrain_autoencoder``, once the output folder is locked
    (``ctxadapter.training.output_dir.output_lock``)."""
    check_output_dir(args.output_dir, args.overwrite_output_dir, resuming=False)
    train, validation, *_ = load_splits(args, args.seed)
    batch_size = min(args.train_batch_size, len(train))  # incomplete batches are dropped
    resolution = args.resolution or 64
    levels = len(args.block_out_channels)
    accelerator = make_accelerator(args)
    if batch_size < args.train_batch_size:
        accelerator.print(
            f"--train_batch_size {args.train_batch_size} is larger than the {len(train)} "
            f"training images: training with batches of {batch_size} (one per epoch)."
        )
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

    def collate(indices):
        return preprocess_images(train[indices][args.image_column], resolution)

    loader = torch.utils.data.DataLoader(
        range(len(train)),
        batch_size=batch_size,
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
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"Pretraining diverged: the loss is {loss.item()} at step {step}. "
                        f"Nothing was saved; try a lower --learning_rate."
                    )
                progress.set_postfix(mse=f"{mse.item():.4f}")
                accelerator.log({"mse": mse.item(), "kl": kl.item()}, step=step)
                if args.validation_steps and step % args.validation_steps == 0:
                    unwrapped = accelerator.unwrap_model(vae).eval()
                    psnr = autoencoder_metrics(
                        unwrapped, validation, args.image_column, resolution, 256
                    )["validation_psnr_db"]
                    unwrapped.train()
                    accelerator.log({"validation_psnr_db": psnr}, step=step)
                    progress.write(f"step {step}: held-out PSNR {psnr:.2f} dB")
                if step >= args.max_train_steps:
                    break
    vae = accelerator.unwrap_model(vae).eval()
    metrics = autoencoder_metrics(vae, validation, args.image_column, resolution)
    vae.register_to_config(scaling_factor=metrics["scaling_factor"])
    if accelerator.is_main_process:  # written beside the folder, then moved into place
        with staged_folder(args.output_dir) as partial:
            vae.save_pretrained(partial)
            (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        logger.info("Autoencoder saved to %s: %s", args.output_dir, metrics)
    accelerator.end_training()
    return vae


@torch.no_grad()
def autoencoder_metrics(
    vae,
    validation: datasets.Dataset,
    image_column: str,
    resolution: int,
    max_images: int = 512,
) -> dict:
    """Held-out PSNR of the reconstructions and the latent scaling factor ``1 / std``."""
    rows = validation.select(range(min(max_images, len(validation))))
    latents, psnrs = [], []
    for start in range(0, len(rows), 64):
        pixels = preprocess_images(rows[start : start + 64][image_column], resolution)
        pixels = pixels.to(vae.device, vae.dtype)
        mean = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(mean).sample.clamp(-1, 1)
        latents.append(mean.float().cpu())
        psnrs.append(psnr(decoded.float().cpu(), pixels.float().cpu(), 2.0, reduction="none"))
    return {
        "validation_psnr_db": round(torch.cat(psnrs).mean().item(), 3),
        "validation_images": len(rows),
        "scaling_factor": round(1.0 / torch.cat(latents).std().item(), 5),
    }
