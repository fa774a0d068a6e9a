"""The ``Accelerator`` of both training scripts and what they send to its trackers."""

from __future__ import annotations

import os

import numpy as np
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from PIL import Image

from .args import OptimizationArguments, RunArguments
from .flags import public_flags


def make_accelerator(args: RunArguments | OptimizationArguments, **kwargs) -> Accelerator:
    """An ``Accelerator`` with the run's mixed precision and gradient accumulation, logging to
    ``args.report_to`` under ``output_dir/logs``. ``kwargs`` go to ``Accelerator``."""
    project = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
    )
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project,
        **kwargs,
    )


def tracker_config(args) -> dict:
    """A flags dataclass as a flat dict of scalars for the trackers (tensorboard takes no
    lists), without its secrets (the Hub token)."""
    return {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in public_flags(args).items()
    }


def log_image(accelerator: Accelerator, tag: str, image: Image.Image, step: int) -> None:
    """Send a PIL image to the tensorboard tracker, if there is one."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
