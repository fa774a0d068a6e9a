"""What a fine-tuning checkpoint holds beyond Accelerate's own state, the checkpoint folders
themselves, and the output folder's safety rules.

- ``EarlyStopping`` and ``NoiseGenerator``: objects registered with
  ``accelerator.register_for_checkpointing``, so that a resumed run stops, and draws noise,
  exactly as an uninterrupted one would;
- ``register_checkpoint_hooks``: ``save_state`` / ``load_state`` keep only the trainable
  weights (``trainable.safetensors``), never the frozen autoencoder;
- ``save_checkpoint``, ``list_checkpoints``, ``resolve_checkpoint``: the
  ``checkpoint-<step>`` folders of an output folder, written atomically, with the run's flags
  (``training_args.json``) checked on resume by ``check_resumable``, and the fingerprints of
  its data and base autoencoder (``fingerprints.json``) checked by ``check_same_inputs``;
- ``Interruption``: SIGTERM and Ctrl-C become a request, honoured between optimizer steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator
from safetensors import SafetensorError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
"""Name of a checkpoint folder; group 1 is the optimizer step it was saved after."""

TRAINABLE_WEIGHTS_NAME = "trainable.safetensors"
"""The file of a checkpoint folder that holds the trainable weights."""


class EarlyStopping:
    """Tracks the validation loss, counts validations without improvement, and keeps the best
    trainable weights.

    Args:
        patience: stop after this many validations in a row without a lower loss (0: never).
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss = math.inf
        self.bad_rounds = 0
        self.best_state: dict[str, torch.Tensor] = {}

    def update(self, loss: float, state: dict[str, torch.Tensor]) -> bool:
        """Record a validation ``loss`` and, if it is the best so far, a copy of ``state``.
        Returns True when training should stop."""
        if loss < self.best_loss:
            self.best_loss, self.bad_rounds = loss, 0
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
        else:
            self.bad_rounds += 1
        return self.patience > 0 and self.bad_rounds >= self.patience

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "bad_rounds": self.bad_rounds,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.bad_rounds = state["best_loss"], state["bad_rounds"]
        self.best_state = state["best_state"]


class NoiseGenerator:
    """The ``torch.Generator`` of the training noise, saved in checkpoints so that a resumed run
    draws exactly the noise an uninterrupted one would (the global generator is also drawn from
    by data loaders when they start an epoch, which differs between the two)."""

    def __init__(self, seed: int, device: torch.device):
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable weights of a ``ContextAutoencoder``: its adapter's state under
    ``adapter.``, and the decoder LoRA's, if any. This is what a checkpoint keeps."""
    state = {f"adapter.{k}": v for k, v in model.adapter.state_dict().items()}
    state.update({k: v for k, v in model.state_dict().items() if "lora_" in k})
    return state


