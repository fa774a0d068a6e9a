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
from ctxadapter.training import finetune
from ctxadapter.training.output_dir import staged_folder
from ctxadapter.training.state import TRAINING_ARGS_NAME, list_checkpoints, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_divergence_stops_the_run_and_saves_no_adapter(tiny):
    args = tiny(learning_rate=1e6)
    with pytest.raises(FloatingPointError, match="Training diverged: .* at step"):
        finetune(args)
    assert not (Path(args.output_dir) / "model.safetensors").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected_before_work(tiny, bad):
    for name in ("beta", "sample_matching"):
        with pytest.raises(ValueError, match=f"--objective_config: key '{name}' holds {bad}"):
            tiny(objective_config={name: bad})
    with pytest.raises(ValueError, match="--learning_rate must be"):
        tiny(learning_rate=bad)


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
    with pytest.raises(ValueError, match="--learning_rate 0.004 -> 0.01"):
        finetune(tiny(resume_from_checkpoint="latest", learning_rate=1e-2))
    with pytest.raises(ValueError, match="--train_batch_size 16 -> 8"):
        finetune(tiny(resume_from_checkpoint="latest", train_batch_size=8))
    wider = dict(exogenous_width=4, concept_width=2, head_width=16)
    with pytest.raises(ValueError, match="--adapter_config .*'head_width': 8} -> .*: 16}"):
        finetune(tiny(resume_from_checkpoint="latest", adapter_config=wider))
    finetune(tiny(resume_from_checkpoint="latest", report_to="none"))  # finished: nothing to do
    assert {n: (output / n).read_bytes() for n in before} == before
    saved = json.loads((output / "checkpoint-4" / TRAINING_ARGS_NAME).read_text())
    assert saved["learning_rate"] == 4e-3 and saved["max_train_steps"] == 4
    assert saved["adapter_config"] == {"exogenous_width": 4, "concept_width": 2, "head_width": 8}


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
    args = tiny(dataset_name=folder, train_batch_size=8)
    finetune(args)
    metrics = json.loads((Path(args.output_dir) / "metrics.json").read_text())
    assert (metrics["train_images"], metrics["validation_images"]) == (57, 3)  # 1 per context


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
        f"--{k}={json.dumps(v) if isinstance(v, dict) else v}"
        for k, v in vars(interrupted).items()
        if v is not None and not isinstance(v, (bool, list))
    ] + ["--cpu_threads=1"]  # as in this process: the same float reductions
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # SIGTERM as soon as the run prints that it is training: the first step boundary saves
    script = (
        "import os, signal, sys, torch\n"
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


def test_a_truncated_checkpoint_is_named(tiny):
    args = tiny()
    finetune(args)
    weights = Path(args.output_dir) / "checkpoint-4" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="trainable.safetensors: the file is missing, corrupted"):
        finetune(tiny(resume_from_checkpoint="checkpoint-4"))


def _labelled(folder, contexts, image=None):
    import datasets
    from PIL import Image

    image = image or Image.new("RGB", (32, 32))
    features = None
    if all(isinstance(c, str) for c in contexts):
        features = datasets.Features(
            {"image": datasets.Image(), "context": datasets.Value("string")}
        )
    rows = datasets.Dataset.from_dict(
        {"image": [image] * len(contexts), "context": contexts}, features=features
    )
    datasets.DatasetDict({"train": rows}).save_to_disk(str(folder))
    return str(folder)


@pytest.mark.parametrize(
    "contexts, message",
    [
        (["obs", "a", None, "a"] * 4, "Row 2 of the context column 'context' holds None"),
        ([0, 1, 1, 0] * 4, "Row 0 of the context column 'context' holds 0 \\(int\\)"),
        (["obs", "a", "A", "a"] * 4, "both 'A' and 'a', which differ only by case"),
        (["obs", "a", "Obs", "a"] * 4, "both 'obs' and 'Obs'"),
    ],
)
def test_bad_context_labels_are_named(tiny, tmp_path, contexts, message):
    folder = _labelled(tmp_path / "data", contexts)
    with pytest.raises(ValueError, match=message):
        finetune(tiny(dataset_name=folder, train_batch_size=4))
    assert not (tmp_path / "out").exists()


def test_a_label_that_differs_from_a_concept_by_case_names_both(tiny, tmp_path):
    folder = _labelled(tmp_path / "data", ["obs", "a", "A"] * 4)
    with pytest.raises(ValueError, match="unknown concept 'A' \\(it differs only by case from 'a'"):
        finetune(tiny(dataset_name=folder, concepts=["a"], train_batch_size=4))


def test_spaces_around_labels_are_stripped(tmp_path):
    import datasets

    from ctxadapter.data import context_strings

    rows = datasets.Dataset.from_dict({"context": ["a ", " a + b", "obs", " b"]})
    assert context_strings(rows, "context") == ["a", "a+b", "obs", "b"]
    lists = datasets.Dataset.from_dict({"context": [["a ", "b"], []]})
    assert context_strings(lists, "context") == ["a+b", "obs"]


