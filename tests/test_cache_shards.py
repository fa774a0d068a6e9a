"""The latent cache's shards: their row ranges, their files in row order, a shard encoded again
when it is missing, and a streamed dataset cached into the same shards. (Two processes
encoding one cache each a share: ``tests/test_training_processes.py``.)"""

from pathlib import Path

import datasets
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from ctxadapter.codec import LatentCodec
from ctxadapter.data import cache_latents
from ctxadapter.data.cache_shards import shard_ranges


class CountingCodec(LatentCodec):
    """A codec that counts its encoder passes."""

    calls = 0

    def encode_distribution(self, images):
        CountingCodec.calls += 1
        return super().encode_distribution(images)


def images(count: int) -> datasets.Dataset:
    """``count`` 32 x 32 images, each of its own colour, contexts ``obs`` and ``a`` in turn."""
    colours = [(3 * i, 255 - 2 * i, (7 * i) % 256) for i in range(count)]
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (32, 32), colour) for colour in colours],
            "context": ["obs", "a"] * (count // 2) + ["obs"] * (count % 2),
        },
        features=datasets.Features(
            {"image": datasets.Image(), "context": datasets.Value("string")}
        ),
    )


def names(cache: datasets.Dataset) -> list[str]:
    return [Path(f["filename"]).name for f in cache.cache_files]


def test_shards_are_consecutive_row_ranges_set_by_the_row_count_only():
    assert shard_ranges(1) == [range(0, 1)]
    assert shard_ranges(70) == [range(0, 32), range(32, 64), range(64, 70)]  # 32 rows at least
    quad = shard_ranges(14_000)  # quad's training rows: 64 shards of ceil(14000 / 64) rows
    assert len(quad) == 64 and quad[1] == range(219, 438) and quad[-1] == range(13_797, 14_000)
    large = shard_ranges(10_000_000)  # 8192 rows at most: 1220 full shards and the rest
    assert len(large) == 1221 and len(large[0]) == 8192 and len(large[-1]) == 10_000_000 % 8192


def test_a_cache_is_its_shards_in_row_order_and_missing_shards_are_encoded_again(
    tmp_path, tiny_kl_path
):
    data, CountingCodec.calls = images(70), 0
    codec = CountingCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    cache = cache_latents(data, codec, data["context"], "image", 32, tmp_path, batch_size=16)
    assert names(cache) == [
        "rows-000000000-000000032.arrow",
        "rows-000000032-000000064.arrow",
        "rows-000000064-000000070.arrow",
    ]
    assert CountingCodec.calls == 2 + 2 + 1  # batches of 16 start at each shard's first row
    assert cache["context"] == data["context"]
    plain = LatentCodec(codec.autoencoder)
    expected = plain.encode(plain.preprocess(list(data["image"]), 32, 32))
    latents = cache.with_format("torch")[:]["latents"]
    torch.testing.assert_close(latents, expected)

    Path(cache.cache_files[0]["filename"]).unlink()
    Path(cache.cache_files[2]["filename"]).unlink()
    again = cache_latents(data, codec, data["context"], "image", 32, tmp_path, batch_size=16)
    assert CountingCodec.calls == 5 + 2 + 1  # the missing shards only, the rows of each
    assert names(again) == names(cache)
    assert torch.equal(again.with_format("torch")[:]["latents"], latents)


def test_a_streamed_dataset_is_cached_into_the_same_shards(tmp_path, tiny_kl_path):
    data = images(40)
    codec = LatentCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    kept = cache_latents(data, codec, data["context"], "image", 32, tmp_path / "a", batch_size=8)
    streamed = data.to_iterable_dataset(num_shards=3)
    assert isinstance(streamed, datasets.IterableDataset)
    cache = cache_latents(
        streamed, codec, data["context"], "image", 32, tmp_path / "b", batch_size=8
    )
    relative = [Path(f["filename"]).relative_to(tmp_path / "b") for f in cache.cache_files]
    assert relative == [Path(f["filename"]).relative_to(tmp_path / "a") for f in kept.cache_files]
    assert cache["context"] == data["context"]
    assert torch.equal(
        cache.with_format("torch")[:]["latents"], kept.with_format("torch")[:]["latents"]
    )


def test_a_stream_shorter_than_its_contexts_is_refused(tmp_path, tiny_kl_path):
    codec = LatentCodec(AutoencoderKL.from_pretrained(tiny_kl_path))
    streamed = images(10).to_iterable_dataset()
    with pytest.raises(ValueError, match="The dataset ended at row 10: 12 rows were expected"):
        cache_latents(streamed, codec, ["obs", "a"] * 6, "image", 32, tmp_path)
    assert not list(tmp_path.glob("latents-*/*.arrow"))
