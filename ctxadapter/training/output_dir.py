"""The output folder's safety rules, checked before a run does any work.

- ``check_not_base``: the output folder is neither the base autoencoder's folder nor inside it
  (the adapter's ``config.json`` would replace the autoencoder's);
- ``check_output_dir``: a folder holding earlier results is not reused by accident;
- ``output_lock``: one run at a time per folder (a lock file, with the holder's pid, host and
  start time written beside it); taking the lock is also the proof that the folder is writable;
- ``staged_folder``: final files are written aside and moved in only when all are complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..pinning import local_path
from .state import list_checkpoints

LOCK_NAME = ".ctxadapter.lock"
"""The lock file of a run's output folder (held with ``filelock`` while the run lasts)."""

OWNER_NAME = ".ctxadapter.lock.json"
"""Beside the lock: the ``pid``, ``host`` and ``started`` time of the run holding it."""

PREVIOUS_RESULTS = ("config.json", "model.safetensors", "diffusion_pytorch_model.safetensors")
"""Files whose presence means that an output folder already holds a saved model."""


def check_not_base(output_dir: str | os.PathLike, autoencoder: str) -> None:
    """Refuse an output folder that is the base autoencoder's local folder (``autoencoder``,
    a shipped autoencoder's name included) or a folder inside it, whatever the other flags:
    the run's files would replace or mix with the autoencoder's."""
    base = local_path(str(autoencoder))
    if not os.path.isdir(base):
        return
    output, base = Path(output_dir).resolve(), Path(base).resolve()
    if output == base or base in output.parents:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} is {'' if output == base else 'inside '}the "
            f"base autoencoder's folder {str(base)!r}: the adapter's files would replace or mix "
            f"with the autoencoder's. Choose another folder (--overwrite_output_dir does not "
            f"change this)."
        )


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resuming: bool) -> None:
    """Refuse to start a new run in a folder that holds a saved model or checkpoints of an
    earlier run, unless ``overwrite`` (``--overwrite_output_dir``) is set; resuming a
    checkpoint of that folder (``resuming``) continues the earlier run and is allowed."""
    output = Path(output_dir)
    if resuming or overwrite or not output.is_dir():
        return
    found = [name for name in PREVIOUS_RESULTS if (output / name).exists()]
    found += [p.name for p in list_checkpoints(output)]
    if found:
        raise FileExistsError(
            f"--output_dir {str(output)!r} already holds the results of an earlier run "
            f"({', '.join(found)}). Pass --overwrite_output_dir to replace them, "
            f"--resume_from_checkpoint latest to continue that run, or choose another folder."
        )


def _owner_text(owner: dict | None) -> str:
    if not owner:
        return "a run whose details are not written yet"
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold the output folder's lock for the ``with`` block (created if needed; ``enabled``
    False does nothing, for the processes of a run other than the main one).

    The lock is an OS file lock (``filelock``), released by the OS when its process dies, so a
    lock left by a killed run is taken over, with a note naming that run. The lock file and
    the owner file are removed when the block ends, and the folder too if the block created it
    and left it empty.

    Raises:
        RuntimeError: another run holds the lock, naming its pid, host and start time.
        PermissionError: the folder cannot be created or written, naming it.
    """
    if not enabled:
        yield
        return
    output = Path(output_dir)
    created = not output.exists()
    lock = FileLock(str(output / LOCK_NAME), timeout=0)
    try:
        output.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        owner = _read_owner(output / OWNER_NAME)
        raise RuntimeError(
            f"--output_dir {str(output)!r} is in use by another run ({_owner_text(owner)}). "
            f"Wait for it to finish, or choose another folder."
        ) from None
    except OSError as error:
        raise PermissionError(
            f"--output_dir {str(output)!r} cannot be written ({error}): choose a folder you "
            f"can write to."
        ) from error
    owner_file = output / OWNER_NAME
    previous = _read_owner(owner_file)
    if previous:
        print(
            f"Taking over the lock of {str(output)!r} left by a run that ended without "
            f"releasing it ({_owner_text(previous)}).",
            flush=True,
        )
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    try:
        owner_file.write_text(json.dumps(owner) + "\n")
        yield
    finally:
        owner_file.unlink(missing_ok=True)
        Path(lock.lock_file).unlink(missing_ok=True)  # while held: no other run can own it
        lock.release()
        if created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()


@contextlib.contextmanager
def staged_folder(output: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder ``<output>/.partial`` to write files into; when the block ends
    without an error, move them into ``output`` (``config.json`` last) and remove the folder.
    A write that fails (a full disk) leaves ``output``'s previous files as they were. A process
    killed between two moves leaves new weights beside the old ``config.json``: the weights'
    metadata binds them to their config, so ``from_pretrained`` refuses that folder, naming
    both files, instead of loading a mix (the new files are still complete in ``.partial``)."""
    output = Path(output)
    partial = output / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    for file in sorted(partial.iterdir(), key=lambda f: f.name == "config.json"):
        os.replace(file, output / file.name)
    partial.rmdir()