def test_malformed_metadata_is_named_with_its_folder(tiny, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text(
        '{"file_name": "0.png", "context": "obs"}\n{"file_name": "1.png", "context": "a"\n'
    )
    with pytest.raises(ValueError, match=f"--train_data_dir '{folder}' .*JSON parse error"):
        finetune(tiny(train_data_dir=str(folder)))


def test_a_truncated_image_is_named_with_its_row(tiny, tmp_path):
    import io

    import datasets
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    good = buffer.getvalue()
    values = [{"bytes": good, "path": None}] * 7 + [{"bytes": good[:60], "path": "broken.png"}]
    rows = datasets.Dataset.from_dict(
        {"image": values, "context": ["obs", "a"] * 4},
        features=datasets.Features(
            {"image": datasets.Image(), "context": datasets.Value("string")}
        ),
    )
    folder = str(tmp_path / "data")
    datasets.DatasetDict({"train": rows, "validation": rows.select(range(2))}).save_to_disk(folder)
    with pytest.raises(ValueError, match="Row 7: the image 'broken.png' cannot be read"):
        finetune(tiny(dataset_name=folder, train_batch_size=4))


def test_16_bit_images_are_scaled_not_clipped():
    import numpy as np
    from PIL import Image

    from ctxadapter.images import preprocess_images, to_rgb

    values = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    image = Image.fromarray(values)  # a 16-bit greyscale image, as a 16-bit PNG loads
    assert image.mode.startswith("I")
    rgb = np.asarray(to_rgb(image))
    assert rgb[..., 0].tolist() == [[0, 128], [255, 64]]  # 65535 -> 255, 32768 -> 128
    assert preprocess_images(image, 2, output="uint8")[0, 0].tolist() == [[0, 128], [255, 64]]


@pytest.fixture
def small_model(tiny_kl_path):
    from ctxadapter import CtxAdapter
    from ctxadapter.codec import load_autoencoder

    torch.manual_seed(0)
    adapter = CtxAdapter(["a", "b"], [4, 4, 4], exogenous_width=2, concept_width=2)
    return ContextAutoencoder(load_autoencoder(tiny_kl_path), adapter).eval()


def test_uint8_images_are_read_in_0_255(small_model):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = small_model.reconstruct(images.float() / 255, "obs")
    torch.testing.assert_close(small_model.reconstruct(images, "obs"), expected)
    torch.testing.assert_close(
        small_model.counterfactual(images, "a"),
        small_model.counterfactual(images.float() / 255, "a"),
    )
    with pytest.raises(ValueError, match="Float images must be in \\[0, 1\\].*\\[0, 255\\]"):
        small_model.reconstruct(images.float(), "obs")


def test_empty_inputs_are_refused(small_model):
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        small_model.generate("obs", num_samples=0)
    with pytest.raises(ValueError, match="N >= 1"):
        small_model.reconstruct(torch.zeros(0, 3, 32, 32), "obs")
    with pytest.raises(ValueError, match="Got no images"):
        small_model.counterfactual([], "a")


def test_a_bf16_model_edits_and_reconstructs(small_model):
    images = torch.rand(2, 3, 32, 32)
    reference = small_model.counterfactual(images, "a")
    small_model.to(torch.bfloat16)
    edited = small_model.counterfactual(images, "a")
    assert edited.dtype == torch.float32 and edited.shape == reference.shape
    assert (edited - reference).abs().max() < 0.1  # bf16 rounding only
    assert small_model.reconstruct(images, "obs").shape == (2, 3, 32, 32)


def test_an_edited_latent_shape_with_the_same_size_is_refused(small_model, tmp_path):
    from ctxadapter import CtxAdapter

    small_model.adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    config["latent_shape"] = [4, 2, 8]  # 64 values, as [4, 4, 4]
    (tmp_path / "adapter" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="says latent_shape \\[4, 2, 8\\], but its weights"):
        CtxAdapter.from_pretrained(str(tmp_path / "adapter"))


def test_encode_options_reach_the_autoencoder_and_report_the_rate(tiny, capsys):
    from ctxadapter.training.inputs import resolve_inputs

    args = tiny(autoencoder_dtype="bfloat16", encode_options=["channels_last", "slicing"])
    inputs = resolve_inputs(args)
    vae = inputs.codec.autoencoder
    assert vae.dtype == torch.bfloat16 and vae.use_slicing and not vae.use_tiling
    weight = vae.encoder.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    finetune(tiny(encode_options=["tiling"], encode_batch_size=8, max_train_steps=1))
    assert "images/s, batches of 8)" in capsys.readouterr().out
