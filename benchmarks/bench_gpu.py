"""GPU throughput in one table: the encode pass of the Stable Diffusion VAE architecture (images/s
at 256 and 512 px in float16 and bfloat16), the default training step at SD-scale latents
(samples/s, latent loss), the pixel-loss step through the SD VAE decoder, and the default quad
run of ``examples/finetune.py`` end to end (seconds).

The SD VAE is its architecture (``common.SD_CONFIG``: 128/256/512/512 channels, two layers per
block, 4 latent channels) with random weights, which time the same as the real ones; nothing is
downloaded. An encode row is ``LatentCodec.encode_distribution`` on a batch already on the
device (what the latent cache runs per batch; reading the images is not timed). A step is what
``finetune`` does per batch (``common.train_step``): 7 contexts mixed, the default adapter and
objective. GPU work is timed between ``torch.cuda.synchronize()`` calls. The quad run is
``finetune`` with every default (14,000 images encoded by the shipped quad autoencoder, 100
epochs at most) into a temporary folder, one run, wall clock.

    benchmarks/gpu.sh                          # one GPU, under 8 minutes (not measured yet)
    python benchmarks/bench_gpu.py --smoke     # seconds on a CPU: tiny sizes (CI)
"""

from __future__ import annotations

import tempfile
import time

import torch
from common import adam, autoencoder, context_model, mixed_mask, train_step
from harness import measure, parser, per_second, report, setup

from ctxadapter.codec import LatentCodec
from ctxadapter.data.quad import TRAIN_CONTEXTS
from ctxadapter.images import unit_to_signed


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    """``fn`` followed by a device synchronisation, so that its GPU work is inside the timing."""

    def run() -> None:
        fn()
        synchronize()

    return run


def encode_row(
    device: torch.device, dtype: str, resolution: int, batch: int, smoke: bool, repeats: int
) -> dict:
    codec = LatentCodec(autoencoder("sd", smoke).to(device, getattr(torch, dtype)))
    images = unit_to_signed(torch.rand(batch, 3, resolution, resolution, device=device))
    with torch.no_grad():
        timing = measure(timed(lambda: codec.encode_distribution(images)), repeats, warmup=2)
    return dict(
        what="encode (SD VAE)",
        setting=f"{resolution} px, {dtype}",
        batch=batch,
        **per_second(timing, batch, "per_s"),
        unit="images/s",
    )


def step_row(
    device: torch.device,
    loss: str,
    resolution: int,
    batch: int,
    smoke: bool,
    repeats: int,
    vae_dtype: str = "float32",
) -> dict:
    vae = (
        autoencoder("sd", smoke).to(device, getattr(torch, vae_dtype)) if loss == "pixel" else None
    )
    latent_shape = (4, resolution // 8, resolution // 8)
    model = context_model(6, latent_shape, vae=vae).to(device)
    mask = mixed_mask(model.adapter.concepts, list(TRAIN_CONTEXTS), batch).to(device)
    latents = torch.randn(batch, *latent_shape, device=device)
    pixels = None
    if loss == "pixel":
        pixels = unit_to_signed(torch.rand(batch, 3, resolution, resolution, device=device))
    step = train_step(model, adam(model), mask, latents, pixels, loss)
    timing = measure(timed(step), repeats, warmup=3)
    setting = "x".join(map(str, latent_shape)) + " latents, 7 contexts mixed"
    if loss == "pixel":
        setting += f", {resolution} px decoder in {vae_dtype}"
    return dict(
        what=f"training step, {loss} loss",
        setting=setting,
        batch=batch,
        **per_second(timing, batch, "per_s"),
        unit="samples/s",
    )


def quad_run_row(smoke: bool) -> dict:
    """The default ``examples/finetune.py`` run (``--smoke``: 4 images per context, batches
    of 8, 2 steps)."""
    from ctxadapter.training import FinetuneArguments, finetune

    small = dict(quad_images_per_context=4, train_batch_size=8, max_train_steps=2)
    with tempfile.TemporaryDirectory() as folder:
        args = FinetuneArguments(
            output_dir=f"{folder}/out",
            cache_dir=f"{folder}/cache",
            report_to="none",
            **(small if smoke else {}),
        )
        start = time.perf_counter()
        finetune(args)
        seconds = time.perf_counter() - start
    return dict(
        what="default quad run, end to end",
        setting="smoke: 4 images per context, batch 8, 2 steps" if smoke else "all defaults",
        batch=args.train_batch_size,
        seconds=seconds,
        unit="s (one run)",
    )


def main(argv=None) -> dict:
    p = parser(__doc__)
    args = setup(p.parse_args(argv), repeats=5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    sizes = [32, 64] if args.smoke else [256, 512]
    encode_batch = {32: 2, 64: 2, 256: 32, 512: 8}
    dtypes = ["float16", "bfloat16"]
    rows = [
        encode_row(device, dtype, size, encode_batch[size], args.smoke, args.repeats)
        for size in sizes
        for dtype in dtypes
    ]
    for size in sizes:
        batch = 16 if args.smoke else 512
        rows.append(step_row(device, "latent", size, batch, args.smoke, args.repeats))
    pixel_size, pixel_batch = (32, 2) if args.smoke else (256, 8)
    for vae_dtype in ("float32", "bfloat16"):
        rows.append(
            step_row(device, "pixel", pixel_size, pixel_batch, args.smoke, args.repeats, vae_dtype)
        )
    rows.append(quad_run_row(args.smoke))
    for row in rows:
        print(row, flush=True)
    settings = dict(
        device=str(device),
        autoencoder="SD VAE architecture, random weights"
        + (" (tiny, smoke)" if args.smoke else ""),
        adapter="the finetune defaults (common.context_model)",
    )
    notes = [
        "per_s: items per second of the median run (min: the slowest run, max: the fastest); "
        "the quad run is one run",
    ]
    return report("gpu", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
