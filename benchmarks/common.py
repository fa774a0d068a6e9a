"""Shared helpers of the benchmark scripts: machine info, timing, tables, JSON results, and the
models and training step every script times.

Each script answers one question, prints a table and writes ``benchmarks/results/<name>.json``
(``--out`` elsewhere). ``--smoke`` runs a tiny version in seconds (what CI runs); its results go
to a temporary folder unless ``--out`` is given, so they never overwrite real measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ctxadapter.training import QUAD_AUTOENCODER

CLOCK = {"name": "wall"}  # set by --clock: "cpu" times with the process's CPU time
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The project's quad autoencoder (training.PretrainArguments defaults) and the Stable Diffusion
# VAE architecture (random weights are fine for timing).
QUAD_CONFIG = dict(
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)
SD_CONFIG = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)


# ---------------------------------------------------------------------------- command line


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row (median)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice, the core count)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="'cpu': time with the process's CPU time instead of the wall clock; with "
        "--threads 1 on a busy machine, close to what a dedicated core would take",
    )
    p.add_argument(
        "--out",
        default=None,
        help="results folder (default: benchmarks/results, a temp folder in --smoke)",
    )
    return p


def setup(args: argparse.Namespace, repeats: int = 5) -> argparse.Namespace:
    """Apply the shared flags: threads, repeats (1 in smoke mode), results folder, seed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        raise SystemExit("--clock cpu needs --threads 1: CPU time adds up every thread's")
    CLOCK["name"] = args.clock
    if args.repeats is None:
        args.repeats = 2 if args.smoke else repeats
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="ctxadapter-bench-") if args.smoke else RESULTS_DIR
    torch.manual_seed(0)
    return args


