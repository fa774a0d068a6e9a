"""The fine-tuning loop behind ``examples/finetune.py``: a context adapter trained with
Accelerate on the cached latents of a frozen autoencoder.

``finetune(args)`` reads top to bottom: check the inputs, build the adapter, cache the latents,
prepare the loaders, the optimizer and the schedule, resume, train with validation and early
stopping, then write the output folder.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from pathlib import Path

import datasets
import torch
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from ..adapter import CtxAdapter
from ..data import CachedLatents, ContextBatchSampler, cache_latents, collate_batch
from ..data import steps_per_epoch as count_steps
from ..hub import reach_repo
from ..model import ContextAutoencoder
from ..objective import Objective
from ..pinning import base_model_record
from ..processes import process_state
from ..viz import context_grid
from .finetune_args import GRID_IMAGES, FinetuneArguments
from .inputs import FinetuneInputs, fit_batch_size, resolve_inputs
from .optimization import make_optimizer, make_scheduler
from .output_dir import check_not_base, output_lock
from .outputs import run_summary, write_outputs
from .state import (
    EarlyStopping,
    Interruption,
    NoiseGenerator,
    checkpoint_step,
    list_checkpoints,
    register_checkpoint_hooks,
    save_checkpoint,
    trainable_state,
)
from .tracking import log_image, make_accelerator, tracker_config

UNFREEZE_DECODER_AFTER = 0.2
"""The fraction of the training steps after which a decoder LoRA starts learning."""


def finetune(args: FinetuneArguments) -> Path:
    """Train a context adapter on a frozen autoencoder and write the output folder.

    Everything is validated before anything is written: the flags, the output folder (not the
    base autoencoder's, writable, and locked for this run: a second run into it is refused at
    once), the data (columns, contexts), the autoencoder, the resolution and, with
    ``--push_to_hub``, the Hub login and repository. A ``--train_batch_size`` larger than the
    training rows becomes their number (``fit_batch_size``, with a note). Returns the output
    folder, which holds the adapter (``config.json``, ``model.safetensors``, ``README.md``),
    the sample grids, the concept-graph picture, ``metrics.json``, ``logs/`` and
    ``checkpoint-<step>/`` folders; the main process ends by printing ``run_summary``.
    """
    # 1. Check the flags, the output folder and, with --push_to_hub, the Hub login and
    #    repository (before the lock creates the output folder), then the data and the
    #    autoencoder; nothing else is written before this passes.
    started = time.perf_counter()
    args.validate()
    check_not_base(args.output_dir, args.autoencoder)
    repo_id = reach_repo(hub_repo_name(args)) if args.push_to_hub else None
    with output_lock(args.output_dir, enabled=process_state().is_main_process):
        return finetune_locked(args, repo_id, started)


def finetune_locked(args: FinetuneArguments, repo_id: str | None, started: float) -> Path:
    """The body of ``finetune`` once the output folder is locked
    (``ctxadapter.training.output_dir.output_lock``): ``repo_id`` is the Hub repository
    reached (or None), ``started`` the ``time.perf_counter()`` of the run's start."""
    inputs = resolve_inputs(args)
    batch_size, batch_note = fit_batch_size(args, inputs.train_contexts)

    # 2. A freshly initialised adapter for the data's concepts and the latent shape.
    set_seed(args.seed)
    adapter = build_adapter(args, inputs)
    accelerator = make_accelerator(
        args, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )
    if batch_note:
        accelerator.print(batch_note)

    # 3. Encode every image once into the latent cache on the accelerator (every process its
    #    share of the shards, then all read the union); wrap the autoencoder and adapter together.
    inputs.codec.to(accelerator.device)
    train_data, validation_data = (
        cached_latents(args, inputs, rows, contexts, inputs.fingerprints[split])
        for rows, contexts, split in (
            (inputs.train, inputs.train_contexts, "train_images"),
            (inputs.validation, inputs.validation_contexts, "validation_images"),
        )
    )
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        if args.overwrite_output_dir and inputs.checkpoint is None:  # never mix two runs
            for old in list_checkpoints(args.output_dir):
                shutil.rmtree(old)
    model = ContextAutoencoder(inputs.codec, adapter)
    if args.decoder_lora_rank:
        model.add_decoder_lora(args.decoder_lora_rank)
    model.to(accelerator.device)

    # 4. Loaders: training batches mix contexts (or hold one each, --sampler context_pure) and
    #    are reshuffled every epoch; validation batches keep the validation rows' order.
    sampler = ContextBatchSampler(train_data.context_ids, batch_size, args.sampler, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        train_data, batch_sampler=sampler, collate_fn=collate_batch
    )
    validation_loader = torch.utils.data.DataLoader(
        validation_data,
        batch_sampler=torch.utils.data.BatchSampler(
            range(len(validation_data)), batch_size, drop_last=False
        ),
        collate_fn=collate_batch,
    )
    epoch_steps = count_steps(
        len(sampler), accelerator.num_processes, args.gradient_accumulation_steps
    )
    total_steps = args.max_train_steps or args.num_train_epochs * epoch_steps

    # 5. Adam over the trainable parameters, the learning-rate schedule, early stopping and the
    #    training noise; a checkpoint keeps these and the trainable weights only.
    optimizer = make_optimizer(model, args.learning_rate)
    scheduler = make_scheduler(args, optimizer, total_steps)
    stopper = EarlyStopping(args.early_stopping_patience)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    noise = NoiseGenerator(args.seed + accelerator.process_index, accelerator.device)
    accelerator.register_for_checkpointing(stopper, noise)
    unwrapped = accelerator.unwrap_model(model)
    register_checkpoint_hooks(accelerator, unwrapped)

    # 6. Resume: the steps already done, the epoch they end in and the batches of that epoch
    #    already consumed.
    global_step = 0
    if inputs.checkpoint is not None:
        accelerator.load_state(str(inputs.checkpoint))
        global_step = checkpoint_step(inputs.checkpoint)
        accelerator.print(f"Resumed from {inputs.checkpoint} at step {global_step}.")
        if global_step >= total_steps and (Path(args.output_dir) / "metrics.json").is_file():
            accelerator.print(f"The run finished at step {global_step}: nothing to do.")
            accelerator.end_training()
            return Path(args.output_dir)
    first_epoch = global_step // epoch_steps
    skip_batches = (global_step % epoch_steps) * args.gradient_accumulation_steps

    # 7. Train. The decoder LoRA, if any, stays frozen for the first UNFREEZE_DECODER_AFTER of
    #    the steps; after every optimizer step the causal effects are projected into their box.
    objective = args.objective()
    if accelerator.is_main_process:
        accelerator.init_trackers("ctxadapter", config=tracker_config(args))
    grid_contexts = ["obs", *inputs.concepts, *inputs.compositions]
    unfreeze_step = int(UNFREEZE_DECODER_AFTER * total_steps)
    lora_params = [p for n, p in unwrapped.named_parameters() if "lora_" in n]
    progress = tqdm(
        range(total_steps),
        initial=global_step,
        desc="Training adapter",
        disable=not accelerator.is_local_main_process,
    )
    history: list[dict] = []
    stop, epoch = False, first_epoch
    with Interruption() as interruption:  # SIGTERM / Ctrl-C: a checkpoint, then exit
        for epoch in range(first_epoch, math.ceil(total_steps / epoch_steps)):
            model.train()
            sampler.shuffle_for_epoch(epoch)
            batches = loader
            if epoch == first_epoch and skip_batches:
                batches = accelerator.skip_first_batches(loader, skip_batches)
            for batch in batches:
                with accelerator.accumulate(model):
                    out = model(
                        batch["contexts"],
                        latents=batch["latents"],
                        pixel_values=batch.get("pixel_values"),
                        objective=objective,
                        generator=noise.generator,
                    )
                    accelerator.backward(out["loss"])
                    if lora_params and global_step < unfreeze_step:
                        for p in lora_params:
                            p.grad = None
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    if accelerator.sync_gradients:
                        unwrapped.adapter.apply_constraints_()
                if not accelerator.sync_gradients:
                    continue
                global_step += 1

                # 7a. Log the losses (a non-finite loss stops the run: nothing diverged is saved);
                #     checkpoint and draw a sample grid every --checkpointing_steps, or
                #     checkpoint at once on SIGTERM / Ctrl-C, then exit.
                progress.update(1)
                logs = {k: v.item() for k, v in out.items()} | {"lr": scheduler.get_last_lr()[0]}
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(
                        f"Training diverged: the loss is {logs['loss']} at step {global_step} "
                        f"(terms: {logs}). Nothing was saved; try a lower --learning_rate."
                    )
                progress.set_postfix(loss=f"{logs['loss']:.4g}")
                accelerator.log(logs, step=global_step)
                if interruption.requested(accelerator):
                    saved = save_checkpoint(accelerator, args, global_step, inputs.fingerprints)
                    accelerator.print(f"Interrupted: saved {saved}; resume it with the same flags")
                    accelerator.print("and --resume_from_checkpoint latest.")
                    accelerator.end_training()
                    raise SystemExit(128 + (interruption.signal_number or signal.SIGTERM))
                if global_step % args.checkpointing_steps == 0:
                    save_checkpoint(accelerator, args, global_step, inputs.fingerprints)
                    if accelerator.is_main_process:
                        grid = context_grid(
                            unwrapped,
                            grid_contexts,
                            GRID_IMAGES,
                            seed=args.seed,
                            title=f"Samples at step {global_step:,}",
                        )
                        grid.save(Path(args.output_dir) / f"samples-{global_step}.png")
                        log_image(accelerator, "samples", grid, global_step)
                if global_step >= total_steps:
                    break

            # 7b. After every epoch: the validation loss (the same objective) for early stopping,
            #     which keeps the best weights.
            loss = validation_loss(unwrapped, validation_loader, objective)
            history.append({"step": global_step, "validation_loss": loss})
            accelerator.log({"validation_loss": loss}, step=global_step)
            stop = stopper.update(loss, trainable_state(unwrapped))
            if stop or global_step >= total_steps:
                break
    finish_progress(progress, global_step, stop)

    # 8. Restore the best weights and write the output folder on the main process.
    if stopper.best_state:
        unwrapped.load_state_dict(stopper.best_state, strict=False)
    unwrapped.eval()
    if accelerator.is_main_process:
        outcome = {
            "steps": global_step,
            "epochs_completed": epoch + 1 - first_epoch,  # epochs of this run (not resumed ones)
            "stopped_early": stop,
            "stop_reason": stop_reason(args, global_step, stop),
            "train_batch_size": batch_size,
            "best_validation_loss": stopper.best_loss,
            "validation_history": history,
            "wall_time_s": round(time.perf_counter() - started, 1),
        }
        write_outputs(args, unwrapped, inputs, outcome, accelerator, repo_id)
        accelerator.print(run_summary(Path(args.output_dir), outcome, repo_id))
    accelerator.end_training()
    return Path(args.output_dir)


