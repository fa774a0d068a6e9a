"""Faults around a run's files: the output folder's lock and location, the latent cache's key
and partial files, and resuming after the inputs changed in place. Runs are in-process on tiny
data; each check that refuses does so before any training."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from ctxadapter.codec import LatentCodec
from ctxadapter.data import cache_latents
from ctxadapter.data.latent_cache import STAGING_PREFIX
from ctxadapter.data.quad import build_dataset, write_imagefolder
from ctxadapter.training import finetune
from ctxadapter.training.output_dir import LOCK_NAME, OWNER_NAME, output_lock
from ctxadapter.training.state import FINGERPRINTS_NAME, check_same_inputs


@pytest.fixture
def small_run(tiny):
    """``small_run(**flags)``: ``tiny``'s flags for a run of 2 steps, a checkpoint after each."""

    def make(**flags):
        base = dict(quad_images_per_context=8, train_batch_size=8, max_train_steps=2)
        return tiny(**(base | {"checkpointing_steps": 1} | flags))

    return make


def dead_pid() -> int:
    """The pid of a process that has ended."""
    code = "import os; print(os.getpid())"
    return int(subprocess.run([sys.executable, "-c", code], text=True, capture_output=True).stdout)


# ---------------------------------------------------------------- the output folder


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(small_run, tmp_path):
    with output_lock(tmp_path / "out"):
        owner = json.loads((tmp_path / "out" / OWNER_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RuntimeError, match="in use by another run") as error:
            finetune(small_run())
        assert f"pid {os.getpid()} on {socket.gethostname()}, started {owner['started']}" in str(
            error.value
        )
    assert not (tmp_path / "out").exists()  # the lock made the folder and removed it


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    dead = dead_pid()
    (output / LOCK_NAME).write_text("")  # the OS released the lock when the process ended
    stale = {"pid": dead, "host": "old-host", "started": "2026-01-01T00:00:00Z"}
    (output / OWNER_NAME).write_text(json.dumps(stale))
    with output_lock(output):
        assert json.loads((output / OWNER_NAME).read_text())["pid"] == os.getpid()
    assert f"pid {stale['pid']} on old-host" in capsys.readouterr().out
    assert sorted(p.name for p in output.iterdir()) == []  # lock files removed, folder kept


@pytest.mark.parametrize("inside", [False, True], ids=["the_base", "inside_the_base"])
def test_the_base_folder_is_never_an_output_folder(small_run, tiny_kl_path, inside):
    output = Path(tiny_kl_path) / "adapter" if inside else Path(tiny_kl_path)
    before = {p.name: p.read_bytes() for p in Path(tiny_kl_path).iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="the base autoencoder's folder") as error:
        finetune(small_run(output_dir=str(output), overwrite_output_dir=True))
    assert "--overwrite_output_dir does not change this" in str(error.value)
    after = {p.name: p.read_bytes() for p in Path(tiny_kl_path).iterdir() if p.is_file()}
    assert after == before and not (Path(tiny_kl_path) / "adapter").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(small_run, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    cache = tmp_path / "cache"
    with pytest.raises(PermissionError, match="cannot be written") as error:
        finetune(small_run(output_dir=str(tmp_path / "file" / "out"), cache_dir=str(cache)))
    assert str(tmp_path / "file" / "out") in str(error.value)
    assert not cache.exists()  # nothing was loaded or encoded


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_a_read_only_output_folder_is_refused_before_any_work(small_run, tmp_path):
    output, cache = tmp_path / "out", tmp_path / "cache"
    output.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="cannot be written"):
        finetune(small_run(cache_dir=str(cache)))
    assert not cache.exists()


# ---------------------------------------------------------------- the latent cache


def image_files(folder: Path, colours: list[int]) -> datasets.Dataset:
    """Write one red image per colour into ``folder`` and list them (contexts obs, a)."""
    folder.mkdir(exist_ok=True)
    for i, colour in enumerate(colours):
        Image.new("RGB", (32, 32), (colour, 0, 0)).save(folder / f"{i}.png")
    return listing(folder, len(colours))


def listing(folder: Path, count: int) -> datasets.Dataset:
    """The images ``0.png``... of ``folder`` as a dataset of paths (as a ``save_to_disk``
    recipe or an imagefolder builds one)."""
    paths = [str(folder / f"{i}.png") for i in range(count)]
    data = datasets.Dataset.from_dict({"image": paths, "context": ["obs", "a"][:count]})
    return data.cast_column("image", datasets.Image())


def rewrite_keeping_times(path: Path, colour: tuple[int, int, int]) -> None:
    """Replace an image as ``cp -p`` or ``rsync -a`` do: new content, the old times."""
    times = os.stat(path)
    Image.new("RGB", Image.open(path).size, colour).save(path)
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_images_rewritten_with_their_times_kept_are_encoded_again(tmp_path, tiny_kl_path):
    codec = LatentCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    data = image_files(tmp_path / "images", [10, 200])
    first = cache_latents(data, codec, ["obs", "a"], "image", 32, tmp_path / "cache")
    rewrite_keeping_times(tmp_path / "images" / "1.png", (0, 0, 90))
    rebuilt = listing(tmp_path / "images", 2)
    assert rebuilt._fingerprint == data._fingerprint  # what the cache key used to rest on
    second = cache_latents(rebuilt, codec, ["obs", "a"], "image", 32, tmp_path / "cache")
    assert second.cache_files != first.cache_files
    old, new = first.with_format("torch")[:]["latents"], second.with_format("torch")[:]["latents"]
    assert torch.equal(old[0], new[0]) and not torch.equal(old[1], new[1])
    blue = codec.encode(codec.preprocess(Image.new("RGB", (32, 32), (0, 0, 90)), 32, 32))
    torch.testing.assert_close(new[1:], blue)


def test_a_full_disk_while_caching_leaves_no_partial_file_and_names_it(
    tmp_path, tiny_kl_path, monkeypatch
):
    codec = LatentCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    data = image_files(tmp_path / "images", [10, 200])

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "write_batch", full_disk)
    monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "finalize", full_disk)  # no cleanup
    with pytest.raises(OSError, match="No space left on device") as error:
        cache_latents(data, codec, ["obs", "a"], "image", 32, tmp_path / "cache")
    assert error.value.errno == 28
    assert str(tmp_path / "cache" / "latents-") in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file fills the disk
    monkeypatch.undo()
    cache = cache_latents(data, codec, ["obs", "a"], "image", 32, tmp_path / "cache")
    assert len(cache) == 2