# ---------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and with what the numbers were measured."""
    import datasets
    import diffusers
    import numpy

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    info = dict(
        date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        cpu=cpu_model(),
        cores=cores,
        torch_threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        load_average_1min=round(os.getloadavg()[0], 2),
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        datasets=datasets.__version__,
        numpy=numpy.__version__,
        device="cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    )
    return info


# ---------------------------------------------------------------------------- timing


def measure(
    fn: Callable[[], object], repeats: int, warmup: int = 1, number: int = 1, min_time: float = 0.0
) -> dict:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``repeats`` runs of ``number``
    calls each (grown until a run lasts ``min_time`` seconds). Returns median/min/max per call
    and the raw runs on the clock chosen by ``--clock`` (wall by default), and the medians of
    both clocks (``wall``, ``cpu``: the process's CPU time)."""
    for _ in range(warmup):
        fn()
    if min_time:
        while True:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            if time.perf_counter() - start >= min_time:
                break
            number *= 2
    runs, wall, cpu = [], [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(number):
            fn()
        wall.append((time.perf_counter() - start) / number)
        cpu.append((time.process_time() - start_cpu) / number)
        runs.append(cpu[-1] if CLOCK["name"] == "cpu" else wall[-1])
    return dict(
        median=statistics.median(runs),
        min=min(runs),
        max=max(runs),
        number=number,
        runs=runs,
        clock=CLOCK["name"],
        wall=statistics.median(wall),
        cpu=statistics.median(cpu),
    )


def measure_interleaved(
    fns: dict, repeats: int, warmup: int = 1, min_time: float = 0.0, wrap: Callable | None = None
) -> dict:
    """``measure`` for several functions, runs interleaved (A B C A B C ...) so that a
    change of machine load hits them all alike. ``wrap(name)`` gives a context manager entered
    around each of ``name``'s runs (e.g. a monkeypatch). Returns ``{name: timing}``."""
    wrap = wrap or (lambda name: contextlib.nullcontext())
    number = {}
    for name, fn in fns.items():
        with wrap(name):
            number[name] = measure(fn, 1, warmup=warmup, min_time=min_time)["number"]
    runs: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with wrap(name):
                runs[name].append(measure(fn, 1, warmup=0, number=number[name]))
    return {
        name: dict(
            median=statistics.median(r["median"] for r in rs),
            min=min(r["min"] for r in rs),
            max=max(r["max"] for r in rs),
            number=number[name],
            runs=[r["median"] for r in rs],
            clock=CLOCK["name"],
            wall=statistics.median(r["wall"] for r in rs),
            cpu=statistics.median(r["cpu"] for r in rs),
        )
        for name, rs in runs.items()
    }


def now() -> float:
    """The ``--clock``: ``time.perf_counter()`` or, with ``--clock cpu``, the process's CPU
    time."""
    return time.process_time() if CLOCK["name"] == "cpu" else time.perf_counter()


def rate(timing: dict, items: float) -> dict:
    """Items per second from a ``measure`` result: median, min and max."""
    return dict(
        median=items / timing["median"], min=items / timing["max"], max=items / timing["min"]
    )


# ---------------------------------------------------------------------------- output


def fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts), columns in first-seen order by default."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values, justify):
        return "| " + " | ".join(justify(v, w) for v, w in zip(values, widths, strict=True)) + " |"

    lines = [line(columns, str.ljust), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(r, str.rjust) for r in cells]
    return "\n".join(lines)


def report(
    name: str,
    args: argparse.Namespace,
    rows: Sequence[dict],
    settings: dict,
    columns: Sequence[str] | None = None,
    notes: Sequence[str] = (),
) -> dict:
    """Print the machine line, the settings and the table; write ``<out>/<name>.json``."""
    machine = machine_info()
    print(f"# {name}" + (" (smoke)" if args.smoke else ""))
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    settings = {**settings, "clock": args.clock}
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    sections = list(dict.fromkeys(row.get("section") for row in rows))
    for section in sections:  # rows with a "section" key print as one table per section
        part = [
            {k: v for k, v in row.items() if k != "section"}
            for row in rows
            if row.get("section") == section
        ]
        print(f"\n## {section}" if section else "")
        print(table(part, columns))
    for note in notes:
        print(f"note: {note}")
    payload = dict(
        name=name,
        smoke=args.smoke,
        machine=machine,
        settings=settings,
        repeats=args.repeats,
        rows=list(rows),
        notes=list(notes),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return payload


# ---------------------------------------------------------------------------- models


def autoencoder(kind: str = "quad", smoke: bool = False):
    """A frozen diffusers ``AutoencoderKL``: ``"quad"`` (examples/quad-autoencoder if it exists,
    else random weights from its config) or ``"sd"`` (the SD VAE architecture, random weights).
    ``smoke`` shrinks the channels so that CI stays fast."""
    from diffusers import AutoencoderKL

    if kind == "quad" and not smoke and (QUAD_AUTOENCODER / "config.json").exists():
        return AutoencoderKL.from_pretrained(QUAD_AUTOENCODER).eval()
    config = dict(QUAD_CONFIG if kind == "quad" else SD_CONFIG)
    if smoke:
        config.update(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8)
    levels = len(config["block_out_channels"])
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        **config,
    ).eval()


def concepts(k: int) -> list[str]:
    """``k`` concept names: quad's six first, then ``c6``, ``c7``..."""
    from ctxadapter.quad import CONCEPTS

    return list(CONCEPTS[:k]) + [f"c{i}" for i in range(len(CONCEPTS), k)]


def context_model(
    num_concepts: int = 6,
    latent_shape=(4, 8, 8),
    vae=None,
    exogenous_width: int = 32,
    concept_width: int = 8,
    expressive_depth: int = 2,
):
    """A ``ContextAutoencoder`` in train mode: the adapter ``examples/finetune.py`` trains by
    default (widths 32/8, depth 2, and its heads, mixing and bias). ``vae=None`` uses a tiny
    stand-in autoencoder: the latent loss never runs it."""
    from ctxadapter import ContextAutoencoder, CtxAdapter
    from ctxadapter.training import FinetuneArguments

    defaults = FinetuneArguments()

    if vae is None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(
            block_out_channels=(8,) * 4,
            norm_num_groups=8,
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=latent_shape[0],
        )
    adapter = CtxAdapter(
        concepts(num_concepts),
        list(latent_shape),
        exogenous_width=exogenous_width,
        concept_width=concept_width,
        expressive_depth=expressive_depth,
        observational_mixing=defaults.observational_mixing,
        exogenous_bias=defaults.exogenous_bias,
        heads=defaults.heads,
        head_width=defaults.head_width,
    )
    return ContextAutoencoder(vae, adapter).train()


def mixed_mask(
    names: Sequence[str], contexts: Sequence[str], batch_size: int, seed: int = 0
) -> torch.Tensor:
    """``(batch_size, K)`` mask: ``contexts`` (strings) spread evenly over the rows, shuffled."""
    from ctxadapter.contexts import context_mask

    rows = [contexts[i % len(contexts)] for i in range(batch_size)]
    mask = context_mask(rows, list(names), batch_size)
    order = torch.randperm(batch_size, generator=torch.Generator().manual_seed(seed))
    return mask[order]


def train_step(
    model,
    optimizer,
    contexts,
    latents=None,
    pixel_values=None,
    reconstruction: str = "latent",
    generator=None,
) -> Callable[[], None]:
    """One training step as ``finetune`` does it, with its default objective: forward (loss),
    backward, Adam step, ``zero_grad``, ``apply_constraints_``. ``contexts`` as the model takes
    them (mask or strings)."""
    from ctxadapter.training import FinetuneArguments

    objective = FinetuneArguments(loss=reconstruction).objective()

    def step() -> None:
        out = model(
            contexts,
            latents=latents,
            pixel_values=pixel_values,
            objective=objective,
            generator=generator,
        )
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        model.adapter.apply_constraints_()

    return step


def adam(model, **kwargs) -> torch.optim.Optimizer:
    """Adam as ``finetune`` builds it (``ctxadapter.training.make_optimizer``, ``lr=1e-3``);
    ``kwargs`` override."""
    from ctxadapter.training import make_optimizer

    return make_optimizer(model, 1e-3, **kwargs)


# ---------------------------------------------------------------------------- arithmetic


def _linear_shapes(module) -> list[tuple[int, int]]:
    """``(in, out)`` of every ``nn.Linear`` in ``module`` (a linear or an MLP head), in order."""
    return [(m.in_features, m.out_features) for m in module.modules() if hasattr(m, "in_features")]


def step_flops(adapter, contexts: torch.Tensor, sample_matching: bool | None = None) -> float:
    """Matrix-product FLOPs per sample of one training step (forward + backward) of ``adapter``
    with the ``latent`` loss on a batch with the ``(N, K)`` context masks ``contexts``, counted
    from the layer shapes as the library computes them. The heads: each of their linear maps.
    The exogenous layer: one dense product if every row is observational (dense mixing);
    otherwise one batched product over the K diagonal blocks of both weights for every row,
    plus, with dense mixing, the dense product on the observational rows. The causal layer: one
    masked dense product, two if any row is intervened. With ``sample_matching`` (default: as
    ``examples/finetune.py`` trains), the generator (context layers and latent head) runs once
    more per row and both sides are projected on the objective's directions. Backward costs 2x
    forward, except where the input needs no gradient (the latents). Elementwise work (GELU,
    BatchNorm, masks, sorting, Adam) is not counted."""
    from ctxadapter.training import FinetuneArguments

    objective = FinetuneArguments().objective()
    if sample_matching is None:
        sample_matching = objective.sample_matching > 0
    k = len(adapter.concepts)
    noise, concept = adapter.noise_size, adapter.causal.weight_obs.shape[0]
    latent = adapter.latent_shape[0] * adapter.latent_shape[1] * adapter.latent_shape[2]
    widths = adapter.expressive.widths
    observational = (~contexts.any(dim=-1)).float().mean().item()
    dense = adapter.exogenous.observational_mixing == "dense"
    posterior = [
        (i, o, n > 0, 1.0) for n, (i, o) in enumerate(_linear_shapes(adapter.posterior_head))
    ]
    generator = []  # (in, out, input needs a gradient, rows)
    if observational == 1 and dense:
        generator += [(noise, noise, True, 1.0), (concept, concept, True, 1.0)]
    else:
        generator += [(noise, 2 * adapter.exogenous.width, True, 1.0)]
        generator += [(noise, noise, True, observational)] if dense else []
        generator += [(concept, concept, True, 2.0 if observational < 1 else 1.0)]
    generator += [(k * a, k * b, True, 1.0) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    generator += [(i, o, True, 1.0) for i, o in _linear_shapes(adapter.latent_head)]
    products = posterior + generator
    if sample_matching:
        products += generator + [(latent, objective.num_projections, False, 1.0)]
        products += [(latent, objective.num_projections, True, 1.0)]
    return sum(2 * i * o * (2 + grad) * rows for i, o, grad, rows in products)


def matmul_flops_per_s(size: int = 2048, repeats: int = 5, min_time: float = 0.2) -> float:
    """Measured FLOP/s of a large float32 matrix product (the CPU's practical arithmetic limit)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    timing = measure(lambda: a @ b, repeats, warmup=2, min_time=min_time)
    return 2 * size**3 / timing["median"]