def hub_repo_name(args: FinetuneArguments) -> str:
    """The Hub repository ``--push_to_hub`` pushes to: ``--hub_model_id``, else the output
    folder's name."""
    return args.hub_model_id or Path(args.output_dir).resolve().name


def stop_reason(args: FinetuneArguments, step: int, stopped_early: bool) -> str:
    """Why a run ended at optimizer step ``step``: early stopping, ``--max_train_steps`` or
    ``--num_train_epochs``."""
    if stopped_early:
        return (
            f"early stopping at step {step:,} (no lower validation loss in the last "
            f"{args.early_stopping_patience} validation"
            f"{'s' if args.early_stopping_patience != 1 else ''})"
        )
    if args.max_train_steps:
        return f"--max_train_steps {args.max_train_steps:,} reached"
    return f"--num_train_epochs {args.num_train_epochs} done"


def finish_progress(progress: tqdm, step: int, stopped_early: bool) -> None:
    """Close the progress bar; when early stopping ended the run before the planned steps, the
    bar first becomes ``step`` steps long and says so, so that it ends full."""
    if stopped_early:
        progress.total = step
        progress.set_description(f"Stopped early at step {step:,}")
    progress.close()


def build_adapter(args: FinetuneArguments, inputs: FinetuneInputs) -> CtxAdapter:
    """A freshly initialised adapter (drawn from the global torch generator) for the data's
    concepts and the autoencoder's latent shape, of the architecture of ``--preset`` and
    ``--adapter_config``, recording the base autoencoder."""
    return CtxAdapter(
        concepts=inputs.concepts,
        latent_shape=list(inputs.latent_shape),
        base_model=base_model_record(
            inputs.codec.autoencoder, args.autoencoder, args.revision, args.subfolder
        ),
        **args.adapter_settings().to_dict(),
    )


