"""The benchmark harness every script shares: its command line, the machine it ran on, timing,
Markdown tables and the JSON result file (the models and the step they time are in
``common.py``).

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

CLOCK = {"name": "wall"}  # set by --clock: "cpu" times with the process's CPU time
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------- command line


def parser(doc: str, batch: int | None = None, batch_help: str = "") -> argparse.ArgumentParser:
    """An argument parser with the flags every script shares, described by the first paragraph
    of ``doc`` (the script's docstring); with ``batch``, also ``--batch`` (that default)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if batch is not None:
        p.add_argument("--batch", type=int, default=batch, help=batch_help or None)
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


def setup(
    args: argparse.Namespace, repeats: int = 5, smoke_batch: int | None = None
) -> argparse.Namespace:
    """Apply the shared flags: threads, repeats (2 in smoke mode), results folder, seed; in
    smoke mode ``--batch`` becomes ``smoke_batch``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        raise SystemExit("--clock cpu needs --threads 1: CPU time adds up every thread's")
    CLOCK["name"] = args.clock
    if args.repeats is None:
        args.repeats = 2 if args.smoke else repeats
    if args.smoke and smoke_batch is not None:
        args.batch = smoke_batch
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


def per_second(timing: dict, items: float, name: str = "samples_per_s") -> dict:
    """Table columns of a ``measure`` result in items per second: ``name`` (the median run),
    ``min`` (the slowest run) and ``max`` (the fastest)."""
    return {
        name: items / timing["median"],
        "min": items / timing["max"],
        "max": items / timing["min"],
    }


def milliseconds(timing: dict, name: str = "step_ms", per: float = 1) -> dict:
    """Table columns of a ``measure`` result in milliseconds per call (divided by ``per``):
    ``name`` (the median run), ``min_ms`` and ``max_ms``."""
    return {
        name: timing["median"] * 1e3 / per,
        "min_ms": timing["min"] * 1e3 / per,
        "max_ms": timing["max"] * 1e3 / per,
    }


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
