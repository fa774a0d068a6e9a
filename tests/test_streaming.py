"""Streamed datasets (``datasets.IterableDataset``) are checked and split as the prepared ones
are, reading them as they stream. (A whole run on a stream:
``tests/test_training_processes.py``.)"""

import datasets
import pytest
from PIL import Image

from ctxadapter.data import context_strings, validate_dataset
from ctxadapter.training.inputs import select_rows


def stream(contexts: list[str]) -> datasets.IterableDataset:
    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(len(contexts))]
    data = datasets.Dataset.from_dict(
        {"image": images, "context": contexts, "row": list(range(len(contexts)))},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "context": datasets.Value("string"),
                "row": datasets.Value("int64"),
            }
        ),
    )
    return data.to_iterable_dataset(num_shards=2)


def test_a_stream_is_validated_like_a_prepared_dataset():
    data = stream(["obs", " b+a ", "a", "b"])
    assert context_strings(data, "context") == ["obs", "b+a", "a", "b"]
    assert validate_dataset(data, "image", "context") == (["a", "b"], ["obs", "a+b", "a", "b"])
    with pytest.raises(ValueError, match="No samples for the context"):
        validate_dataset(stream(["obs", "a"]), "image", "context", ["a", "b"])
    with pytest.raises(ValueError, match="The dataset is empty"):
        validate_dataset(stream(["a", "b"]).take(0), "image", "context")


def test_select_rows_of_a_stream_keeps_those_rows_in_order():
    data = stream(["obs", "a", "b", "a", "obs"])
    assert [row["row"] for row in select_rows(data, [3, 0, 4], 5)] == [0, 3, 4]