def register_checkpoint_hooks(accelerator: Accelerator, model) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` keep only ``trainable_state(model)``
    (the adapter and any decoder LoRA) in ``TRAINABLE_WEIGHTS_NAME``, never the frozen
    autoencoder. Loading a checkpoint whose weights do not match the model is an error."""

    def save(models, weights, output_dir):
        if accelerator.is_main_process:
            state = {k: v.contiguous() for k, v in trainable_state(model).items()}
            safetensors.torch.save_file(state, os.path.join(output_dir, TRAINABLE_WEIGHTS_NAME))
        weights.clear()

    def load(models, input_dir):
        path = os.path.join(input_dir, TRAINABLE_WEIGHTS_NAME)
        try:
            state = safetensors.torch.load_file(path)
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"Could not read {path}: the file is missing, corrupted or truncated ({error})."
            ) from error
        expected = set(trainable_state(model))
        if set(state) != expected:
            raise ValueError(
                f"Checkpoint {input_dir} does not match the model: missing "
                f"{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}."
            )
        model.load_state_dict(state, strict=False)
        models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step of a ``checkpoint-<step>`` folder."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder: expected 'checkpoint-<step>'.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoint-<step>`` folders of ``output_dir``, oldest (lowest step)
    first. A checkpoint being written is named ``.checkpoint-<step>.partial`` until it is
    complete, so it is never listed."""
    if not os.path.isdir(output_dir):
        return []
    found = [p for p in Path(output_dir).iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=checkpoint_step)


TRAINING_ARGS_NAME = "training_args.json"
"""The file of a checkpoint folder that holds the flags of the run that saved it."""

FINGERPRINTS_NAME = "fingerprints.json"
"""The file of a checkpoint folder that holds the fingerprints of the run's inputs: its
images' content, their contexts and the base autoencoder's weights."""

RESUME_MAY_CHANGE = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "report_to",
        "cache_dir",
        "streaming",
        "cpu_threads",
        "checkpointing_steps",
        "push_to_hub",
        "hub_model_id",
    }
)
"""Flags that may differ between a run and its resumption: they change where results go, how
often they are written or how the data is read, not what is trained."""


def save_checkpoint(
    accelerator: Accelerator, args, step: int, fingerprints: dict[str, str]
) -> Path:
    """Save ``accelerator``'s state, the run's flags ``args`` and the ``fingerprints`` of its
    inputs as ``<output_dir>/checkpoint-<step>``, then prune to
    ``args.checkpoints_total_limit``.

    The state is written to ``.checkpoint-<step>.partial`` beside it and renamed once complete,
    so a failed or interrupted save never leaves a folder that ``latest`` would pick, and no
    older checkpoint is deleted before the new one is complete."""
    output = Path(args.output_dir)
    final, partial = output / f"checkpoint-{step}", output / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process's files (its random state) are in
    if accelerator.is_main_process:
        (partial / TRAINING_ARGS_NAME).write_text(
            json.dumps(dataclasses.asdict(args), indent=2) + "\n"
        )
        (partial / FINGERPRINTS_NAME).write_text(json.dumps(fingerprints, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    accelerator.wait_for_everyone()
    return final


def check_resumable(checkpoint: Path, args) -> None:
    """Raise ``ValueError`` unless ``checkpoint`` was saved by a run with the same flags as
    ``args`` (except those in ``RESUME_MAY_CHANGE``), naming each flag that differs."""
    path = checkpoint / TRAINING_ARGS_NAME
    if not path.is_file():
        raise ValueError(
            f"{checkpoint} holds no {TRAINING_ARGS_NAME}: it was not saved by this version of "
            f"ctxadapter's finetune, so it cannot be resumed safely."
        )
    saved = json.loads(path.read_text())
    current = json.loads(json.dumps(dataclasses.asdict(args)))  # the JSON types of the saved flags
    changed = [
        f"--{name} {saved.get(name)!r} -> {current.get(name)!r}"
        for name in sorted(set(saved) | set(current))
        if name not in RESUME_MAY_CHANGE and saved.get(name) != current.get(name)
    ]
    if changed:
        raise ValueError(
            f"Cannot resume from {checkpoint}: it was trained with other flags "
            f"({'; '.join(changed)}). Resume with the same flags, or start a new run in "
            f"another --output_dir."
        )


def check_same_inputs(checkpoint: Path, fingerprints: dict[str, str]) -> None:
    """Raise ``ValueError`` when the inputs of the run to resume (their ``fingerprints``)
    differ from those ``checkpoint`` recorded, naming each with both values: data or a base
    autoencoder changed in place at the same path. A checkpoint saved before fingerprints were
    recorded is not checked."""
    path = checkpoint / FINGERPRINTS_NAME
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    changed = [
        f"{name} {saved.get(name)} -> {fingerprints.get(name)}"
        for name in sorted(set(saved) | set(fingerprints))
        if saved.get(name) != fingerprints.get(name)
    ]
    if changed:
        raise ValueError(
            f"Cannot resume from {checkpoint}: its inputs changed since it was saved, at the "
            f"same paths ({'; '.join(changed)}). Restore them, or start a new run in another "
            f"--output_dir."
        )


def resolve_checkpoint(
    output_dir: str | os.PathLike, resume_from_checkpoint: str | None
) -> Path | None:
    """The checkpoint folder to resume from: ``None`` for none, ``"latest"`` for the newest in
    ``output_dir`` (``None`` if there is none yet), else a folder path, or a folder name inside
    ``output_dir``, which must exist and be named ``checkpoint-<step>``."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        existing = list_checkpoints(output_dir)
        return existing[-1] if existing else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r}: no such checkpoint folder."
        )
    checkpoint_step(path)  # raises unless it is named checkpoint-<step>
    return path


class Interruption:
    """While active (``with Interruption() as interruption:``), SIGTERM and SIGINT (Ctrl-C)
    do not stop the process: they set ``signal_number``, which the training loop checks between
    optimizer steps to save a checkpoint and exit. Outside the main thread, where Python cannot
    handle signals, it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._record)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _record(self, number, frame) -> None:
        self.signal_number = number

    def requested(self, accelerator: Accelerator) -> bool:
        """True when any process received a signal (all processes agree, so that they save the
        same checkpoint together)."""
        flag = self.signal_number is not None
        if accelerator.num_processes > 1:
            flag_tensor = torch.tensor([int(flag)], device=accelerator.device)
            flag = bool(accelerator.reduce(flag_tensor, reduction="sum").item())
        return flag
