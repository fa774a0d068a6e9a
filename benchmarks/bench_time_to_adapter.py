"""Time to a trained adapter on quad (64x64, quad autoencoder) at a fixed number of images per
context and a fixed number of steps (batch 512, K=6, widths 32/8, depth 2):

- ``latent``: cache the latents once (``cache_latents``), then train on them with the ``latent``
  loss (``CachedLatents`` in memory, ``ContextBatchSampler``, a ``DataLoader``), all measured;
- ``pixel``: cache latents and pixels (``keep_pixels=True``, as ``finetune`` with the pixel loss),
  then the same number of steps with the ``pixel`` loss through the frozen decoder;
- ``on the fly``: no cache; every step reads its images, preprocesses and encodes them, then
  takes a ``latent``-loss step.

Caching and the latent training run in full. The pixel and on-the-fly steps are far slower:
``--measured-steps`` of them are timed (after one warm-up) and their median is multiplied by the
step count; the table says which numbers are extrapolated. Building the quad images themselves
is common to all three and reported apart. Adapter quality (Concept/Compo scores) comes from the
evaluation work, not from here: the table leaves a column for it.

    python benchmarks/bench_time_to_adapter.py                # ~12 min on one core
    python benchmarks/bench_time_to_adapter.py --images-per-context 2000 --steps 2000
    python benchmarks/bench_time_to_adapter.py --smoke
"""

from __future__ import annotations

import statistics
import tempfile

import torch
from bench_latent_cache import quad_rows
from common import adam, autoencoder, context_model, update
from harness import now, parser, report, setup

from ctxadapter.codec import LatentCodec
from ctxadapter.data import CachedLatents, ContextBatchSampler, cache_latents, collate_batch
from ctxadapter.data.quad import CONCEPTS
from ctxadapter.model import ContextAutoencoder
from ctxadapter.objective import Objective


def loader(cache, batch: int):
    data = CachedLatents(cache, list(CONCEPTS))
    sampler = ContextBatchSampler(data.context_ids, batch, "mixed", seed=0)
    return torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate_batch)


def batches(data, steps: int):
    """``steps`` batches of ``data`` (a loader), epoch after epoch, reshuffled each epoch."""
    epoch = 0
    while True:
        data.batch_sampler.shuffle_for_epoch(epoch)
        for batch in data:
            yield batch
            steps -= 1
            if steps == 0:
                return
        epoch += 1


def train(model, optimizer, batch_iter, reconstruction: str, codec=None, measured=None):
    """Run the steps; return the list of per-step seconds (data loading included)."""
    times = []
    start = now()
    for batch in batch_iter:
        if codec is not None:  # on the fly: batch is (PIL images, contexts mask)
            images, contexts = batch
            pixels = codec.preprocess(images, 64, 64, resize_mode="crop")
            batch = dict(latents=codec.encode(pixels), contexts=contexts)
        out = model(
            batch["contexts"],
            latents=batch["latents"],
            pixel_values=batch.get("pixel_values"),
            objective=Objective(reconstruction=reconstruction),
        )
        update(model, optimizer, out["loss"])
        end = now()
        times.append(end - start)
        start = end
        if measured is not None and len(times) > measured:
            break
    return times


def on_the_fly_batches(dataset, batch: int, concepts):
    """Batches of PIL images and their masks, reading the image dataset directly."""
    from ctxadapter.contexts import context_mask

    generator = torch.Generator().manual_seed(0)
    while True:
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            rows = dataset[order[start : start + batch].tolist()]
            images = [image.convert("RGB") for image in rows["image"]]
            yield images, context_mask(rows["context"], concepts, batch)


def main(argv=None) -> dict:
    import datasets

    datasets.disable_progress_bars()
    p = parser(__doc__, batch=512)
    p.add_argument("--images-per-context", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument(
        "--measured-steps",
        type=int,
        default=3,
        help="timed steps of the slow methods (after one warm-up), extrapolated",
    )
    args = setup(p.parse_args(argv), repeats=1, smoke_batch=16)
    per_context = 8 if args.smoke else args.images_per_context
    steps = 4 if args.smoke else args.steps
    batch = args.batch
    measured = 2 if args.smoke else args.measured_steps
    n = per_context * (len(CONCEPTS) + 1)
    codec = LatentCodec(autoencoder("quad", args.smoke))
    features = datasets.Features({"image": datasets.Image(), "context": datasets.Value("string")})
    with tempfile.TemporaryDirectory(prefix="ctxadapter-tta-") as folder:
        start = now()
        images = datasets.Dataset.from_generator(
            quad_rows,
            gen_kwargs={"n": n, "chunk": per_context},
            features=features,
            cache_dir=folder,
        )
        build_s = now() - start
        contexts = images["context"]
        rows = []
        for method in ("latent", "pixel", "on the fly"):
            torch.manual_seed(0)
            model = ContextAutoencoder(codec, context_model(6, (4, 8, 8)).adapter).train()
            optimizer = adam(model)
            cache_s = 0.0
            if method == "on the fly":
                batch_iter = on_the_fly_batches(images, batch, list(CONCEPTS))
            else:
                start = now()
                cache = cache_latents(
                    images, codec, contexts, "image", 64, folder, keep_pixels=method == "pixel"
                )
                data = loader(cache, batch)  # reads the cache into memory, as finetune does
                cache_s = now() - start
                batch_iter = batches(data, steps)
            full = method == "latent"
            times = train(
                model,
                optimizer,
                batch_iter,
                "pixel" if method == "pixel" else "latent",
                codec=codec if method == "on the fly" else None,
                measured=None if full else measured,
            )
            step_s = statistics.median(times[1:] if len(times) > 1 else times)
            train_s = sum(times) if full else step_s * steps
            rows.append(
                dict(
                    method=method,
                    cache_s=cache_s,
                    step_ms=step_s * 1e3,
                    step_min_ms=min(times) * 1e3,
                    step_max_ms=max(times) * 1e3,
                    train_s=train_s,
                    train="measured" if full else f"{len(times) - 1} steps x {steps}",
                    total_s=cache_s + train_s,
                    quality="see evaluation",
                )
            )
            print(rows[-1], flush=True)
    for row in rows:
        row["vs_latent"] = row["total_s"] / rows[0]["total_s"]
    settings = dict(
        images_per_context=per_context,
        contexts=len(CONCEPTS) + 1,
        images=n,
        steps=steps,
        batch=batch,
        build_quad_images_s=round(build_s, 2),
        autoencoder="quad" + (" (tiny, smoke)" if args.smoke else ""),
    )
    notes = [
        "total_s = cache_s + train_s; vs_latent = total_s / latent total_s",
        "train 'a steps x b': median of a timed steps (after a warm-up) times b steps",
        "quality: Concept/Compo scores come from the evaluation work",
    ]
    return report("time_to_adapter", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
