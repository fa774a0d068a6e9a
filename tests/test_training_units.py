"""The pieces of ctxadapter.training that the end-to-end runs reach only through
subprocesses: flag checks, presets, early stopping, checkpoint folders and data splits."""

import math
import shlex

import pytest
import torch

from ctxadapter.training import PRESETS, FinetuneArguments, PretrainArguments
from ctxadapter.training.finetune_args import parse_finetune_arguments
from ctxadapter.training.inputs import grid_compositions, load_splits
from ctxadapter.training.state import (
    EarlyStopping,
    checkpoint_step,
    list_checkpoints,
    resolve_checkpoint,
)


def test_default_flags_construct_and_name_the_shipped_autoencoder():
    args = FinetuneArguments()
    assert args.pretrained_model_name_or_path is None
    from ctxadapter.training import QUAD_AUTOENCODER

    assert args.autoencoder == str(QUAD_AUTOENCODER)
    assert (QUAD_AUTOENCODER / "diffusion_pytorch_model.safetensors").is_file()
    assert FinetuneArguments(pretrained_model_name_or_path="x/y").autoencoder == "x/y"
    assert args.uses_quad and not FinetuneArguments(train_data_dir="d").uses_quad


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            {"quad_variant": "mixed"},
            "--quad_variant must be one of \\('dependent', 'independent'\\)",
        ),
        (
            {"mixed_precision": "fp8"},
            "--mixed_precision must be one of \\('no', 'fp16', 'bf16', None\\)",
        ),
        ({"max_train_steps": 0}, "--max_train_steps must be >= 1, got 0"),
        ({"checkpointing_steps": 0}, "--checkpointing_steps must be >= 1, got 0"),
        ({"early_stopping_patience": -1}, "--early_stopping_patience must be >= 0, got -1"),
        ({"decoder_lora_rank": 4}, "--decoder_lora_rank needs the pixel loss"),
        (
            {"encode_options": ["tiling", "tiles"]},
            "--encode_options must be among \\('channels_last', 'slicing', 'tiling'\\), got tiles",
        ),
        (
            {"adapter_config": {"head_width": 0}},
            "--adapter_config: key 'head_width' holds 0, expected an integer >= 1",
        ),
        (
            {"objective_config": {"beta": -1}},
            "--objective_config: key 'beta' holds -1, expected a finite number >= 0",
        ),
    ],
)
def test_bad_finetune_flags_are_rejected_on_construction(flags, message):
    with pytest.raises(ValueError, match=message):
        FinetuneArguments(**flags)


def test_optional_choice_accepts_none_and_valid_values():
    assert FinetuneArguments(mixed_precision=None).mixed_precision is None
    assert FinetuneArguments(mixed_precision="bf16").mixed_precision == "bf16"
    pixel = {"reconstruction": "pixel"}
    assert FinetuneArguments(objective_config=pixel, decoder_lora_rank=4).decoder_lora_rank == 4


def test_pretrain_flags_check_the_resolution_against_the_levels():
    with pytest.raises(ValueError, match="--resolution 36 must be a multiple of 8"):
        PretrainArguments(resolution=36)
    assert PretrainArguments(resolution=36, block_out_channels=[8, 8, 8]).resolution == 36
    with pytest.raises(ValueError, match="--max_train_steps must be a positive integer"):
        PretrainArguments(max_train_steps=None)


def test_preset_is_applied_before_the_checks():
    # --decoder_lora_rank alone needs the pixel loss, which the paper preset provides
    args = parse_finetune_arguments(["--preset", "paper", "--decoder_lora_rank", "4"])
    assert (args.objective().reconstruction, args.decoder_lora_rank) == ("pixel", 4)
    assert set(PRESETS["paper"]) <= {f for f in FinetuneArguments.__dataclass_fields__}


