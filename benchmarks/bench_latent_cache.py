"""Latent cache: the encode pass of ``ctxadapter.data.cache_latents`` against the bare encoder
on the same images (the overhead of reading, preprocessing and writing), and the peak resident
memory of the caching process at 10k, 50k and 100k quad images (64x64, quad autoencoder).
Memory must stay flat: images are encoded and written to the Arrow shards in batches.
``--tiny`` caches with a tiny random autoencoder of the quad architecture's shape (8 channels per
block: the same 4x8x8 latents, far faster), ``--streaming`` reads the input as a
``datasets.IterableDataset`` (``to_iterable_dataset``), as ``--streaming`` runs do.

The input is built once (the largest size) with ``datasets.Dataset.from_generator`` from
``ctxadapter.data.quad`` images, chunk by chunk, so building it never holds all images in memory.
Each size then runs in a fresh subprocess (in-process with ``--smoke``) that loads the first N
rows from the Arrow file, caches them into a fresh folder, and reports its own peak RSS
(``VmHWM``), its RSS before caching, and the peak of its anonymous (heap) memory sampled every
20 ms; file-backed pages of the memory-mapped Arrow files count in RSS too, but the kernel can
drop them at any time.

    python benchmarks/bench_latent_cache.py                   # ~45 min on one core
    python benchmarks/bench_latent_cache.py --sizes 10000 50000
    python benchmarks/bench_latent_cache.py --sizes 10000 100000 --overhead_images 0 --tiny
    python benchmarks/bench_latent_cache.py --sizes           # the overhead section only
    python benchmarks/bench_latent_cache.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import autoencoder
from harness import measure_interleaved, parser, per_second, report, setup

BATCH = 64  # cache_latents' default batch size


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def quad_rows(n: int, chunk: int = 1024):
    """``n`` quad rows (PIL image, context), 7 training contexts taking turns by chunk."""
    from PIL import Image

    from ctxadapter.data.quad import TRAIN_CONTEXTS, latents_to_images, sample_latents

    for index, start in enumerate(range(0, n, chunk)):
        context = TRAIN_CONTEXTS[index % len(TRAIN_CONTEXTS)]
        size = min(chunk, n - start)
        for image in latents_to_images(sample_latents(context, size, seed=index)):
            yield {"image": Image.fromarray(image), "context": context}


def build_input(n: int, folder: str) -> str:
    """Write ``n`` quad rows to an Arrow file under ``folder``; returns its path."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "context": datasets.Value("string")})
    dataset = datasets.Dataset.from_generator(
        quad_rows, gen_kwargs={"n": n}, features=features, cache_dir=folder
    )
    return dataset.cache_files[0]["filename"]


