"""Scaling with the number of concepts K: training-step time of a batch of 512 cached latents
(4x8x8, widths 32/8, depth 2) for K = 3, 6, 12, 24, with the observational context alone and
with K+1 contexts mixed (obs and every single intervention, as a mixed sampler gives).

The context layers are dense ``(K*w, K*w)`` products with masks, so their FLOPs grow as K^2 while
the heads grow as K; the table shows where that starts to matter.

    python benchmarks/bench_scaling_k.py
    python benchmarks/bench_scaling_k.py --smoke
"""

from __future__ import annotations

import torch
from common import WIDTHS, adam, context_model, mixed_mask, step_flops, train_step
from harness import measure, milliseconds, parser, report, setup


def main(argv=None) -> dict:
    p = parser(__doc__, batch=512)
    p.add_argument("--ks", type=int, nargs="+", default=[3, 6, 12, 24])
    args = setup(p.parse_args(argv), repeats=7, smoke_batch=64)
    batch = args.batch
    ks = [3, 6] if args.smoke else args.ks
    latents = torch.randn(batch, 4, 8, 8)
    rows = []
    for k in ks:
        for label in ("obs", f"{k + 1} mixed"):
            model = context_model(k, (4, 8, 8))
            names = model.adapter.concepts
            contexts = ["obs"] if label == "obs" else ["obs", *names]
            mask = mixed_mask(names, contexts, batch)
            step = train_step(model, adam(model), mask, latents)
            timing = measure(step, args.repeats, warmup=3, min_time=0 if args.smoke else 0.5)
            flops = step_flops(model.adapter, mask)
            rows.append(
                dict(
                    K=k,
                    contexts=label,
                    batch=batch,
                    **milliseconds(timing),
                    samples_per_s=batch / timing["median"],
                    mflop_per_sample=flops / 1e6,
                    gflop_per_s=flops * batch / timing["median"] / 1e9,
                )
            )
            print(rows[-1], flush=True)
    settings = dict(latent="4x8x8", **WIDTHS, loss="latent")
    notes = [
        "mflop_per_sample: matrix-product FLOPs of forward + backward counted from the "
        "layer shapes (common.step_flops); gflop_per_s: what the step achieves"
    ]
    return report("scaling_k", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
