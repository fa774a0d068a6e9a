"""End-to-end runs of examples/finetune.py, as the diffusers examples are tested: a tiny
autoencoder from conftest, tiny quad data, a few steps. Two runs go through `accelerate launch`
(one process, and two: DDP); the others run the same flags in this process, which is faster and
gives the same weights (single-threaded arithmetic either way)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch

from ctxadapter import ContextAutoencoder
from ctxadapter.adapter_files import read_header
from ctxadapter.processes import cpu_launch

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = str(ROOT / "examples" / "finetune.py")
SHARED = [
    "README.md",
    "compositions.png",
    "concept_graph.png",
    "config.json",
    "contexts.png",
    "counterfactuals.png",
    "metrics.json",
    "model.safetensors",
]
"""The files of a run's output folder on quad that a push uploads."""


def flags(output_dir, autoencoder, cache_dir, *extra) -> list[str]:
    """The flags of a tiny run: tiny quad data, a few steps."""
    return [
        "--pretrained_model_name_or_path",
        autoencoder,
        "--output_dir",
        str(output_dir),
        "--cache_dir",
        str(cache_dir),
        "--quad_images_per_context",
        "16",
        "--resolution",
        "32",
        "--train_batch_size",
        "16",
        "--max_train_steps",
        "8",
        "--adapter_config",
        '{"exogenous_width": 4, "concept_width": 2}',
        "--lr_warmup_steps",
        "2",
        "--report_to",
        "none",
        "--cpu_threads",  # launched or in process: the same single-threaded arithmetic
        "1",
        *extra,
    ]


def in_process(output_dir, autoencoder, cache_dir, *extra):
    """``examples/finetune.py``'s flags, run by ``finetune`` in this process (faster than a
    launch; the same single-threaded arithmetic, so the same weights)."""
    from ctxadapter.training import finetune, parse_finetune_arguments

    return finetune(parse_finetune_arguments(flags(output_dir, autoencoder, cache_dir, *extra)))


def launch(output_dir, autoencoder, cache_dir, *extra, processes=1, quiet=False, check=True):
    """``accelerate launch`` (``-q`` if ``quiet``) of ``examples/finetune.py`` with the tiny
    run's flags, on ``processes`` CPU processes; asserts that it succeeds if ``check``."""
    command, cpu_env = cpu_launch(processes, quiet=quiet)
    command += [FINETUNE, *flags(output_dir, autoencoder, cache_dir, *extra)]
    env = {
        **os.environ,
        **cpu_env,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(cache_dir),
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_kl_path):
    root = tmp_path_factory.mktemp("finetune")
    output = root / "out"
    launch(
        output,
        tiny_kl_path,
        root / "cache",
        "--checkpointing_steps",
        "3",
    )
    return output, tiny_kl_path, root / "cache"


def test_output_folder_holds_exactly_the_expected_files(run):
    output, _, _ = run
    during = ["checkpoint-3", "checkpoint-6", "samples-3.png", "samples-6.png"]  # never pushed
    assert sorted(p.name for p in output.iterdir()) == sorted(SHARED + during)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["steps"] == 8
    assert metrics["concepts"] == ["quad1", "quad2", "quad3", "quad4", "size", "orientation"]
    assert len(metrics["validation_history"]) == 2  # end of epoch 1 (7 batches) and the end
    card = (output / "README.md").read_text()
    assert "contexts.png" in card and "quad1" in card
    assert f'ContextAutoencoder.from_pretrained("{output}")' in card  # where it was saved
    assert "--max_train_steps 8" in card and "| optimizer steps | 8 |" in card


def test_output_loads_with_context_autoencoder(run):
    output, _, _ = run
    model = ContextAutoencoder.from_pretrained(str(output))
    images = model.generate("quad1+size", num_samples=2)
    assert images.shape == (2, 3, 32, 32)
    assert model.adapter.config["base_model"]["class_name"] == "AutoencoderKL"


def test_checkpoints_hold_only_trainable_weights(run):
    output, _, _ = run
    checkpoint = output / "checkpoint-6"
    files = sorted(p.name for p in checkpoint.iterdir())
    assert "trainable.safetensors" in files
    assert not [f for f in files if f.startswith("model")]  # no full-model weights
    state = safetensors.torch.load_file(str(checkpoint / "trainable.safetensors"))
    assert state and all(k.startswith("adapter.") for k in state)


