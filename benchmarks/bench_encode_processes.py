"""The encode pass with one and two processes on the same images: ``cache_latents`` under
``accelerate launch``, where every process encodes its share of the cache's shards, against
one process with one and with two torch threads.

The input is quad 64x64 images written once to an Arrow file (``bench_latent_cache.build_input``),
cached by the quad autoencoder (4x8x8 latents) into a fresh folder per run. Each run is one
launch; its main process reports the wall time from a barrier before ``cache_latents`` to its
return (which waits for every process), the images' content fingerprint computed beforehand as
``finetune`` does. The configurations run in turn, ``--repeats`` times; the table gives the
median run and the fastest and slowest.

    python benchmarks/bench_encode_processes.py                  # ~3 min on 2 cores
    python benchmarks/bench_encode_processes.py --images 6000
    python benchmarks/bench_encode_processes.py --smoke          # seconds, one process
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_latent_cache import BATCH, build_input
from common import autoencoder
from harness import parser, report, setup

CONFIGURATIONS = [(1, 1), (1, 2), (2, 1)]
"""(processes, torch threads per process) of the runs."""


def child(arrow_file: str, size: int, smoke: bool, result_file: str) -> None:
    """Cache the first ``size`` rows into a fresh folder beside ``result_file``; the main
    process writes the wall time of the pass to ``result_file``."""
    import datasets

    from ctxadapter.codec import LatentCodec
    from ctxadapter.data import cache_latents
    from ctxadapter.data.content import content_fingerprint
    from ctxadapter.processes import process_state

    datasets.disable_progress_bars()
    codec = LatentCodec(autoencoder("quad", smoke))
    dataset = datasets.Dataset.from_file(arrow_file).select(range(size))
    contexts, fingerprint = dataset["context"], content_fingerprint(dataset, "image")
    cache_dir = Path(result_file).with_suffix(".cache")
    state = process_state()
    state.wait_for_everyone()
    start = time.perf_counter()
    cache = cache_latents(
        dataset, codec, contexts, "image", 64, cache_dir, BATCH, images_fingerprint=fingerprint
    )
    seconds = time.perf_counter() - start
    assert len(cache) == size
    if state.is_main_process:
        Path(result_file).write_text(
            json.dumps(dict(seconds=seconds, shards=len(cache.cache_files)))
        )


def launch(script: str, arrow_file: str, size: int, processes: int, threads: int, result: str):
    """One run of ``child`` under ``accelerate launch`` on the CPUs (``cpu_launch``)."""
    from ctxadapter.processes import cpu_launch

    command, cpu_env = cpu_launch(processes, threads)
    command += [script, "--child", arrow_file, str(size), result]
    subprocess.run(command, check=True, env={**os.environ, **cpu_env})


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=3_000, help="Images cached per run.")
    p.add_argument("--child", nargs=3, metavar=("ARROW", "SIZE", "RESULT"), help=argparse.SUPPRESS)
    args = setup(p.parse_args(argv), repeats=3)
    if args.child:
        child(args.child[0], int(args.child[1]), args.smoke, args.child[2])
        return {}
    images = 128 if args.smoke else args.images
    configurations = CONFIGURATIONS[:1] if args.smoke else CONFIGURATIONS
    seconds: dict = {configuration: [] for configuration in configurations}
    shards = 0
    with tempfile.TemporaryDirectory() as folder:
        arrow_file = build_input(images, folder)
        script = str(Path(__file__).resolve())
        for repeat in range(args.repeats):
            for processes, threads in configurations:
                result = os.path.join(folder, f"run-{processes}-{threads}-{repeat}.json")
                if args.smoke:  # CI: the same child code, in this process
                    child(arrow_file, images, True, result)
                else:
                    launch(script, arrow_file, images, processes, threads, result)
                run = json.loads(Path(result).read_text())
                seconds[processes, threads].append(run["seconds"])
                shards = run["shards"]
                print(processes, threads, run, flush=True)
    one = statistics.median(seconds[1, 1])
    rows = [
        dict(
            processes=processes,
            threads_per_process=threads,
            images=images,
            seconds=statistics.median(runs),
            fastest_s=min(runs),
            slowest_s=max(runs),
            images_per_s=images / statistics.median(runs),
            vs_1_process_1_thread=one / statistics.median(runs),
        )
        for (processes, threads), runs in seconds.items()
    ]
    settings = dict(
        autoencoder="quad" + (" (tiny, smoke)" if args.smoke else ""),
        image="64x64",
        latent="4x8x8",
        batch_size=BATCH,
        shards=shards,
    )
    notes = [
        "seconds: the main process's wall time from a barrier before cache_latents to its "
        "return, median of the runs (one launch each, configurations in turn)",
    ]
    return report("encode_processes", args, rows, settings, notes=notes)


if __name__ == "__main__":
    main()
