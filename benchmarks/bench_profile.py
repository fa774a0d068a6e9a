"""Profile of the cached-latent training step (batch 512, 4x8x8 latent, K=6, widths 32/8,
depth 2, ``latent`` loss) and the fraction of its arithmetic limit it reaches on this CPU.

1. Step time, obs-only and with quad's 7 training contexts mixed.
2. ``torch.profiler``: time per phase (forward, backward, Adam, zero_grad, constraints) and per
   operator; the matrix products (``mm``/``addmm``/``bmm``) against everything else.
3. The fixed per-step cost: the same step at batch 8, where the arithmetic is negligible.
4. Arithmetic limit: matrix-product FLOPs per sample counted from the layer shapes
   (``common.step_flops``) times samples/s, against a large float32 matmul's measured FLOP/s.
5. Data loading: a batch read from a memory-mapped cache by ``CachedLatents`` against
   ``datasets``' own torch formatting, and ``ContextBatchSampler``'s epoch shuffle, per batch.
6. ``optimizer.step`` alone: ``Adam()``, ``foreach=True`` and ``fused=True`` (the library's).

    python benchmarks/bench_profile.py            # ~4 min
    python benchmarks/bench_profile.py --smoke
"""

from __future__ import annotations

import tempfile

import torch
from common import (
    WIDTHS,
    adam,
    context_model,
    matmul_flops_per_s,
    mixed_mask,
    step_flops,
    train_step,
)
from harness import measure, measure_interleaved, milliseconds, parser, per_second, report, setup
from torch.profiler import ProfilerActivity, profile, record_function

from ctxadapter.data.quad import TRAIN_CONTEXTS

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")
PHASES = ("1 forward", "2 backward", "3 optimizer.step", "4 zero_grad", "5 apply_constraints_")


def make(batch: int, contexts: list[str], **adam_kwargs):
    model = context_model(6, (4, 8, 8))
    mask = mixed_mask(model.adapter.concepts, contexts, batch)
    latents = torch.randn(batch, 4, 8, 8)
    optimizer = adam(model, **adam_kwargs)
    return model, optimizer, mask, latents


def profile_step(batch: int, contexts: list[str], steps: int) -> tuple[list[dict], list[dict]]:
    """Per-phase and per-operator milliseconds per step."""
    model, optimizer, mask, latents = make(batch, contexts)
    step = train_step(model, optimizer, mask, latents)
    for _ in range(5):
        step()

    def labelled() -> None:
        with record_function(PHASES[0]):
            out = model(mask, latents=latents)
        with record_function(PHASES[1]):
            out["loss"].backward()
        with record_function(PHASES[2]):
            optimizer.step()
        with record_function(PHASES[3]):
            optimizer.zero_grad()
        with record_function(PHASES[4]):
            model.adapter.apply_constraints_()

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            labelled()
    events = prof.key_averages()
    total = sum(e.cpu_time_total for e in events if e.key in PHASES) / steps / 1e3
    phases = [
        dict(
            phase=e.key,
            ms_per_step=e.cpu_time_total / steps / 1e3,
            share=e.cpu_time_total / steps / 1e3 / total,
        )
        for e in sorted(events, key=lambda e: e.key)
        if e.key in PHASES
    ]
    ops = [e for e in events if e.key.startswith("aten::")]
    ops.sort(key=lambda e: -e.self_cpu_time_total)
    op_rows = [
        dict(
            op=e.key,
            calls_per_step=e.count / steps,
            ms_per_step=e.self_cpu_time_total / steps / 1e3,
            share=e.self_cpu_time_total / steps / 1e3 / total,
        )
        for e in ops[:12]
    ]
    matmul = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_OPS) / steps / 1e3
    op_rows.append(dict(op="all matrix products", ms_per_step=matmul, share=matmul / total))
    op_rows.append(dict(op="everything else", ms_per_step=total - matmul, share=1 - matmul / total))
    return phases, op_rows


def time_step(batch: int, contexts: list[str], repeats: int, smoke: bool) -> dict:
    model, optimizer, mask, latents = make(batch, contexts)
    step = train_step(model, optimizer, mask, latents)
    return measure(step, repeats, warmup=1 if smoke else 5, min_time=0 if smoke else 0.5)


