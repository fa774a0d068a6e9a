"""Pictures (``ctxadapter.viz``) and the ``examples/generate.py`` CLI on a tiny autoencoder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.pinning import base_model_record
from ctxadapter.viz import (
    DARK_BLUE,
    DIAGONAL_GREY,
    concept_graph_image,
    context_grid,
    counterfactual_grid,
    image_grid,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = ["a", "b", "c"]
SIZE = 32  # image side; the tiny KL autoencoder downsamples by 8 -> latents (4, 4, 4)
PAD = 2


def make_model(tiny_kl_path: str, base_model: bool = False) -> ContextAutoencoder:
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    torch.manual_seed(0)
    record = base_model_record(vae, tiny_kl_path) if base_model else None
    adapter = CtxAdapter(
        concepts=CONCEPTS,
        latent_shape=[4, 4, 4],
        exogenous_width=4,
        concept_width=2,
        base_model=record,
    )
    return ContextAutoencoder(vae, adapter)


@pytest.fixture
def model(tiny_kl_path: str) -> ContextAutoencoder:
    return make_model(tiny_kl_path)


def grid_width(cols: int, margin: int = 0) -> int:
    return margin + cols * SIZE + (cols + 1) * PAD


def grid_height(rows: int) -> int:
    return rows * SIZE + (rows + 1) * PAD


def tile(grid: Image.Image, row: int, col: int, cols: int) -> np.ndarray:
    """The pixels of tile (row, col) of a grid of ``cols`` columns (label margin inferred)."""
    margin = grid.width - grid_width(cols)
    x, y = margin + PAD + col * (SIZE + PAD), PAD + row * (SIZE + PAD)
    return np.asarray(grid.crop((x, y, x + SIZE, y + SIZE))).astype(int)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [0, 1] -> ``(N, H, W, 3)`` ints in [0, 255]."""
    return (images.clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy().astype(int)


# ------------------------------------------------------------------------------------ image_grid


def test_image_grid_size_and_tiles():
    images = torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    grid = image_grid(images, rows=2)
    assert grid.mode == "RGB"
    assert grid.size == (grid_width(3), grid_height(2))
    expected = to_uint8(images)
    for n in range(6):
        row, col = divmod(n, 3)
        assert np.abs(tile(grid, row, col, 3) - expected[n]).max() <= 1

    labelled = image_grid(images, rows=3, row_labels=["obs", "a", "a+b+c"])
    margin = labelled.width - grid_width(2)
    assert margin > 10  # room for the labels
    assert labelled.height == grid_height(3)
    assert np.asarray(labelled.crop((0, 0, margin, labelled.height))).min() < 128  # ink drawn
    assert np.abs(tile(labelled, 2, 1, 2) - expected[5]).max() <= 1

    wide = image_grid(images, rows=1, padding=5)
    assert wide.size == (6 * SIZE + 7 * 5, SIZE + 2 * 5)


def test_image_grid_accepts_pil_images():
    pil = [Image.new("RGB", (SIZE, SIZE), (255, 0, 0)) for _ in range(4)]
    grid = image_grid(pil, rows=2)
    assert grid.size == (grid_width(2), grid_height(2))
    assert tuple(tile(grid, 1, 1, 2)[5, 5]) == (255, 0, 0)


def test_image_grid_bad_rows_names_the_values():
    images = torch.rand(5, 3, 8, 8)
    with pytest.raises(ValueError, match=r"N=5.*rows=2"):
        image_grid(images, rows=2)
    with pytest.raises(ValueError, match=r"rows=0"):
        image_grid(images, rows=0)
    with pytest.raises(ValueError, match=r"3 row labels.*rows=5"):
        image_grid(images, rows=5, row_labels=["x", "y", "z"])


# ---------------------------------------------------------------------------------- model grids


def test_context_grid_rows_are_generate_with_the_same_seed(model):
    contexts = ["obs", "b", "c+a"]
    model.eval()
    expected = [
        to_uint8(model.generate(c, 3, generator=torch.Generator().manual_seed(7))) for c in contexts
    ]
    model.train()
    grid = context_grid(model, contexts, num_samples=3, seed=7)
    # the previous mode is restored; the frozen autoencoder stays in eval mode
    assert model.training and model.adapter.training and model.adapter.expressive.training
    assert not model.codec.autoencoder.training
    assert grid.size[1] == grid_height(3)
    assert grid.width > grid_width(3)  # label margin
    for row in range(3):
        for col in range(3):
            assert np.abs(tile(grid, row, col, 3) - expected[row][col]).max() <= 1, (row, col)
    # rows differ: the interventions change the samples
    assert np.abs(tile(grid, 0, 0, 3) - tile(grid, 1, 0, 3)).max() > 1


def test_context_grid_real_rows_and_title(model):
    real = {"obs": torch.zeros(1, 3, SIZE, SIZE), "b": torch.full((4, 3, SIZE, SIZE), 0.5)}
    grid = context_grid(model, ["obs", "a", "b"], num_samples=3, seed=7, real=real)
    plain = context_grid(model, ["obs", "a", "b"], num_samples=3, seed=7)
    # rows: real obs, generated obs, generated a, real b, generated b
    assert grid.height == grid_height(5)
    assert (tile(grid, 0, 0, 3) == 0).all()  # the one real obs image, black
    assert (tile(grid, 0, 1, 3) == 255).all() and (tile(grid, 0, 2, 3) == 255).all()  # blank
    assert (tile(grid, 3, 2, 3) == 128).all()  # the third of four real b images (0.5 -> 128)
    for row, plain_row in ((1, 0), (2, 1), (4, 2)):  # the same samples as without real rows
        assert np.array_equal(tile(grid, row, 0, 3), tile(plain, plain_row, 0, 3))
    assert grid.width > plain.width  # the longer labels: "generated obs"
    titled_grid = context_grid(model, ["obs"], num_samples=3, seed=7, title="Samples at step 8")
    untitled = context_grid(model, ["obs"], num_samples=3, seed=7)
    band = titled_grid.height - untitled.height
    assert band > 0 and titled_grid.width >= untitled.width
    assert np.array_equal(np.asarray(titled_grid)[band:, : untitled.width], np.asarray(untitled))
    assert (np.asarray(titled_grid)[:band] < 128).any()  # the title's ink


def test_context_grid_rejects_unknown_context(model):
    with pytest.raises(ValueError, match="'zzz'"):
        context_grid(model, ["obs", "zzz"], num_samples=2)


def test_counterfactual_grid_rows(model, images):
    pixels = (images + 1) / 2  # [0, 1]
    model.eval()
    edited = to_uint8(model.counterfactual(pixels, "b"))
    unedited = to_uint8(model.counterfactual(pixels, "obs"))  # the autoencoder's reconstruction
    grid = counterfactual_grid(model, pixels)
    assert not model.training
    rows = 2 + len(CONCEPTS)  # input, obs, a, b, c
    assert grid.size[1] == grid_height(rows)
    assert np.abs(tile(grid, 0, 1, 2) - to_uint8(pixels)[1]).max() <= 1
    assert np.abs(tile(grid, 1, 1, 2) - unedited[1]).max() <= 1  # row of "obs"
    assert np.abs(tile(grid, 3, 0, 2) - edited[0]).max() <= 1  # row of "b"

    grid = counterfactual_grid(model, pixels, contexts=["a+c"])
    assert grid.size[1] == grid_height(3)

    # strength 2: the edit rows are twice the change; obs stays the reconstruction
    twice = to_uint8(model.counterfactual(pixels, "b", strength=2))
    grid = counterfactual_grid(model, pixels, strength=2)
    assert np.abs(tile(grid, 3, 0, 2) - twice[0]).max() <= 1
    assert np.abs(tile(grid, 1, 1, 2) - unedited[1]).max() <= 1
    assert not np.array_equal(twice, edited)

    # true counterfactuals, where known, go in a row right below their context's edits
    truth = torch.rand(len(pixels), 3, SIZE, SIZE)
    grid = counterfactual_grid(model, pixels, truths={"b": truth, "obs": truth})
    assert grid.size[1] == grid_height(rows + 1)  # only single contexts get a truth row
    assert np.abs(tile(grid, 4, 1, 2) - to_uint8(truth)[1]).max() <= 1  # below "b"
    assert np.abs(tile(grid, 5, 0, 2) - to_uint8(model.counterfactual(pixels, "c"))[0]).max() <= 1


# ---------------------------------------------------------------------------------- concept graph


def test_concept_graph_image_colours():
    graph = torch.tensor([[0.5, 0.0, 0.2], [0.8, 0.5, 0.0], [0.1, 0.4, 0.5]])
    cell = 40
    image = concept_graph_image(graph, CONCEPTS, title="graph", cell=cell)
    pixels = np.asarray(image).astype(int)
    dark = np.all(pixels == DARK_BLUE, axis=-1)
    ys, xs = np.nonzero(dark)
    assert len(xs) > cell * cell // 2  # the largest entry (1, 0) fills one cell
    assert xs.max() - xs.min() < cell and ys.max() - ys.min() < cell
    y, x = ys.min() + 1, xs.min() + 1  # a corner inside cell (1, 0), away from its text
    assert tuple(pixels[y, x + 2 * cell]) == (255, 255, 255)  # (1, 2) = 0: white
    assert tuple(pixels[y, x + cell]) == DIAGONAL_GREY  # (1, 1): the fixed diagonal
    lighter = pixels[y - cell, x + 2 * cell]  # (0, 2) = 0.2: between white and dark blue
    assert pixels[y, x].sum() < lighter.sum() < 3 * 255


def test_concept_graph_image_scale_is_fixed_and_truth_is_framed():
    cell = 40

    def draw(graph, **kwargs):
        """The picture and the corner (row, column) of its cell (0, 0)."""
        image = np.asarray(concept_graph_image(graph, CONCEPTS, cell=cell, **kwargs)).astype(int)
        dark = np.nonzero(np.all(image == DARK_BLUE, axis=-1))  # cell (1, 0) is full colour
        return image, (dark[0].min() - 1 - cell, dark[1].min() - 1)  # inside a 1-pixel outline

    def colour(graph, i, j, **kwargs):
        image, (top, left) = draw(graph, **kwargs)
        return tuple(image[top + i * cell + 4, left + j * cell + 4])

    small = torch.tensor([[0.5, 0.0, 0.05], [0.9, 0.5, 0.0], [0.0, 0.0, 0.5]])
    large = small.clone()
    large[2, 1] = 0.45
    # the same entry (0, 2) = 0.05 gets the same colour whatever the largest entry is
    assert colour(small, 0, 2) == colour(large, 0, 2) != (255, 255, 255)
    half = colour(small, 0, 2, scale=0.1)  # 0.05 of 0.1: halfway to dark blue
    assert np.abs(np.subtract(half, [255 + 0.5 * (d - 255) for d in DARK_BLUE])).max() <= 1
    truth = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, 0]])
    plain, (top, left) = draw(small)
    framed, _ = draw(small, truth=truth)
    grid = (slice(top, top + 3 * cell), slice(left, left + 3 * cell))
    changed = np.any(framed[grid] != plain[grid], axis=-1)
    assert np.all(framed[grid][changed] == 0)  # black frames, nothing else
    rows, columns = np.nonzero(changed)
    assert {(r // cell, c // cell) for r, c in zip(rows, columns, strict=True)} == {(0, 2), (1, 0)}
    with pytest.raises(ValueError, match="scale must be positive"):
        concept_graph_image(small, CONCEPTS, scale=0)
    with pytest.raises(ValueError, match=r"truth must have shape \(3, 3\)"):
        concept_graph_image(small, CONCEPTS, truth=torch.zeros(2, 2))


def test_concept_graph_image_grows_with_k():
    def picture(k: int, cell: int = 48) -> Image.Image:
        names = [f"c{i:02d}" for i in range(k)]  # labels of equal width
        return concept_graph_image(torch.rand(k, k), names, cell=cell)

    assert picture(4).height - picture(2).height == 2 * 48
    assert picture(12).width - picture(8).width == 4 * 48
    assert picture(12, cell=20).height < picture(12).height
    long_names = concept_graph_image(torch.rand(2, 2), ["orientation", "size"], cell=24)
    assert long_names.height > picture(2, cell=24).height  # rotated column labels
    with pytest.raises(ValueError, match=r"K = len\(concepts\) = 3.*\(2, 2\)"):
        concept_graph_image(torch.rand(2, 2), CONCEPTS)


def test_concept_graph_image_of_a_model(model):
    graph = model.adapter.concept_graph()
    image = concept_graph_image(graph, model.adapter.concepts)
    assert image.mode == "RGB" and image.width > 3 * 48 and image.height > 3 * 48


# -------------------------------------------------------------------------------- report and CLI


def test_write_report(model, images, tmp_path):
    output_dir = tmp_path / "new" / "report"
    paths = write_report(model, output_dir, num_samples=2, images=(images + 1) / 2)
    assert set(paths) == {"contexts", "compositions", "concept_graph", "counterfactuals"}
    for name, path in paths.items():
        assert Path(path) == output_dir / f"{name}.png"
        assert Path(path).is_file()
    with Image.open(paths["contexts"]) as image:
        assert image.height == grid_height(1 + len(CONCEPTS))  # obs + each concept
    with Image.open(paths["compositions"]) as image:
        assert image.height == grid_height(3)  # every pair of three concepts

    only = write_report(model, tmp_path / "two", num_samples=2, compositions=["a+b+c"])
    assert set(only) == {"contexts", "compositions", "concept_graph"}
    with Image.open(only["compositions"]) as image:
        assert image.height == grid_height(1)


def test_generate_cli_end_to_end(tiny_kl_path, tmp_path):
    adapter_dir = tmp_path / "adapter"
    make_model(tiny_kl_path, base_model=True).save_pretrained(adapter_dir)
    image_paths = []
    for n, size in enumerate([(40, 48), (32, 32)]):
        path = tmp_path / f"image{n}.png"
        Image.new("RGB", size, (40 * n, 120, 200)).save(path)
        image_paths.append(str(path))
    output_dir = tmp_path / "samples"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "generate.py"),
            "--adapter",
            str(adapter_dir),
            "--output_dir",
            str(output_dir),
            "--num_samples",
            "2",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--compositions",
            "a+b",
            "--images",
            *image_paths,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    names = ["contexts", "compositions", "concept_graph", "counterfactuals"]
    for name in names:
        assert (output_dir / f"{name}.png").is_file(), name
        assert str(output_dir / f"{name}.png") in result.stdout
    with Image.open(output_dir / "counterfactuals.png") as image:
        assert image.height == grid_height(2 + len(CONCEPTS))
        assert image.width > grid_width(2)
