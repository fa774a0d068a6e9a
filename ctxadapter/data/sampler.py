"""Batches of row indices for the latent cache, reproducible from the seed and the epoch alone."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["ContextBatchSampler", "steps_per_epoch"]


class ContextBatchSampler(torch.utils.data.Sampler):
    """Yields lists of row indices, reshuffled every epoch from ``(seed, epoch)`` alone, so a
    resumed run sees the same batches as an uninterrupted one.

    Args:
        context_ids: ``(N,)`` the context index of every row.
        batch_size: rows per batch.
        mode: ``"mixed"`` (batches mix contexts) or ``"context_pure"`` (every batch holds one
            context, as in the paper; contexts with more rows give more batches).
        seed: base seed of the shuffles.
        drop_last: drop incomplete batches (always done for a context's last partial batch in
            ``context_pure`` mode when the context has at least one full batch).
    """

    def __init__(
        self,
        context_ids: torch.Tensor,
        batch_size: int,
        mode: str = "mixed",
        seed: int = 0,
        drop_last: bool = True,
    ):
        if mode not in ("mixed", "context_pure"):
            raise ValueError(f"sampler must be 'mixed' or 'context_pure', got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.context_ids = torch.as_tensor(context_ids)
        self.batch_size, self.mode, self.seed, self.drop_last = batch_size, mode, seed, drop_last
        self.epoch = 0
        self._num_batches = len(self._batches(0))

    def shuffle_for_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch``. (Not named ``set_epoch`` on purpose: Accelerate calls
        ``set_epoch`` with its own count of passes over the loader, which restarts at 0 when a
        run is resumed; the epoch here must come from the training step.)"""
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        size = self.batch_size
        if self.mode == "mixed":
            order = torch.randperm(len(self.context_ids), generator=generator)
            groups = [order]
        else:
            groups = []
            for context in torch.unique(self.context_ids):
                rows = torch.nonzero(self.context_ids == context).flatten()
                groups.append(rows[torch.randperm(len(rows), generator=generator)])
        batches = []
        for rows in groups:
            full = len(rows) // size
            keep_partial = not self.drop_last or (self.mode == "context_pure" and full == 0)
            stop = len(rows) if keep_partial else full * size
            batches += [rows[i : i + size].tolist() for i in range(0, stop, size)]
        if self.mode == "context_pure":
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches(self.epoch))

    def __len__(self) -> int:
        return self._num_batches


def steps_per_epoch(
    num_batches: int, num_processes: int, accumulation: int, drop_last: bool = True
) -> int:
    """Optimizer steps in one epoch of ``num_batches`` batches shared by the processes as
    Accelerate shares a batch sampler: one batch per process in turn; with ``drop_last`` (the
    ``ContextBatchSampler`` default) a last round of fewer than ``num_processes`` batches is
    dropped, else it is completed with the first batches."""
    rounds = num_batches // num_processes if drop_last else math.ceil(num_batches / num_processes)
    return max(1, math.ceil(rounds / accumulation))
