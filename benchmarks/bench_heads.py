"""The heads at real latent sizes: parameters, file size and the cached-latent training step of
each kind of head (``linear``, ``mlp``, ``conv``; ``auto`` picks ``mlp`` below 4,096 latent
values and ``conv`` from there) for the latents of a 256 px and a 512 px Stable Diffusion image
(4 x 32 x 32, 4 x 64 x 64) and of a 512 px SD3 / FLUX.1 image (16 x 64 x 64).

The step's FLOPs are counted by ``torch.utils.flop_counter`` (forward and backward of the
whole adapter and objective) and set against a large float32 matrix product on this machine
(``arith_ratio``: the fraction of that limit the step achieves). Six concepts, the default
widths, 7 contexts mixed in the batch.

    python benchmarks/bench_heads.py
    python benchmarks/bench_heads.py --smoke
"""

from __future__ import annotations

import os
import tempfile

import torch
from common import adam, context_model, matmul_flops_per_s, mixed_mask, train_step
from harness import measure, milliseconds, parser, report, setup
from torch.utils.flop_counter import FlopCounterMode

SHAPES = [(4, 32, 32), (4, 64, 64), (16, 64, 64)]
KINDS = ["linear", "mlp", "conv"]


def step_flops(step) -> int:
    """FLOPs of one call of ``step`` (forward and backward), as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def file_megabytes(adapter) -> float:
    with tempfile.TemporaryDirectory() as folder:
        adapter.save_pretrained(folder)
        return os.path.getsize(os.path.join(folder, "model.safetensors")) / 1e6


def main(argv=None) -> dict:
    p = parser(__doc__, batch=64)
    args = setup(p.parse_args(argv), repeats=5, smoke_batch=8)
    shapes = [(4, 16, 16)] if args.smoke else SHAPES
    limit = matmul_flops_per_s(1024 if args.smoke else 2048)
    rows = []
    for shape in shapes:
        latents = torch.randn(args.batch, *shape)
        for kind in KINDS:
            model = context_model(6, shape, heads=kind)
            names = model.adapter.concepts
            mask = mixed_mask(names, ["obs", *names], args.batch)
            step = train_step(model, adam(model), mask, latents)
            timing = measure(step, args.repeats, warmup=2, min_time=0 if args.smoke else 0.5)
            flops = step_flops(step)
            achieved = flops / timing["median"]
            rows.append(
                dict(
                    latent="x".join(map(str, shape)),
                    heads=kind,
                    params_m=sum(p.numel() for p in model.adapter.parameters()) / 1e6,
                    file_mb=file_megabytes(model.adapter),
                    batch=args.batch,
                    **milliseconds(timing),
                    samples_per_s=args.batch / timing["median"],
                    gflop_per_sample=flops / args.batch / 1e9,
                    gflop_per_s=achieved / 1e9,
                    arith_ratio=achieved / limit,
                )
            )
            print(rows[-1], flush=True)
    settings = dict(concepts=6, contexts=7, matmul_gflop_per_s=round(limit / 1e9, 1))
    notes = [
        "arith_ratio: the step's counted FLOP/s over a 2048 x 2048 float32 matrix product's",
        "file_mb: model.safetensors of the adapter (float32)",
    ]
    return report("heads", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
