"""The ``Accelerator`` of both training scripts and what they send to its trackers."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from PIL import Image

from .args import OptimizationArguments, RunArguments


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_accelerator(args: RunArguments | OptimizationArguments, **kwargs) -> Accelerator:
    """An ``Accelerator`` with the run's mixed precision and gradient accumulation, logging to
    ``args.report_to`` under ``output_dir/logs``. ``kwargs`` go to ``Accelerator``.

    On a CPU, torch then runs ``args.cpu_threads`` threads per process (default: the available
    cores shared among the processes on this machine). ``accelerate launch`` without
    ``--num_cpu_threads_per_process`` sets ``OMP_NUM_THREADS=1``, which would leave one core of
    a multi-core machine working (the README's timings compare the default run both ways)."""
    project = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
    )
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project,
        **kwargs,
    )
    if accelerator.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))  # torchrun's
        torch.set_num_threads(args.cpu_threads or max(1, available_cores() // local))
    return accelerator


def tracker_config(args) -> dict:
    """A flags dataclass as a flat dict of scalars for the trackers (tensorboard takes no
    lists or dicts)."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in dataclasses.asdict(args).items()
    }


def log_image(accelerator: Accelerator, tag: str, image: Image.Image, step: int) -> None:
    """Send a PIL image to the tensorboard tracker, if there is one."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