def test_objective_carries_the_weights():
    weights = dict(beta=0.5, sample_matching=2.0, prior_matching=3.0, group_sparsity=1.0)
    objective = FinetuneArguments(objective_config=weights).objective()
    assert (objective.reconstruction, objective.beta) == ("latent", 0.5)
    assert (objective.sample_matching, objective.prior_matching) == (2.0, 3.0)
    assert (objective.group_sparsity, objective.num_projections, objective.l2) == (1.0, 64, 0.0)


def test_early_stopping_counts_rounds_without_improvement_and_keeps_the_best():
    stopper = EarlyStopping(patience=2)
    weight = torch.tensor([1.0])
    assert stopper.update(3.0, {"w": weight}) is False
    weight += 1  # the stored copy must not follow the live tensor
    assert stopper.update(3.0, {"w": weight}) is False  # equal is no improvement: 1 bad round
    assert stopper.update(2.5, {"w": weight * 10}) is False  # improvement resets the count
    assert stopper.bad_rounds == 0 and stopper.best_loss == 2.5
    assert stopper.update(2.6, {"w": weight}) is False
    assert stopper.update(2.7, {"w": weight}) is True  # second bad round in a row: stop
    assert torch.equal(stopper.best_state["w"], torch.tensor([20.0]))
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert (restored.best_loss, restored.bad_rounds) == (2.5, 2)


def test_early_stopping_with_patience_zero_never_stops():
    stopper = EarlyStopping(patience=0)
    assert stopper.best_loss == math.inf
    assert not any(stopper.update(loss, {}) for loss in [1.0, 2.0, 3.0, 4.0])
    assert stopper.best_loss == 1.0 and stopper.bad_rounds == 3


def test_checkpoint_folders_are_listed_by_step_and_resolved(tmp_path):
    for step in [10, 2, 100]:
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint: ignored
    (tmp_path / "logs").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-10",
        "checkpoint-100",
    ]  # by step, not by name
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-100"
    assert resolve_checkpoint(tmp_path, "checkpoint-10") == tmp_path / "checkpoint-10"
    assert resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-2")).name == "checkpoint-2"
    assert resolve_checkpoint(tmp_path, None) is None
    with pytest.raises(FileNotFoundError, match="'checkpoint-7': no such checkpoint folder"):
        resolve_checkpoint(tmp_path, "checkpoint-7")
    with pytest.raises(
        ValueError, match="logs' is not a checkpoint folder: expected 'checkpoint-<step>'"
    ):
        resolve_checkpoint(tmp_path, "logs")
    assert checkpoint_step(tmp_path / "checkpoint-100") == 100
    assert resolve_checkpoint(tmp_path / "missing", "latest") is None


def _save_dataset(folder, contexts, splits=("train",)):
    import datasets
    from PIL import Image

    rows = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8))] * len(contexts), "context": contexts},
        features=datasets.Features(
            {"image": datasets.Image(), "context": datasets.Value("string")}
        ),
    )
    datasets.DatasetDict({split: rows for split in splits}).save_to_disk(str(folder))
    return str(folder)


def test_splits_hold_out_a_seeded_fraction_and_read_the_contexts(tmp_path):
    contexts = ["obs", "a", "b", "a+b"] * 40
    folder = _save_dataset(tmp_path / "data", contexts)
    args = FinetuneArguments(dataset_name=folder)
    train, validation, concepts, train_contexts, validation_contexts = load_splits(
        args, seed=0, context_column="context"
    )
    assert (len(train), len(validation)) == (152, 8)  # round(0.05 * 40) = 2 of each context
    assert sorted(validation_contexts) == ["a"] * 2 + ["a+b"] * 2 + ["b"] * 2 + ["obs"] * 2
    assert concepts == ["a", "b"]
    assert sorted(train_contexts + validation_contexts) == sorted(contexts)
    assert train_contexts == list(train["context"])
    again = load_splits(args, seed=0, context_column="context")
    assert again[4] == validation_contexts  # same seed, same split
    pooled = load_splits(args, seed=0)
    assert pooled[2:] == (None, None, None) and len(pooled[0]) == 152  # 5% of all 160 rows


