"""The processes of a run: Accelerate's ``PartialState``, created as ``Accelerator`` creates it.

``accelerate launch`` tells a process to run on the CPU through ``ACCELERATE_USE_CPU``, which
``Accelerator`` reads but a bare ``PartialState()`` does not: created first without it, the
state of processes started on CPUs by ``torchrun`` (``accelerate launch --multi_gpu`` on a
machine without GPUs) would be one process each instead of one gloo group.
"""

from __future__ import annotations

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

__all__ = ["process_state"]


def process_state() -> PartialState:
    """Accelerate's process state of this run (the number of processes, this one's index,
    barriers), on the CPU where ``ACCELERATE_USE_CPU`` asks for it. The state is shared: the
    first call (or ``Accelerator``) sets it up for the whole process."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