def test_resume_from_checkpoint_matches_uninterrupted_run(run, tmp_path, capsys):
    output, autoencoder, cache = run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(output / "checkpoint-6", resumed / "checkpoint-6")
    in_process(
        resumed,
        autoencoder,
        cache,
        "--checkpointing_steps",
        "3",
        "--resume_from_checkpoint",
        "latest",
    )
    printed = capsys.readouterr()
    assert "Resumed from" in printed.out
    assert "Encoded" not in printed.out  # the latent cache of the launched run was reused
    expected = safetensors.torch.load_file(str(output / "model.safetensors"))
    actual = safetensors.torch.load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


def test_bad_data_fails_before_writing(tmp_path, tiny_kl_path):
    import datasets
    from PIL import Image

    image = Image.new("RGB", (32, 32))
    folder = str(tmp_path / "data")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"image": [image] * 3, "context": ["obs", "a", "colour+a"]},
                features=datasets.Features(
                    {"image": datasets.Image(), "context": datasets.Value("string")}
                ),
            )
        }
    ).save_to_disk(folder)
    from ctxadapter.training import FinetuneArguments, finetune

    output = tmp_path / "out"
    args = FinetuneArguments(
        pretrained_model_name_or_path=tiny_kl_path,
        dataset_name=folder,
        concepts=["a"],
        output_dir=str(output),
        report_to="none",
    )
    with pytest.raises(ValueError, match="'colour'"):
        finetune(args)
    assert not output.exists()


def test_pixel_loss_with_decoder_lora(tiny_kl_path, tmp_path):
    output = tmp_path / "lora"
    in_process(
        output,
        tiny_kl_path,
        tmp_path / "cache",
        "--objective_config",
        '{"reconstruction": "pixel"}',
        "--decoder_lora_rank",
        "2",
        "--checkpointing_steps",
        "4",
        "--sampler",
        "context_pure",
    )
    assert (output / "decoder_lora.safetensors").is_file()
    state = safetensors.torch.load_file(str(output / "checkpoint-4" / "trainable.safetensors"))
    assert any("lora_" in k for k in state)
    model = ContextAutoencoder.from_pretrained(str(output))
    assert model.adapter.config["decoder_lora"]["rank"] == 2


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("learning_rate", -1e-3, "--learning_rate must be > 0, got -0.001"),
        (
            "objective_config",
            {"sample_matching": -1.0},
            "--objective_config: key 'sample_matching' holds -1.0, expected a finite number >= 0",
        ),
        (
            "adapter_config",
            {"heads": "transformer"},
            "--adapter_config: key 'heads' holds 'transformer', expected one of \\('linear'",
        ),
        (
            "adapter_config",
            {"exogenous_bias": "free"},
            "key 'exogenous_bias' holds 'free', expected one of \\('shared', 'interventional'\\)",
        ),
        (
            "adapter_config",
            {"head": 8},
            "--adapter_config: unknown keys \\['head'\\]; the AdapterConfig keys are",
        ),
        ("objective_config", ["beta"], "--objective_config: expected a JSON file, a JSON object"),
        ("preset", "best", "--preset must be one of"),
        ("objective_config", {"reconstruction": "pixels"}, "'pixels'"),
        ("train_batch_size", 0, "--train_batch_size must be >= 1, got 0"),
    ],
)
def test_bad_flag_values_fail_before_writing(tmp_path, field, value, message):
    from ctxadapter.training import FinetuneArguments, finetune

    output = tmp_path / "out"
    with pytest.raises(ValueError, match=message):  # on construction
        FinetuneArguments(output_dir=str(output), report_to="none", **{field: value})
    args = FinetuneArguments(output_dir=str(output), report_to="none")
    setattr(args, field, value)  # changed after construction: finetune checks again
    with pytest.raises(ValueError, match=message):
        finetune(args)
    assert not output.exists()


def test_pretrain_fits_the_batch_and_names_its_folder_after_the_data(tmp_path, monkeypatch, capsys):
    from ctxadapter.training import PretrainArguments, pretrain_autoencoder

    monkeypatch.chdir(tmp_path)
    args = PretrainArguments(  # no --output_dir: named after the (quad) data
        quad_images_per_context=2,  # 2 images of each of the 7 quad contexts: 14 rows
        train_batch_size=32,
        max_train_steps=2,
        resolution=16,
        block_out_channels=[8, 8],
        validation_steps=0,
        report_to="none",
        cache_dir=str(tmp_path / "cache"),
    )
    pretrain_autoencoder(args)
    assert (
        "--train_batch_size 32 is larger than the 14 training images: training with batches of "
        "14 (one per epoch)." in capsys.readouterr().out
    )
    assert (tmp_path / "quad-autoencoder" / "config.json").is_file()


