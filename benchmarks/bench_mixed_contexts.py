"""Mixed-context batches: training-step time of a batch of 512 cached latents (4x8x8, K=6) with 1,
7 and 16 distinct contexts, computed the library's way (a few dense products over the whole batch
with row masks) against looping over the contexts (each context's rows through the model
separately, losses weighted by row counts, one backward).

Contexts: 1 = ``obs`` (the observational fast path) or ``quad1`` alone; 7 = quad's training
contexts (obs and the six single interventions); 16 = those and quad's nine held-out pairs.
The loop gets its row groups precomputed, outside the timed step. (With BatchNorm in the
expressive layers the loop is not the same computation: statistics are per context.)

    python benchmarks/bench_mixed_contexts.py
    python benchmarks/bench_mixed_contexts.py --smoke
"""

from __future__ import annotations

import torch
from common import WIDTHS, adam, context_model, mixed_mask, train_step, update
from harness import measure_interleaved, milliseconds, parser, report, setup

from ctxadapter.data.quad import HELDOUT_COMPOSITIONS, TRAIN_CONTEXTS

CONTEXT_SETS = {
    "1 (obs)": ["obs"],
    "1 (quad1)": ["quad1"],
    "7": list(TRAIN_CONTEXTS),
    "16": list(TRAIN_CONTEXTS) + list(HELDOUT_COMPOSITIONS),
}


def loop_step(model, optimizer, mask: torch.Tensor, latents: torch.Tensor):
    """One step computing each context's rows separately."""
    distinct, inverse = torch.unique(mask, dim=0, return_inverse=True)
    groups = [torch.nonzero(inverse == u).flatten() for u in range(len(distinct))]
    total = len(latents)

    def step() -> None:
        loss = 0.0
        for rows in groups:
            out = model(mask[rows], latents=latents[rows])
            loss = loss + out["loss"] * (len(rows) / total)
        update(model, optimizer, loss)

    return step


def main(argv=None) -> dict:
    args = setup(parser(__doc__, batch=512).parse_args(argv), repeats=7, smoke_batch=64)
    batch = args.batch
    latents = torch.randn(batch, 4, 8, 8)
    steps = {}
    for label, contexts in CONTEXT_SETS.items():
        names = context_model(6, (4, 8, 8)).adapter.concepts
        mask = mixed_mask(names, contexts, batch)
        for method in ("batched", "loop"):
            if method == "loop" and len(contexts) == 1:
                continue
            model = context_model(6, (4, 8, 8))
            optimizer = adam(model)
            steps[label, method] = (
                train_step(model, optimizer, mask, latents)
                if method == "batched"
                else loop_step(model, optimizer, mask, latents)
            )
    timings = measure_interleaved(steps, args.repeats, warmup=3, min_time=0 if args.smoke else 0.3)
    baseline = timings["1 (quad1)", "batched"]["median"]
    rows = [
        dict(
            contexts=label,
            method=method,
            batch=batch,
            **milliseconds(t),
            samples_per_s=batch / t["median"],
            vs_1_ctx=t["median"] / baseline,
        )
        for (label, method), t in timings.items()
    ]
    settings = dict(K=6, latent="4x8x8", **WIDTHS, loss="latent")
    notes = [
        "vs_1_ctx: step time over the batched single-context step of 1 (quad1), the "
        "single context that takes the general (interventional) path; 1 (obs) takes the "
        "observational fast path"
    ]
    return report("mixed_contexts", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