def cached_latents(
    args: FinetuneArguments,
    inputs: FinetuneInputs,
    rows: datasets.Dataset,
    contexts: list[str],
    images_fingerprint: str,
) -> CachedLatents:
    """``rows`` as a ``CachedLatents`` dataset. Their latents (and, for the pixel loss, their
    pixels) are encoded once into the latent cache under ``--cache_dir``."""
    cache_root = os.path.join(
        args.cache_dir or datasets.config.HF_DATASETS_CACHE, "ctxadapter-latents"
    )
    cache = cache_latents(
        rows,
        inputs.codec,
        contexts,
        args.image_column,
        inputs.resolution,
        cache_root,
        batch_size=args.encode_batch_size,
        keep_pixels=args.objective().reconstruction == "pixel",
        images_fingerprint=images_fingerprint,
    )
    return CachedLatents(cache, inputs.concepts)


@torch.no_grad()
def validation_loss(model: ContextAutoencoder, loader, objective: Objective) -> float:
    """Mean ``objective`` over the validation batches, in eval mode with fixed noise."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=model.adapter.latent_log_scale.device).manual_seed(0)
    total, count = 0.0, 0
    for batch in loader:
        out = model(
            batch["contexts"],
            latents=batch["latents"],
            pixel_values=batch.get("pixel_values"),
            objective=objective,
            generator=generator,
        )
        total += out["loss"].item() * len(batch["latents"])
        count += len(batch["latents"])
    model.train(was_training)
    return total / max(count, 1)