def test_make_optimizer_is_fused_adam_over_trainable_parameters():
    from ctxadapter.training import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = make_optimizer(model, 0.01)
    [group] = optimizer.param_groups
    assert group["params"] == list(model[1].parameters())
    assert group["lr"] == 0.01 and group["fused"] is True
    assert make_optimizer(model, 0.01, fused=False).param_groups[0]["fused"] is False


def test_paper_preset_sets_defaults_and_explicit_flags_win(tmp_path):
    from ctxadapter.config import AdapterConfig
    from ctxadapter.objective import Objective
    from ctxadapter.training import PRESETS, FinetuneArguments, parse_finetune_arguments

    default = parse_finetune_arguments([])
    assert default == FinetuneArguments()
    assert default.adapter_settings() == AdapterConfig() and default.objective() == Objective()
    paper = parse_finetune_arguments(["--preset", "paper"])
    assert paper == FinetuneArguments(**PRESETS["paper"])
    adapter, objective = paper.adapter_settings(), paper.objective()
    assert (adapter.heads, adapter.observational_mixing, objective.reconstruction) == (
        "linear",
        "dense",
        "pixel",
    )
    assert paper.sampler == "context_pure"
    assert objective.sample_matching == 0 and objective.prior_matching == 0 and objective.beta == 1
    assert objective.group_sparsity == 0
    assert adapter.exogenous_bias == "shared"
    assert (default.learning_rate, paper.learning_rate) == (4e-3, 1e-3)
    changes = tmp_path / "loss.json"
    changes.write_text('{"beta": 2}')
    mixed = parse_finetune_arguments(
        ["--objective_config", str(changes), "--preset", "paper"]
        + ["--adapter_config", '{"heads": "mlp"}']
    )
    assert (mixed.objective().beta, mixed.adapter_settings().heads) == (2.0, "mlp")
    assert mixed.objective().reconstruction == "pixel"
    assert mixed.adapter_settings().observational_mixing == "dense"
    assert mixed.objective_config == {"beta": 2}  # the file's changes, read once
    with pytest.raises(SystemExit):  # argparse: invalid choice
        parse_finetune_arguments(["--preset", "best"])


# ------------------------------------------------------------------------ small data, reports


def test_bad_input_of_a_launched_run_is_one_line(tmp_path, tiny_kl_path):
    result = launch(
        tmp_path / "out",
        tiny_kl_path,
        tmp_path / "cache",
        "--adapter_config",
        '{"heads": "transformer"}',
        quiet=True,
        check=False,
    )
    assert result.returncode == 1
    message = (
        "finetune.py: error: --adapter_config: key 'heads' holds 'transformer', expected one of "
        "('linear', 'mlp', 'conv', 'additive', 'auto')."
    )
    assert result.stderr.count(message) == 1, result.stderr
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_fit_batch_size_shrinks_a_mixed_batch_to_the_rows():
    from ctxadapter.training import FinetuneArguments
    from ctxadapter.training.inputs import fit_batch_size

    contexts = ["obs", "obs", "obs", "a", "a"]
    assert fit_batch_size(FinetuneArguments(train_batch_size=5), contexts) == (5, None)
    assert fit_batch_size(FinetuneArguments(train_batch_size=8), contexts) == (
        5,
        "--train_batch_size 8 is larger than the 5 training rows: training with batches of 5 "
        "(one per epoch).",
    )
    pure = FinetuneArguments(train_batch_size=8, sampler="context_pure")  # keeps partial batches
    assert fit_batch_size(pure, contexts) == (8, None)


def test_stop_reason_and_a_progress_bar_that_ends_full():
    import io

    from tqdm.auto import tqdm

    from ctxadapter.training import FinetuneArguments
    from ctxadapter.training.finetuning import finish_progress, stop_reason

    args = FinetuneArguments(max_train_steps=100, early_stopping_patience=3)
    assert stop_reason(args, 93, True) == (
        "early stopping at step 93 (no lower validation loss in the last 3 validations)"
    )
    assert stop_reason(args, 100, False) == "--max_train_steps 100 reached"
    assert stop_reason(FinetuneArguments(num_train_epochs=7), 70, False) == (
        "--num_train_epochs 7 done"
    )
    for stopped_early, total, end in (
        (True, 93, "Stopped early at step 93: 100%"),
        (False, 100, " 93%"),
    ):
        stream = io.StringIO()
        bar = tqdm(total=100, file=stream, desc="Training adapter")
        bar.update(93)
        finish_progress(bar, 93, stopped_early)
        assert bar.total == total
        assert end in stream.getvalue().split("\r")[-1]


