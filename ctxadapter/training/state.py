"""What a fine-tuning checkpoint holds beyond Accelerate's own state, and the checkpoint
folders themselves.

- ``EarlyStopping`` and ``NoiseGenerator``: objects registered with
  ``accelerator.register_for_checkpointing``, so that a resumed run stops, and draws noise,
  exactly as an uninterrupted one would;
- ``register_checkpoint_hooks``: ``save_state`` / ``load_state`` keep only the trainable
  weights (``trainable.safetensors``), never the frozen autoencoder;
- ``list_checkpoints``, ``prune_checkpoints``, ``resolve_checkpoint``: the ``checkpoint-<step>``
  folders of an output folder.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator

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
        state = safetensors.torch.load_file(os.path.join(input_dir, TRAINABLE_WEIGHTS_NAME))
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
    """The ``checkpoint-<step>`` folders of ``output_dir``, oldest (lowest step) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [p for p in Path(output_dir).iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=checkpoint_step)


def prune_checkpoints(output_dir: str | os.PathLike, keep: int | None) -> None:
    """Delete the oldest checkpoints so that at most ``keep - 1`` remain, before a new one is
    saved (``None``: keep all)."""
    if keep is None:
        return
    existing = list_checkpoints(output_dir)
    for old in existing[: max(0, len(existing) - keep + 1)]:
        shutil.rmtree(old)


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
