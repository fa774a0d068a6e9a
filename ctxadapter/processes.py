"""The processes of a run: Accelerate's ``PartialState``, created as ``Accelerator`` creates it,
and the command that starts several processes on a machine's CPUs.

``accelerate launch`` tells a process to run on the CPU through ``ACCELERATE_USE_CPU``, which
``Accelerator`` reads but a bare ``PartialState()`` does not: created first without it, the
state of processes started on CPUs by ``torchrun`` (``accelerate launch --multi_gpu`` on a
machine without GPUs) would be one process each instead of one gloo group.
"""

from __future__ import annotations

import sys

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

__all__ = ["cpu_launch", "process_state"]


def process_state() -> PartialState:
    """Accelerate's process state of this run (the number of processes, this one's index,
    barriers), on the CPU where ``ACCELERATE_USE_CPU`` asks for it. The state is shared: the
    first call (or ``Accelerator``) sets it up for the whole process."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def cpu_launch(
    num_processes: int, threads: int = 1, quiet: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command (up to the script) that starts ``num_processes``
    processes of ``threads`` torch threads on this machine's CPUs (``-q`` with ``quiet``: only
    the relevant tracebacks), and the environment variables to add. ``--cpu`` starts one
    process (several need MPI), so several start through torchrun (``--multi_gpu``) with
    ``ACCELERATE_USE_CPU=1``: one gloo group."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *(["-q"] if quiet else []),
        "--cpu" if num_processes == 1 else "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(threads),
    ]
    return command, {"ACCELERATE_USE_CPU": "1"}
