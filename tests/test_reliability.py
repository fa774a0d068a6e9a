"""Faults and bad inputs: each ends in a correct result, or in a clear error raised before any
work or write, and nothing already saved is lost. Runs are in-process on tiny quad data
(``finetune(FinetuneArguments(...))``), except the signal test, which needs a process of its
own."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from ctxadapter import ContextAutoencoder
from ctxadapter.training import FinetuneArguments, finetune
from ctxadapter.training.state import (
    TRAINING_ARGS_NAME,
    list_checkpoints,
    resolve_checkpoint,
    staged_folder,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("reliability-cache"))


@pytest.fixture
def tiny(tiny_kl_path, cache_dir, tmp_path):
    """``tiny(**flags)``: the flags of a run of a few seconds in ``tmp_path / "out"``."""

    def make(**flags) -> FinetuneArguments:
        base = dict(
            pretrained_model_name_or_path=tiny_kl_path,
            output_dir=str(tmp_path / "out"),
            cache_dir=cache_dir,
            quad_images_per_context=16,
            resolution=32,
            train_batch_size=16,
            max_train_steps=4,
            exogenous_width=4,
            concept_width=2,
            head_width=8,
            lr_warmup_steps=1,
            validation_steps=100,
            checkpointing_steps=2,
            num_validation_images=1,
            report_to="none",
        )
        return FinetuneArguments(**(base | flags))

    return make


def test_divergence_stops_the_run_and_saves_no_adapter(tiny):
    args = tiny(learning_rate=1e6)
    with pytest.raises(FloatingPointError, match="Training diverged: .* at step"):
        finetune(args)
    assert not (Path(args.output_dir) / "model.safetensors").exists()


@pytest.mark.parametrize("name", ["beta", "sample_matching", "learning_rate"])
def test_non_finite_weights_are_rejected_before_work(tiny, name):
    with pytest.raises(ValueError, match=f"--{name} must be"):
        tiny(**{name: float("nan")})
    with pytest.raises(ValueError, match=f"--{name} must be"):
        tiny(**{name: float("inf")})


def test_a_batch_larger_than_the_data_fails_before_writing(tiny):
    args = tiny(train_batch_size=4096)
    with pytest.raises(
        ValueError, match="--train_batch_size 4096 is larger than the 1[0-9]{2} training rows"
    ):
        finetune(args)
    assert not Path(args.output_dir).exists()


@pytest.mark.parametrize("count", [0, 65])
def test_grid_size_is_bounded(tiny, count):
    with pytest.raises(ValueError, match="--num_validation_images must be"):
        tiny(num_validation_images=count)


def test_an_earlier_run_is_not_replaced_unless_asked(tiny):
    args = tiny()
    finetune(args)
    output = Path(args.output_dir)
    first = (output / "model.safetensors").read_bytes()
    assert [p.name for p in list_checkpoints(output)] == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(FileExistsError, match="already holds the results of an earlier run"):
        finetune(tiny(seed=1))
    assert (output / "model.safetensors").read_bytes() == first  # untouched
    (output / "checkpoint-4" / "stale").write_text("")  # a mark on the old run's checkpoint
    finetune(tiny(seed=1, overwrite_output_dir=True, max_train_steps=2))
    assert (output / "model.safetensors").read_bytes() != first
    assert [p.name for p in list_checkpoints(output)] == ["checkpoint-2"]  # old ones removed
    assert not (output / ".partial").exists()
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["steps"] == 2


def test_resuming_with_other_flags_is_refused_and_a_finished_run_is_left_alone(tiny):
    args = tiny()
    finetune(args)
    output = Path(args.output_dir)
    before = {n: (output / n).read_bytes() for n in ("model.safetensors", "metrics.json")}
    with pytest.raises(ValueError, match="--learning_rate 0.001 -> 0.01"):
        finetune(tiny(resume_from_checkpoint="latest", learning_rate=1e-2))
    with pytest.raises(ValueError, match="--train_batch_size 16 -> 8"):
        finetune(tiny(resume_from_checkpoint="latest", train_batch_size=8))
    finetune(tiny(resume_from_checkpoint="latest", report_to="none"))  # finished: nothing to do
    assert {n: (output / n).read_bytes() for n in before} == before
    saved = json.loads((output / "checkpoint-4" / TRAINING_ARGS_NAME).read_text())
    assert saved["learning_rate"] == 1e-3 and saved["max_train_steps"] == 4


def test_a_failed_final_save_leaves_the_previous_adapter_loadable(tiny, monkeypatch):
    args = tiny(max_train_steps=2)
    finetune(args)
    output = Path(args.output_dir)
    before = (output / "model.safetensors").read_bytes()

    def full_disk(self, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{")  # a half-written file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ContextAutoencoder, "save_pretrained", full_disk)
    with pytest.raises(OSError, match="No space left"):
        finetune(tiny(max_train_steps=2, overwrite_output_dir=True, seed=3))
    monkeypatch.undo()
    assert (output / "model.safetensors").read_bytes() == before
    model = ContextAutoencoder.from_pretrained(str(output))  # the old adapter still loads
    assert model.generate("obs", num_samples=1).shape == (1, 3, 32, 32)


def test_staged_folder_moves_files_only_when_the_block_succeeds(tmp_path):
    (tmp_path / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path) as partial:
            (partial / "config.json").write_text("new")
            raise RuntimeError("write failed")
    assert (tmp_path / "config.json").read_text() == "old"
    with staged_folder(tmp_path) as partial:
        (partial / "config.json").write_text("new")
        (partial / "model.safetensors").write_text("weights")
    assert (tmp_path / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_latest_skips_an_incomplete_checkpoint(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / ".checkpoint-4.partial").mkdir()  # a save that did not finish
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-2"


def test_a_checkpoint_without_its_flags_is_not_resumed(tiny):
    args = tiny()
    (Path(args.output_dir) / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no training_args.json"):
        finetune(tiny(resume_from_checkpoint="latest"))


def test_small_datasets_get_a_validation_split_with_every_context(tiny, tmp_path):
    import datasets
    from PIL import Image

    contexts = [c for c in ["obs", "a", "b"] for _ in range(20)]
    images = [Image.new("RGB", (32, 32), (i * 4, 0, 0)) for i in range(len(contexts))]
    folder = str(tmp_path / "data")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"image": images, "context": contexts})}
    ).save_to_disk(folder)
    args = tiny(dataset_name=folder, validation_fraction=0.1, train_batch_size=8)
    finetune(args)
    metrics = json.loads((Path(args.output_dir) / "metrics.json").read_text())
    assert (metrics["train_images"], metrics["validation_images"]) == (54, 6)  # 2 per context


def test_a_bad_validation_split_is_named(tiny, tmp_path):
    import datasets
    from PIL import Image

    def rows(contexts):
        images = [Image.new("RGB", (32, 32))] * len(contexts)
        return datasets.Dataset.from_dict({"image": images, "context": contexts})

    folder = str(tmp_path / "data")
    datasets.DatasetDict(
        {"train": rows(["obs", "a"] * 8), "validation": rows(["obs", "c"])}
    ).save_to_disk(folder)
    with pytest.raises(ValueError, match="The dataset's 'validation' split: .*'c'"):
        finetune(tiny(dataset_name=folder, train_batch_size=8))


def test_sigterm_saves_a_checkpoint_that_resumes_bit_identically(tiny, tiny_kl_path, tmp_path):
    reference = tiny(output_dir=str(tmp_path / "reference"), max_train_steps=6)
    finetune(reference)
    interrupted = tiny(output_dir=str(tmp_path / "interrupted"), max_train_steps=6)
    flags = [
        f"--{k}={v}"
        for k, v in vars(interrupted).items()
        if v is not None and not isinstance(v, (bool, list))
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # SIGTERM as soon as the run prints that it is training: the first step boundary saves
    script = (
        "import os, signal, sys, torch\n"
        "torch.set_num_threads(1)  # as in this process: the same float reductions\n"
        "from ctxadapter.training import finetune, parse_finetune_arguments\n"
        "from ctxadapter.training.state import Interruption\n"
        "real = Interruption.__enter__\n"
        "def enter(self):\n"
        "    real(self)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return self\n"
        "Interruption.__enter__ = enter\n"
        "finetune(parse_finetune_arguments(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *flags], capture_output=True, text=True, env=env
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert "Interrupted: saved" in result.stdout
    output = Path(interrupted.output_dir)
    assert [p.name for p in list_checkpoints(output)] == ["checkpoint-1"]
    assert not (output / "model.safetensors").exists()
    finetune(tiny(output_dir=str(output), max_train_steps=6, resume_from_checkpoint="latest"))
    expected = safetensors.torch.load_file(str(Path(reference.output_dir) / "model.safetensors"))
    actual = safetensors.torch.load_file(str(output / "model.safetensors"))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