def test_the_partial_file_of_a_killed_caching_run_is_removed(tmp_path, tiny_kl_path):
    codec = LatentCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    data = image_files(tmp_path / "images", [10, 200])
    host, cache = socket.gethostname(), tmp_path / "cache"
    dead = dead_pid()
    folders = {
        "killed": cache / f"{STAGING_PREFIX}{host}-{dead}-abc",
        "running": cache / f"{STAGING_PREFIX}{host}-{os.getpid()}-abc",
        "elsewhere": cache / f"{STAGING_PREFIX}other-host-{dead}-abc",
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "tmp-partial.arrow").write_bytes(b"half")
    cache_latents(data, codec, ["obs", "a"], "image", 32, cache)
    assert {name: folder.exists() for name, folder in folders.items()} == {
        "killed": False,
        "running": True,
        "elsewhere": True,
    }


def test_a_damaged_cache_file_is_encoded_again(tmp_path, tiny_kl_path, capsys):
    codec = LatentCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    data = image_files(tmp_path / "images", [10, 200])
    first = cache_latents(data, codec, ["obs", "a"], "image", 32, tmp_path / "cache")
    latents = first.with_format("torch")[:]["latents"]
    path = Path(first.cache_files[0]["filename"])
    path.write_bytes(path.read_bytes()[:100])  # truncated
    again = cache_latents(data, codec, ["obs", "a"], "image", 32, tmp_path / "cache")
    assert "is damaged" in capsys.readouterr().out
    assert torch.equal(again.with_format("torch")[:]["latents"], latents)


# ---------------------------------------------------------------- resuming


def test_resuming_after_the_images_changed_in_place_is_refused_with_both_values(
    small_run, tmp_path
):
    write_imagefolder(build_dataset(n_per_context=4, heldout_per_context=1), tmp_path / "data")
    args = small_run(train_data_dir=str(tmp_path / "data" / "train"))
    finetune(args)
    checkpoint = Path(args.output_dir) / "checkpoint-2"
    saved = json.loads((checkpoint / FINGERPRINTS_NAME).read_text())
    rewrite_keeping_times(sorted((tmp_path / "data" / "train").glob("*.png"))[0], (0, 0, 90))
    resumed = small_run(
        train_data_dir=str(tmp_path / "data" / "train"), resume_from_checkpoint="latest"
    )
    with pytest.raises(ValueError, match="inputs changed since it was saved") as error:
        finetune(resumed)
    assert f"train_images {saved['train_images']} -> " in str(error.value)


def test_resuming_on_another_base_is_refused_with_both_values(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    recorded = {"train_images": "1", "validation_images": "2", "contexts": "3", "base": "aa"}
    (tmp_path / "checkpoint-4" / FINGERPRINTS_NAME).write_text(json.dumps(recorded))
    check_same_inputs(tmp_path / "checkpoint-4", recorded)
    with pytest.raises(ValueError, match="base aa -> bb"):
        check_same_inputs(tmp_path / "checkpoint-4", recorded | {"base": "bb"})
    (tmp_path / "checkpoint-2").mkdir()  # saved before fingerprints were recorded
    check_same_inputs(tmp_path / "checkpoint-2", recorded | {"base": "bb"})