def test_small_data_run_fits_the_batch_reports_itself_and_pushes_what_a_python_push_does(
    tiny_kl_path, tmp_path, capsys, fake_hub, monkeypatch
):
    from huggingface_hub import ModelCard

    output = tmp_path / "out"
    seen = []
    monkeypatch.setattr(
        "ctxadapter.hub.HfApi.whoami",
        lambda self: seen.append(output.exists()) or {"name": "user"},
    )
    in_process(  # 16 images of each of the 7 quad contexts: 112 training rows
        output,
        tiny_kl_path,
        tmp_path / "cache",
        "--train_batch_size",
        "512",
        "--checkpointing_steps",
        "100",
        "--push_to_hub",
        "--hub_model_id",
        "user/adapter",
        "--hub_base_model_id",
        "org/vae",
    )
    assert seen[0] is False  # the Hub login was checked before anything was written
    printed = capsys.readouterr().out
    assert (
        "--train_batch_size 512 is larger than the 112 training rows: training with batches of "
        "112 (one per epoch)." in printed
    )
    assert (
        f"Saved the adapter to {output.resolve()} and pushed it to "
        "https://huggingface.co/user/adapter." in printed
    )
    assert "Stopped: --max_train_steps 8 reached; 8 optimizer steps of batch 112 in " in printed
    assert f"Next: python examples/generate.py --adapter {output}" in printed
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train_batch_size"] == 112 and metrics["wall_time_s"] > 0
    assert len(metrics["validation_history"]) == 8  # one batch, so one epoch, per step
    config = json.loads((output / "config.json").read_text())
    assert config["base_model"]["reconstruction_mse"] == metrics["base_reconstruction_mse"] > 0

    ContextAutoencoder.from_pretrained(output).push_to_hub("user/adapter", base_model_id="org/vae")
    (_, cli), (_, python) = fake_hub
    names = sorted(p.name for p in cli.iterdir())
    assert names == sorted(p.name for p in python.iterdir())
    assert names == sorted(SHARED)
    for name in ("README.md", "config.json", "metrics.json"):
        assert (cli / name).read_bytes() == (python / name).read_bytes(), name
    # safetensors writes its metadata in any order: the same tensors and the same metadata
    weights = [str(folder / "model.safetensors") for folder in (cli, python)]
    assert read_header(weights[0]) == read_header(weights[1])
    for name, tensor in safetensors.torch.load_file(weights[0]).items():
        assert torch.equal(tensor, safetensors.torch.load_file(weights[1])[name]), name
    card = ModelCard.load(cli / "README.md")
    assert card.data.base_model == "org/vae" and card.data.library_name == "ctxadapter"
    assert 'ContextAutoencoder.from_pretrained("user/adapter")' in card.text
    for picture in ("contexts.png", "compositions.png", "concept_graph.png"):
        assert f"]({picture})" in card.text
    assert "| optimizer steps | 8 |" in card.text and "| batch size | 112 |" in card.text
    assert "--train_batch_size 512" not in card.text  # the default
    assert "--hub_model_id user/adapter" in card.text and "<repo-id>" not in card.text


def test_pretrain_output_folder_is_named_after_the_data(tmp_path):
    from ctxadapter.training import PretrainArguments

    assert PretrainArguments().autoencoder_dir == "quad-autoencoder"
    assert PretrainArguments(dataset_name="user/photos").autoencoder_dir == "photos-autoencoder"
    folder = PretrainArguments(train_data_dir=str(tmp_path / "my-images") + "/")
    assert folder.autoencoder_dir == "my-images-autoencoder"
    assert PretrainArguments(output_dir="vae", dataset_name="x").autoencoder_dir == "vae"


def test_one_line_errors_on_the_first_process_only(monkeypatch, capsys):
    from ctxadapter.training.errors import one_line_errors

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as ended, one_line_errors("script.py"):
        raise ValueError("--seed must be >= 0, got -1")
    assert ended.value.code == 1
    assert capsys.readouterr().err == "script.py: error: --seed must be >= 0, got -1\n"
    monkeypatch.setenv("RANK", "1")  # another process of the same run: silent
    with pytest.raises(SystemExit), one_line_errors("script.py"):
        raise FileNotFoundError("no such folder")
    assert capsys.readouterr().err == ""
    with pytest.raises(KeyError), one_line_errors("script.py"):  # a bug keeps its traceback
        raise KeyError("bug")
