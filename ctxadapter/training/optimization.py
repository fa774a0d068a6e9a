"""The optimizer and the learning-rate schedule of both training scripts."""

from __future__ import annotations

import torch
from transformers import get_scheduler

from .args import OptimizationArguments


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
    """transformers' ``get_scheduler(args.lr_scheduler)`` over ``total_steps`` optimizer steps;
    the default is the paper's linear warm-up then a cosine decay to ``min_learning_rate``."""
    extra = {"min_lr": args.min_learning_rate} if args.lr_scheduler == "cosine_with_min_lr" else {}
    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=extra,
    )