def data_loading(batch: int, size: int, repeats: int, min_time: float = 0.2) -> list[dict]:
    """Per-batch cost of reading cached latents and of the sampler's shuffle."""
    import datasets

    from ctxadapter.data import CachedLatents, ContextBatchSampler

    datasets.disable_progress_bars()
    features = datasets.Features(
        {"latents": datasets.Array3D((4, 8, 8), "float32"), "context": datasets.Value("string")}
    )
    contexts = [TRAIN_CONTEXTS[i % 7] for i in range(size)]
    data = {"latents": torch.randn(size, 4, 8, 8).numpy(), "context": contexts}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        datasets.Dataset.from_dict(data, features=features).save_to_disk(folder)
        cache = datasets.load_from_disk(folder)
        indices = torch.randperm(size)[:batch].tolist()
        cached = CachedLatents(cache, list(TRAIN_CONTEXTS[1:]))
        formatted = cache.with_format("torch", columns=["latents"])
        assert torch.equal(formatted[indices]["latents"], cached.__getitems__(indices)["latents"])
        readers = {
            "datasets formatting, cache.with_format('torch')[indices] (before)": lambda: formatted[
                indices
            ],
            "CachedLatents: zero-copy Arrow views + numpy gather (library)": lambda: (
                cached.__getitems__(indices)
            ),
        }
        for what, read in readers.items():
            timing = measure(read, repeats, warmup=1, min_time=min_time)
            rows.append(dict(what=what, **milliseconds(timing, "ms_per_batch")))
        sampler = ContextBatchSampler(cached.context_ids, batch, "mixed")
        timing = measure(lambda: list(sampler), repeats, warmup=1)
        what = "ContextBatchSampler epoch shuffle, per batch"
        rows.append(dict(what=what, **milliseconds(timing, "ms_per_batch", per=len(sampler))))
    return rows


def main(argv=None) -> dict:
    args = setup(parser(__doc__, batch=512).parse_args(argv), repeats=7, smoke_batch=64)
    batch = args.batch
    steps = 3 if args.smoke else 50
    mixed = list(TRAIN_CONTEXTS)

    peak = matmul_flops_per_s(
        512 if args.smoke else 2048, args.repeats, min_time=0 if args.smoke else 0.2
    )
    rows = []
    for label, contexts in (("obs", ["obs"]), ("7 mixed", mixed)):
        timing = time_step(batch, contexts, args.repeats, args.smoke)
        small = time_step(8, contexts, args.repeats, args.smoke)
        model = context_model(6, (4, 8, 8))
        flops = step_flops(model.adapter, mixed_mask(model.adapter.concepts, contexts, batch))
        speed = per_second(timing, batch)["samples_per_s"]
        rows.append(
            dict(
                section="step",
                contexts=label,
                batch=batch,
                step_ms=timing["median"] * 1e3,
                **per_second(timing, batch),
                step_ms_at_batch_8=small["median"] * 1e3,
                mflop_per_sample=flops / 1e6,
                achieved_gflop_per_s=flops * speed / 1e9,
                fraction_of_matmul_peak=flops * speed / peak,
            )
        )
        print(rows[-1], flush=True)
    for label, contexts in (("obs", ["obs"]), ("7 mixed", mixed)):
        phases, ops = profile_step(batch, contexts, steps)
        rows += [dict(section=f"phase ({label})", **r) for r in phases]
        rows += [dict(section=f"operator ({label})", **r) for r in ops]
    loading = data_loading(
        batch, 500 if args.smoke else 50_000, args.repeats, min_time=0 if args.smoke else 0.2
    )
    rows += [dict(section="data", **r) for r in loading]
    model = context_model(6, (4, 8, 8))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizers = {
        name: adam(model, **kwargs)
        for name, kwargs in (
            ("Adam()", dict(fused=False)),
            ("Adam(foreach=True)", dict(fused=False, foreach=True)),
            ("Adam(fused=True)", dict(fused=True)),
        )
    }
    timings = measure_interleaved(
        {k: o.step for k, o in optimizers.items()},
        args.repeats,
        warmup=2,
        min_time=0 if args.smoke else 0.2,
    )
    for name, timing in timings.items():
        rows.append(
            dict(
                section="optimizer.step alone (15 tensors, 199k parameters)",
                optimizer=name,
                **milliseconds(timing, "ms"),
                speedup=timings["Adam()"]["median"] / timing["median"],
            )
        )
    settings = dict(
        K=6,
        latent="4x8x8",
        **WIDTHS,
        loss="latent",
        matmul_peak_gflop_per_s=peak / 1e9,
    )
    notes = [
        "fraction_of_matmul_peak: achieved matrix-product FLOP/s over a large float32 "
        "matmul's (2048^3); FLOPs counted as the library computes them "
        "(common.step_flops)",
        "phase/operator: torch.profiler CPU time per step (profiling adds overhead); "
        "share is of the sum of the phases",
    ]
    return report("profile", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