def child(arrow_file: str, size: int, tiny: bool, streaming: bool, result_file: str) -> None:
    """Cache the first ``size`` rows (``tiny``: with the tiny autoencoder; ``streaming``: read
    as a stream) and write the timing and memory to ``result_file``."""
    import datasets

    from ctxadapter.codec import LatentCodec
    from ctxadapter.data import cache_latents

    datasets.disable_progress_bars()
    codec = LatentCodec(autoencoder("quad", tiny))
    dataset = datasets.Dataset.from_file(arrow_file).select(range(size))
    contexts = dataset["context"]
    if streaming:
        dataset = dataset.to_iterable_dataset()
    peak_anon, done = [status_kb("RssAnon")], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], status_kb("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    rss_before = status_kb("VmRSS")
    sampler.start()
    with tempfile.TemporaryDirectory() as cache_dir:
        start, start_cpu = time.perf_counter(), time.process_time()
        cache = cache_latents(dataset, codec, contexts, "image", 64, cache_dir, batch_size=BATCH)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        assert len(cache) == size
    done.set()
    sampler.join()
    result = dict(
        images=size,
        seconds=seconds,
        images_per_s=size / seconds,
        images_per_cpu_s=size / cpu_seconds,
        rss_before_mb=rss_before / 1024,
        peak_rss_mb=status_kb("VmHWM") / 1024,
        peak_anon_mb=peak_anon[0] / 1024,
    )
    Path(result_file).write_text(json.dumps(result))


def encode_overhead(arrow_file: str, size: int, smoke: bool, repeats: int) -> list[dict]:
    """The encode pass against the encoder alone on the same ``size`` images, runs interleaved:
    the bare encoder over the already preprocessed batches; reading, preprocessing and encoding
    one batch after the other (no overlap); and ``cache_latents`` into a fresh folder."""
    import datasets

    from ctxadapter.codec import LatentCodec
    from ctxadapter.data import cache_latents
    from ctxadapter.data.cache_shards import read_batch

    datasets.disable_progress_bars()
    codec = LatentCodec(autoencoder("quad", smoke))
    dataset = datasets.Dataset.from_file(arrow_file).select(range(size))
    contexts = dataset["context"]
    raw = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    starts = range(0, size, BATCH)

    def load(start: int) -> torch.Tensor:
        return read_batch(raw[start : start + BATCH], range(start, min(start + BATCH, size)), 64)

    batches = [load(start) for start in starts]

    def cache() -> None:
        with tempfile.TemporaryDirectory() as cache_dir:
            cache_latents(dataset, codec, contexts, "image", 64, cache_dir, batch_size=BATCH)

    runs = {
        "bare encoder forward (encode_distribution), preprocessed batches": lambda: [
            codec.encode_distribution(batch) for batch in batches
        ],
        "read + preprocess + encode, one batch after the other": lambda: [
            codec.encode_distribution(load(start)) for start in starts
        ],
        "cache_latents (reading overlaps the encoder)": cache,
    }
    timings = measure_interleaved(runs, repeats, warmup=1)
    encoder = timings[next(iter(runs))]["median"]
    section = f"encode pass against the encoder alone, {size} images, batches of {BATCH}"
    return [
        dict(
            section=section,
            what=what,
            images=size,
            **per_second(timing, size, "images_per_s"),
            vs_bare_encoder=encoder / timing["median"],
        )
        for what, timing in timings.items()
    ]


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[10_000, 50_000, 100_000],
        help="Sizes of the memory runs (none: only the overhead section).",
    )
    p.add_argument(
        "--overhead_images", type=int, default=2_000, help="Images of the overhead section."
    )
    p.add_argument("--tiny", action="store_true", help="Memory runs: a tiny autoencoder.")
    p.add_argument("--streaming", action="store_true", help="Memory runs: a streamed input.")
    p.add_argument("--child", nargs=3, metavar=("ARROW", "SIZE", "RESULT"), help=argparse.SUPPRESS)
    args = setup(p.parse_args(argv), repeats=5)
    tiny = args.tiny or args.smoke
    if args.child:
        child(args.child[0], int(args.child[1]), tiny, args.streaming, args.child[2])
        return {}
    sizes = [128] if args.smoke else sorted(args.sizes)
    overhead_images = 128 if args.smoke else args.overhead_images
    with tempfile.TemporaryDirectory() as folder:
        start, largest = time.perf_counter(), max([*sizes, overhead_images])
        arrow_file = build_input(largest, folder)
        print(f"built {largest} quad images in {time.perf_counter() - start:.1f} s", flush=True)
        rows = []
        if overhead_images:
            rows = encode_overhead(arrow_file, overhead_images, args.smoke, args.repeats)
            print(rows, flush=True)
        script = str(Path(__file__).resolve())
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        for size in sizes:
            result_file = os.path.join(folder, f"result-{size}.json")
            command = [
                sys.executable,
                script,
                "--child",
                arrow_file,
                str(size),
                result_file,
                "--clock",
                args.clock,
                *(["--tiny"] if tiny else []),
                *(["--streaming"] if args.streaming else []),
            ]
            if args.smoke:  # CI: the same child code, in this process (no second import)
                child(arrow_file, size, True, args.streaming, result_file)
            else:
                subprocess.run(command, check=True, env=env)
            result = json.loads(Path(result_file).read_text())
            rows.append(dict(section="cache_latents, one subprocess per size", **result))
            print(rows[-1], flush=True)
    cached = [r for r in rows if r["section"].startswith("cache")]
    for row in cached:
        row["peak_vs_smallest"] = row["peak_rss_mb"] / cached[0]["peak_rss_mb"]
    settings = dict(
        autoencoder="quad" + (" (tiny)" if tiny else ""),
        streaming=args.streaming,
        image="64x64",
        latent="4x8x8",
        batch_size=BATCH,
        keep_pixels=False,
    )
    notes = [
        "overhead rows: one process, the three runs interleaved, median of repeats (min/max "
        "over them) on the --clock; vs_bare_encoder: the bare encoder's time over the row's",
        "memory rows (cache_latents, one subprocess per size): one run per size, the child's "
        "wall time and images per CPU-second",
        "peak_rss_mb: VmHWM of the caching subprocess (imports and model included); "
        "rss_before_mb: its RSS just before caching; peak_anon_mb: peak anonymous RSS",
    ]
    return report("latent_cache", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
