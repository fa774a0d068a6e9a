import datasets
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from ctxadapter.codec import LatentCodec
from ctxadapter.data import (
    CachedLatents,
    ContextBatchSampler,
    cache_latents,
    load_image_dataset,
    steps_per_epoch,
    validate_dataset,
)


def image_dataset(contexts, size=32):
    images = [Image.new("RGB", (size, size), (i * 40 % 256, 0, 0)) for i in range(len(contexts))]
    return datasets.Dataset.from_dict(
        {"image": images, "context": contexts},
        features=datasets.Features(
            {"image": datasets.Image(), "context": datasets.Value("string")}
        ),
    )


# ---------------------------------------------------------------- validation


def test_validate_dataset_infers_concepts_and_canonicalises():
    data = image_dataset(["obs", "b", "a", "b+a"])
    concepts, contexts = validate_dataset(data, "image", "context")
    assert concepts == ["a", "b"]
    assert contexts == ["obs", "b", "a", "a+b"]


def test_validate_dataset_accepts_list_contexts():
    data = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8))] * 4, "context": [[], ["a"], ["b"], ["b", "a"]]}
    )
    assert validate_dataset(data, "image", "context", ["a", "b"])[1] == ["obs", "a", "b", "a+b"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_column": "img"}, "'img' is not in the dataset"),
        ({"context_column": "ctx"}, "'ctx' is not in the dataset"),
        ({"concepts": ["a", "b", "c"]}, r"No samples for the context\(s\) \['c'\]"),
        ({"concepts": ["a"]}, "unknown concept 'b'"),
    ],
)
def test_validate_dataset_errors(kwargs, message):
    data = image_dataset(["obs", "a", "b"])
    args = {"image_column": "image", "context_column": "context", **kwargs}
    with pytest.raises(ValueError, match=message):
        validate_dataset(data, **args)


def test_validate_dataset_empty_and_observational_only():
    with pytest.raises(ValueError, match="empty"):
        validate_dataset(image_dataset([]), "image", "context")
    with pytest.raises(ValueError, match="only observational"):
        validate_dataset(image_dataset(["obs", "obs"]), "image", "context")


def test_load_image_dataset_from_imagefolder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for i, context in enumerate(["obs", "a", "a+b"]):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(folder / f"{i}.png")
        lines.append(f'{{"file_name": "{i}.png", "context": "{context}"}}')
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    data = load_image_dataset(train_data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    assert sorted(data["train"]["context"]) == ["a", "a+b", "obs"]
    with pytest.raises(FileNotFoundError, match="nope"):
        load_image_dataset(train_data_dir=str(tmp_path / "nope"))


# ---------------------------------------------------------------- latent cache


class CountingCodec(LatentCodec):
    calls = 0

    def encode_distribution(self, images):
        CountingCodec.calls += 1
        return super().encode_distribution(images)


def test_latent_cache_is_reused_and_keyed(tmp_path, tiny_kl_path):
    data = image_dataset(["obs", "a", "b", "a"])
    contexts = ["obs", "a", "b", "a"]
    CountingCodec.calls = 0
    codec = CountingCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    first = cache_latents(data, codec, contexts, "image", 32, tmp_path, batch_size=2)
    assert CountingCodec.calls == 2
    assert first.column_names == ["latents", "context", "logvar"]
    assert first["context"] == contexts
    plain = LatentCodec(codec.autoencoder)
    expected = plain.encode(plain.preprocess(list(data["image"]), 32, 32))
    torch.testing.assert_close(first.with_format("torch")[:]["latents"], expected)

    again = cache_latents(data, codec, contexts, "image", 32, tmp_path, batch_size=2)
    assert CountingCodec.calls == 2  # no encoder pass
    assert again.cache_files == first.cache_files

    cache_latents(data, codec, contexts, "image", 16, tmp_path, batch_size=4)
    assert CountingCodec.calls == 3  # resolution changed

    other = AutoencoderKL.from_pretrained(tiny_kl_path)
    with torch.no_grad():
        other.decoder.conv_out.weight.mul_(2)
    changed = cache_latents(
        data, CountingCodec(other), contexts, "image", 32, tmp_path, batch_size=4
    )
    assert CountingCodec.calls == 4  # base model changed
    assert changed.cache_files != first.cache_files


def test_cached_latents_batches(tmp_path, tiny_kl_path):
    data = image_dataset(["obs", "a", "b", "a+b"])
    codec = LatentCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    cache = cache_latents(
        data, codec, ["obs", "a", "b", "a+b"], "image", 32, tmp_path, keep_pixels=True
    )
    data = CachedLatents(cache, ["a", "b"])
    batch = data.__getitems__([3, 1])
    rows = cache.with_format("torch").select([3, 1])[:]
    assert torch.equal(batch["latents"], rows["latents"])
    assert batch["contexts"].tolist() == [[True, True], [True, False]]
    assert torch.equal(batch["pixel_values"], rows["pixels"].float() / 127.5 - 1)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    # a select() view of the cache reads the selected rows
    view = CachedLatents(cache.select([2, 3]), ["a", "b"]).__getitems__([1])
    assert torch.equal(view["latents"], rows["latents"][:1])


def test_cached_latents_reads_rows_across_record_batches(tmp_path):
    features = datasets.Features(
        {"latents": datasets.Array3D((2, 1, 1), "float32"), "context": datasets.Value("string")}
    )
    values = torch.arange(20, dtype=torch.float32).reshape(10, 2, 1, 1)
    parts = [
        datasets.Dataset.from_dict(
            {"latents": values[i : i + 4].numpy(), "context": ["obs"] * len(values[i : i + 4])},
            features=features,
        )
        for i in range(0, 10, 4)
    ]
    folder = tmp_path / "cache"
    datasets.concatenate_datasets(parts).save_to_disk(folder, max_shard_size=200)
    cache = datasets.load_from_disk(folder)
    data = CachedLatents(cache, ["a"])
    assert len(data.columns["latents"][0]) > 1  # several record batches
    assert torch.equal(data.__getitems__([9, 0, 5, 4])["latents"], values[[9, 0, 5, 4]])


# ---------------------------------------------------------------- samplers


def test_mixed_sampler_is_a_seeded_permutation_per_epoch():
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    sampler = ContextBatchSampler(ids, batch_size=3, mode="mixed", seed=1)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 3 and all(len(b) == 3 for b in epoch0)
    assert len({i for b in epoch0 for i in b}) == 9
    assert list(ContextBatchSampler(ids, 3, "mixed", seed=1)) == epoch0
    sampler.shuffle_for_epoch(1)
    assert list(sampler) != epoch0


def test_context_pure_sampler_batches_hold_one_context():
    ids = torch.tensor([0] * 7 + [1] * 4 + [2] * 2)
    sampler = ContextBatchSampler(ids, batch_size=2, mode="context_pure", seed=0)
    batches = list(sampler)
    assert all(len({int(ids[i]) for i in batch}) == 1 for batch in batches)
    assert sorted(len(b) for b in batches) == [2] * 6  # 3 + 2 + 1 full batches
    with pytest.raises(ValueError, match="'pure'"):
        ContextBatchSampler(ids, 2, mode="pure")


def test_steps_per_epoch_counts_the_batches_each_process_gets():
    assert steps_per_epoch(7, 1, 1) == 7
    assert steps_per_epoch(7, 2, 1) == 3  # Accelerate drops the 7th: one process would wait
    assert steps_per_epoch(7, 2, 1, drop_last=False) == 4  # the 7th and the 1st again
    assert steps_per_epoch(7, 1, 2) == 4  # the last step accumulates one batch
