"""Runs of examples/finetune.py beyond one process and a prepared dataset: two processes
sharing the encode pass and the training (torchrun and gloo on the CPUs), and a streamed
dataset; both checked against a one-process launch of the same tiny run."""

import json
from pathlib import Path

import datasets
import pytest
import safetensors.torch
import torch
from test_training import in_process, launch

from ctxadapter import ContextAutoencoder


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_kl_path):
    """A one-process launch of the tiny run, checkpointing every 4 steps: its output folder,
    the autoencoder and its cache folder."""
    root = tmp_path_factory.mktemp("one_process")
    launch(root / "out", tiny_kl_path, root / "cache", "--checkpointing_steps", "4")
    return root / "out", tiny_kl_path, root / "cache"


def test_a_streamed_dataset_trains_the_same_adapter(one_process, tmp_path, capsys):
    output, autoencoder, _ = one_process
    streamed = tmp_path / "streamed"
    in_process(
        streamed,
        autoencoder,
        tmp_path / "cache",  # a fresh cache: the stream is encoded
        "--checkpointing_steps",
        "4",
        "--streaming",
    )
    assert "Encoded 112 images" in capsys.readouterr().out
    expected = safetensors.torch.load_file(str(output / "model.safetensors"))
    actual = safetensors.torch.load_file(str(streamed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    assert json.loads((streamed / "metrics.json").read_text())["train_images"] == 112


def shard_files(cache_dir) -> list[Path]:
    """The latent cache's shard files under a run's ``--cache_dir``, by cache, in row order."""
    return sorted(Path(cache_dir).glob("ctxadapter-latents/latents-*/rows-*.arrow"))


def test_two_process_cpu_run_shards_the_cache_and_only_the_main_process_writes(
    one_process, tmp_path
):
    one_output, autoencoder, one_process_cache = one_process
    output = tmp_path / "ddp"
    result = launch(
        output, autoencoder, tmp_path / "cache", "--checkpointing_steps", "4", processes=2
    )
    # Encoding: each process encoded its share of the shards (the training rows: 4 shards of
    # 32 rows or fewer, 2 each), into the very cache files a 1-process run writes.
    assert "(process 0 of 2)" in result.stdout and "(process 1 of 2)" in result.stdout
    shards = shard_files(tmp_path / "cache")
    assert [p.relative_to(tmp_path / "cache") for p in shards] == [
        p.relative_to(one_process_cache) for p in shard_files(one_process_cache)
    ]
    assert len(shards) >= 5  # the training rows' 4 shards and the validation rows'
    for shard in shards:
        two = datasets.Dataset.from_file(str(shard)).with_format("torch")[:]
        one = datasets.Dataset.from_file(
            str(one_process_cache / shard.relative_to(tmp_path / "cache"))
        )
        one = one.with_format("torch")[:]
        assert two["context"] == one["context"]
        assert torch.equal(two["latents"], one["latents"])
    # Training, checkpointing and the final save: one set of files, written by the main process
    # (Accelerate adds each process's random state to a checkpoint).
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in one_output.iterdir())
    assert sorted(p.name for p in (output / "checkpoint-8").iterdir()) == [
        "custom_checkpoint_0.pkl",
        "custom_checkpoint_1.pkl",
        "fingerprints.json",
        "optimizer.bin",
        "random_states_0.pkl",
        "random_states_1.pkl",
        "scheduler.bin",
        "trainable.safetensors",
        "training_args.json",
    ]
    assert json.loads((output / "metrics.json").read_text())["steps"] == 8
    model = ContextAutoencoder.from_pretrained(str(output))
    assert model.generate("obs", num_samples=1).shape == (1, 3, 32, 32)