def test_a_validation_split_of_the_dataset_is_used_as_it_is(tmp_path):
    folder = _save_dataset(tmp_path / "data", ["obs", "a"] * 3, splits=("train", "validation"))
    train, validation, *_ = load_splits(FinetuneArguments(dataset_name=folder), seed=0)
    assert (len(train), len(validation)) == (6, 6)


def test_grid_compositions():
    assert grid_compositions(["a", "b", "c"], uses_quad=False) == ["a+b", "a+c", "b+c"]
    assert len(grid_compositions([f"c{k}" for k in range(6)], uses_quad=False)) == 12  # of 15
    from ctxadapter.data.quad import HELDOUT_COMPOSITIONS

    assert grid_compositions(["a"], uses_quad=True) == list(HELDOUT_COMPOSITIONS)


def test_stratified_split_by_hand():
    from ctxadapter.training.inputs import stratified_split

    contexts = ["obs"] * 5 + ["a"] * 2 + ["b"]
    train, validation = stratified_split(contexts, fraction=0.2, seed=0)
    held = [contexts[i] for i in validation]
    assert sorted(held) == ["a", "obs"]  # one of each context with two rows or more; b has one
    assert sorted(train + validation) == list(range(8)) and train == sorted(train)
    assert stratified_split(contexts, 0.2, seed=0) == (train, validation)
    with pytest.raises(ValueError, match="Too few rows for a validation split: 2 rows"):
        stratified_split(["obs", "a"], 0.5, seed=0)


def test_training_command_names_the_preset_and_the_changed_flags():
    from ctxadapter.training.outputs import training_command

    assert (
        training_command(parse_finetune_arguments([])) == "accelerate launch examples/finetune.py"
    )
    given = ["--preset", "paper", "--seed", "2", "--concepts", "a", "b"]
    given += ["--adapter_config", '{"pooled": true}', "--resume_from_checkpoint", "latest"]
    lines = training_command(parse_finetune_arguments(given)).split(" \\\n    ")
    assert lines == [
        "accelerate launch examples/finetune.py",
        "--preset paper",
        "--concepts a b",
        "--adapter_config '{\"pooled\": true}'",
        "--seed 2",
    ]  # never the flags about this folder
    again = [word for line in lines[1:] for word in shlex.split(line)]
    assert parse_finetune_arguments(again) == parse_finetune_arguments(given[:-2])


def test_push_to_hub_with_a_local_autoencoder_needs_its_hub_id(tmp_path):
    local = str(tmp_path)
    with pytest.raises(
        ValueError, match="--push_to_hub with the local autoencoder .*--hub_base_model_id"
    ):
        FinetuneArguments(push_to_hub=True, pretrained_model_name_or_path=local)
    with_id = FinetuneArguments(
        push_to_hub=True, pretrained_model_name_or_path=local, hub_base_model_id="org/vae"
    )
    assert with_id.push_to_hub
    assert FinetuneArguments(push_to_hub=True, pretrained_model_name_or_path="org/vae").push_to_hub
    assert FinetuneArguments(push_to_hub=True).push_to_hub  # the shipped autoencoder


# ------------------------------------------------------------------------------ CPU threads


def test_cpu_threads_per_process(tmp_path, monkeypatch):
    """On a CPU the Accelerator's process runs --cpu_threads torch threads, by default the
    available cores (whatever OMP_NUM_THREADS accelerate launch set); a bad value is refused."""
    from ctxadapter.training import tracking

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch sets by default
    monkeypatch.setattr(tracking, "available_cores", lambda: 2)
    tracking.make_accelerator(FinetuneArguments(output_dir=str(tmp_path), report_to="none"))
    assert torch.get_num_threads() == 2
    args = FinetuneArguments(output_dir=str(tmp_path), report_to="none", cpu_threads=1)
    tracking.make_accelerator(args)
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="--cpu_threads must be >= 1, got 0"):
        FinetuneArguments(cpu_threads=0)
    with pytest.raises(ValueError, match="--cpu_threads"):
        PretrainArguments(cpu_threads=-2)
