"""The optimizer and the learning-rate schedule of both training scripts."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from .args import OptimizationArguments

MIN_LEARNING_RATE = 1e-5
"""The learning rate the cosine decay ends at."""


def make_optimizer(model: torch.nn.Module, learning_rate: float, **kwargs) -> torch.optim.Adam:
    """Adam over ``model``'s trainable parameters, fused on CPU and CUDA: one kernel for all
    parameters, since a small adapter's step is otherwise dominated by per-tensor optimizer
    overhead (``docs/benchmarks.md``). ``kwargs`` override ``torch.optim.Adam``'s
    arguments."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"fused": trainable[0].device.type in ("cpu", "cuda")} | kwargs
    return torch.optim.Adam(trainable, lr=learning_rate, **kwargs)


def make_scheduler(
    args: OptimizationArguments, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The paper's schedule over ``total_steps`` optimizer steps: a linear warm-up of
    ``args.lr_warmup_steps`` steps, then a cosine decay to ``MIN_LEARNING_RATE``
    (transformers' ``cosine_with_min_lr``)."""
    return get_scheduler(
        "cosine_with_min_lr",
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs={"min_lr": MIN_LEARNING_RATE},
    )
