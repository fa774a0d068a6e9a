"""Training-step throughput (samples/s) of one adapter (K=6, widths 32/8, depth 2): cached
latents with the ``latent`` loss against the ``pixel`` loss through the frozen decoder, on the
quad autoencoder (64x64 -> 4x8x8) and on the Stable Diffusion VAE architecture (64x64 and
256x256, random weights).

A step is what ``finetune`` does per batch: forward, backward, Adam, ``apply_constraints_``.
Contexts are a ``(N, K)`` mask (the obs context alone, or quad's 7 training contexts mixed);
one row passes per-sample context strings instead, to show the cost of parsing them, and one
runs the step under bfloat16 autocast, as ``--mixed_precision bf16`` does on the CPU. The pixel
loss is far slower per sample, so it runs at a smaller batch (samples/s barely depends on it).

    python benchmarks/bench_train_step.py            # ~8 min on one core
    python benchmarks/bench_train_step.py --smoke    # seconds
"""

from __future__ import annotations

import torch
from common import WIDTHS, adam, autoencoder, context_model, mixed_mask, train_step
from harness import measure, parser, per_second, report, setup

from ctxadapter.data.quad import TRAIN_CONTEXTS
from ctxadapter.images import unit_to_signed


def run_row(
    vae,
    name: str,
    resolution: int,
    loss: str,
    batch: int,
    contexts: str,
    repeats: int,
    smoke: bool,
    precision: str,
) -> dict:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (4, resolution // factor, resolution // factor)
    model = context_model(6, latent_shape, vae=vae)
    names = model.adapter.concepts
    spread = ["obs"] if contexts.startswith("obs") else list(TRAIN_CONTEXTS)
    mask = mixed_mask(names, spread, batch)
    given = mask
    if contexts.endswith("strings"):
        given = [spread[i % len(spread)] for i in range(batch)]
    latents = torch.randn(batch, *latent_shape)
    pixels = None
    if loss == "pixel":
        pixels = unit_to_signed(torch.rand(batch, 3, resolution, resolution))
    step = train_step(model, adam(model), given, latents, pixels, loss)
    if precision == "bf16":  # what --mixed_precision bf16 does on the CPU: autocast the step
        plain = step

        def step() -> None:
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                plain()

    min_time = 0.0 if smoke or loss == "pixel" else 0.5
    timing = measure(step, repeats, warmup=2 if loss == "latent" else 1, min_time=min_time)
    return dict(
        autoencoder=name,
        image=f"{resolution}x{resolution}",
        latent="x".join(map(str, latent_shape)),
        loss=loss,
        contexts=contexts,
        precision=precision,
        batch=batch,
        step_ms=timing["median"] * 1e3,
        **per_second(timing, batch),
    )


def main(argv=None) -> dict:
    p = parser(__doc__, batch=512, batch_help="batch of the latent loss")
    args = setup(p.parse_args(argv), repeats=5, smoke_batch=32)
    batch = args.batch
    quad, sd = autoencoder("quad", args.smoke), autoencoder("sd", args.smoke)
    sd_high = 128 if args.smoke else 256
    plan = [  # (vae, name, resolution, loss, batch, contexts, precision)
        (quad, "quad", 64, "latent", batch, "obs", "fp32"),
        (quad, "quad", 64, "latent", batch, "7 mixed", "fp32"),
        (quad, "quad", 64, "latent", batch, "7 mixed", "bf16"),
        (quad, "quad", 64, "latent", batch, "7 mixed, strings", "fp32"),
        (quad, "quad", 64, "pixel", 4 if args.smoke else 64, "7 mixed", "fp32"),
        (sd, "sd-vae", 64, "latent", batch, "7 mixed", "fp32"),
        (sd, "sd-vae", 64, "pixel", 2 if args.smoke else 8, "7 mixed", "fp32"),
        (sd, "sd-vae", sd_high, "latent", batch, "7 mixed", "fp32"),
        (sd, "sd-vae", sd_high, "pixel", 2, "7 mixed", "fp32"),
    ]
    rows = []
    for vae, name, resolution, loss, size, contexts, precision in plan:
        repeats = min(args.repeats, 3) if loss == "pixel" else args.repeats
        rows.append(
            run_row(vae, name, resolution, loss, size, contexts, repeats, args.smoke, precision)
        )
        print(rows[-1], flush=True)
    for row in rows:
        same = [
            r
            for r in rows
            if r["autoencoder"] == row["autoencoder"]
            and r["image"] == row["image"]
            and r["loss"] == "latent"
            and r["contexts"] == "7 mixed"
            and r["precision"] == "fp32"
        ]
        if same:
            row["latent_speedup"] = same[0]["samples_per_s"] / row["samples_per_s"]
    settings = dict(
        K=6,
        **WIDTHS,
        optimizer="Adam(lr=1e-3)",
        weights="random"
        if args.smoke
        else "quad: ctxadapter/assets/quad-autoencoder if present else random; sd: random",
    )
    notes = [
        "samples_per_s is the median over repeats; min/max are the slowest/fastest run",
        "latent_speedup: samples/s of the latent loss (7 mixed) over this row's",
    ]
    return report("train_step", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
