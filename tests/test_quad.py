"""Tests of the quad dataset generator (``ctxadapter.data.quad``, drawn by ``quad_render``)
against the conventions in their docstrings, with hand-computable cases."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch

from ctxadapter.contexts import parse_context
from ctxadapter.data import quad, quad_render

N = 20_000  # enough for ~5-sigma tolerances below on means and variances

RED, YELLOW, MAGENTA = (255, 0, 0), (255, 255, 0), (255, 0, 255)


def _values(
    quads=(0.0, 0.0, 0.0, 0.0), size=1.0, color=1.0, shape=0.0, orientation=0.0
) -> np.ndarray:
    """One row of render values in [0, 1]; defaults: red quadrants, magenta shape, s = 48."""
    return np.array([[*quads, size, color, shape, orientation]])


def _shape_mask(**kwargs) -> np.ndarray:
    """Pixels painted magenta on red quadrants, bool [64, 64]."""
    image = quad_render.render(_values(**kwargs))[0]
    return np.all(image == MAGENTA, axis=-1)


def _std_normal_cdf(latents: np.ndarray, dependent: bool = True) -> np.ndarray:
    mean, std = quad.obs_mean_std(dependent)
    return torch.special.ndtr(torch.from_numpy((latents.astype(np.float64) - mean) / std)).numpy()


# ---------------------------------------------------------------------------------------------
# API, shapes, determinism, random streams


def test_constants():
    latent_names = "quad1 quad2 quad3 quad4 size color shape orientation"
    assert quad.LATENT_NAMES == tuple(latent_names.split())
    assert quad.CONCEPTS == ("quad1", "quad2", "quad3", "quad4", "size", "orientation")
    assert quad.TRAIN_CONTEXTS == ("obs", *quad.CONCEPTS)
    assert len(quad.HELDOUT_COMPOSITIONS) == 9
    assert "quad1+orientation" in quad.HELDOUT_COMPOSITIONS
    assert "quad3+quad4" not in quad.HELDOUT_COMPOSITIONS
    for name in quad.TRAIN_CONTEXTS + quad.HELDOUT_COMPOSITIONS:  # canonical spelling
        assert ("+".join(parse_context(name, quad.CONCEPTS, lenient=True)) or "obs") == name


def test_sample_shapes_and_dtypes():
    images, latents = quad.sample("quad1+size", 5)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.uint8
    assert latents.shape == (5, 8) and latents.dtype == np.float32


def test_images_are_rendered_from_returned_latents():
    images, latents = quad.sample("quad2", 50, seed=3)
    np.testing.assert_array_equal(images, quad.latents_to_images(latents))


def test_same_arguments_same_output_and_prefix():
    images_a, latents_a = quad.sample("size", 20, seed=7, split="test")
    images_b, latents_b = quad.sample("size", 20, seed=7, split="test")
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(latents_a, latents_b)
    np.testing.assert_array_equal(
        quad.sample_latents("size", 5, seed=7, split="test"), latents_a[:5]
    )


@pytest.mark.parametrize(
    "other",
    [
        {"seed": 1},
        {"split": "test"},
        {"split": "validation"},
        {"context": "quad2"},
        {"context": "obs"},
        {"dependent": False},
        {"strength": 2.0},
    ],
)
def test_each_argument_selects_its_own_stream(other):
    base = {"context": "quad1", "n": 100, "seed": 0, "split": "train"}
    a = quad.sample_latents(**base)
    b = quad.sample_latents(**{**base, **other})
    assert not (a == b).any()  # no common noise: every latent differs


def test_heldout_never_equals_training():
    train = quad.sample_latents("quad1", 5000, split="train")
    test = quad.sample_latents("quad1", 5000, split="test")
    assert not set(map(tuple, train.tolist())) & set(map(tuple, test.tolist()))


@pytest.mark.parametrize(
    "same", ["size+quad1", " quad1 + size ", ["size", "quad1"], ("quad1", "size")]
)
def test_context_forms_are_canonicalised(same):
    np.testing.assert_array_equal(
        quad.sample_latents(same, 10), quad.sample_latents("quad1+size", 10)
    )


@pytest.mark.parametrize("obs", ["", [], ()])
def test_observational_forms(obs):
    np.testing.assert_array_equal(quad.sample_latents(obs, 10), quad.sample_latents("obs", 10))


@pytest.mark.parametrize(
    ("context", "bad"),
    [
        ("quad5", "'quad5'"),
        (["quad1", "color"], "'color'"),
        ("quad1++size", "''"),
        ("Obs", "'Obs'"),
    ],
)
def test_bad_context_raises(context, bad):
    with pytest.raises(ValueError, match=bad) as info:
        quad.sample(context, 1)
    assert "'quad1', 'quad2', 'quad3', 'quad4', 'size', 'orientation'" in str(info.value)


def test_bad_type_split_seed_raise():
    with pytest.raises(TypeError):
        quad.sample_latents(3, 1)
    with pytest.raises(ValueError, match="'val'"):
        quad.sample_latents("obs", 1, split="val")
    with pytest.raises(ValueError, match="-1"):
        quad.sample_latents("obs", 1, seed=-1)


# ---------------------------------------------------------------------------------------------
# The SCM


def test_exact_obs_std_by_hand():
    _, std = quad.obs_mean_std()
    var_orientation = 1.18
    var_shape = 1.45**2 * var_orientation + 1.31
    var_color = 1.34**2 * var_shape + 1.42
    var_quad3 = 0.72**2 * 1.95646855 + 1.00502177
    np.testing.assert_allclose(std[7] ** 2, var_orientation)
    np.testing.assert_allclose(std[6] ** 2, var_shape)
    np.testing.assert_allclose(std[5] ** 2, var_color)
    np.testing.assert_allclose(std[2] ** 2, var_quad3)
    mean, std_independent = quad.obs_mean_std(dependent=False)
    np.testing.assert_array_equal(mean, np.zeros(8))
    np.testing.assert_allclose(
        std_independent**2,
        [1.3855493, 1.16426732, 1.00502177, 1.95646855, 1.27482347, 1.42, 1.31, 1.18],
    )


@pytest.mark.parametrize("dependent", [True, False])
def test_standardised_obs_samples(dependent):
    mean, std = quad.obs_mean_std(dependent)
    z = (quad.sample_latents("obs", N, dependent=dependent) - mean) / std
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.05)


def test_intervention_on_quad1_sets_its_law_and_cuts_its_parents():
    obs = quad.sample_latents("obs", N)
    do = quad.sample_latents("quad1", N)
    assert do[:, 0].mean() == pytest.approx(1.16920556, abs=0.05)
    assert do[:, 0].var() == pytest.approx(1.94878138, abs=0.1)
    parents = [1, 3, 5, 7]  # quad2, quad4, color, orientation
    assert np.all(np.abs(np.corrcoef(obs.T)[0, parents]) > 0.1)
    assert np.all(np.abs(np.corrcoef(do.T)[0, parents]) < 0.05)
    # quad1 has no children: every other variable keeps its observational law.
    np.testing.assert_allclose(do[:, 1:].std(axis=0), obs[:, 1:].std(axis=0), rtol=0.05)


def test_intervention_propagates_to_descendants():
    do = quad.sample_latents("orientation", N)
    orientation = -0.67
    shape = 1.45 * orientation
    color = -1.34 * shape
    size = 1.67 * color - 0.81 * orientation
    np.testing.assert_allclose(
        do[:, [7, 6, 5, 4]].mean(axis=0), [orientation, shape, color, size], atol=0.1
    )
    assert do[:, 7].var() == pytest.approx(1.26, abs=0.07)


def test_joint_intervention():
    do = quad.sample_latents("quad1+size", N)
    np.testing.assert_allclose(do[:, [0, 4]].mean(axis=0), [1.16920556, 1.0117071], atol=0.05)
    np.testing.assert_allclose(do[:, [0, 4]].var(axis=0), [1.94878138, 1.30511067], atol=0.1)
    assert abs(np.corrcoef(do[:, 4], do[:, 5])[0, 1]) < 0.05  # color -> size is cut


@pytest.mark.parametrize("strength", [0.0, 0.5, 2.0])
def test_strength_scales_the_do_mean(strength):
    do = quad.sample_latents("size", N, strength=strength)
    assert do[:, 4].mean() == pytest.approx(1.0117071 * strength, abs=0.05)
    assert do[:, 4].var() == pytest.approx(1.30511067, abs=0.1)


def test_independent_variant_has_diagonal_obs_covariance():
    latents = quad.sample_latents("obs", N, dependent=False)
    correlation = np.corrcoef(latents.T)
    assert np.all(np.abs(correlation[~np.eye(8, dtype=bool)]) < 0.05)
    np.testing.assert_allclose(latents.var(axis=0), quad.obs_mean_std(False)[1] ** 2, rtol=0.05)


def test_ancestral_relation_by_hand():
    # Derived by hand from the edge list, paths through color and shape included (e.g.
    # orientation -> shape -> quad2 -> quad1, orientation -> shape -> color -> size).
    pairs = {
        ("quad2", "quad1"),
        ("quad3", "quad1"),
        ("quad4", "quad1"),
        ("orientation", "quad1"),
        ("quad3", "quad2"),
        ("quad4", "quad2"),
        ("orientation", "quad2"),
        ("quad4", "quad3"),
        ("orientation", "size"),
    }
    relation = quad.ancestral_relation()
    assert relation.dtype == torch.bool and relation.shape == (6, 6)
    found = {(quad.CONCEPTS[j], quad.CONCEPTS[i]) for i, j in relation.nonzero().tolist()}
    assert found == pairs
    assert not quad.ancestral_relation(dependent=False).any()


def test_ancestral_relation_subsets_and_errors():
    relation = quad.ancestral_relation(("size", "color", "shape", "orientation"))
    # (i, j): j is an ancestor of i; rows and columns follow the given order.
    expected = [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    np.testing.assert_array_equal(relation.numpy(), np.array(expected, dtype=bool))
    with pytest.raises(ValueError, match="unknown latent 'hue'"):
        quad.ancestral_relation(("quad1", "hue"))
    with pytest.raises(ValueError, match="must not repeat"):
        quad.ancestral_relation(("quad1", "quad1"))


# ---------------------------------------------------------------------------------------------
# Rendering


@pytest.mark.parametrize(
    ("v", "rgb"),
    [
        (0.0, (255, 0, 0)),
        (0.1, (255, 127, 0)),  # 127.5 truncated
        (0.2, (255, 255, 0)),
        (0.5, (0, 255, 127)),
        (1.0, (255, 0, 255)),
        (-1.0, (255, 0, 0)),  # clipped
    ],
)
def test_colormap_hand_cases(v, rgb):
    assert tuple(quad_render.colormap(np.array(v))) == rgb
    assert quad_render.colormap(np.full((2, 3), v)).shape == (2, 3, 3)


def test_quadrant_placement():
    image = quad_render.render(_values(quads=(0.0, 0.2, 0.5, 1.0), size=0.0))[0]
    quad3, quad4 = (0, 255, 127), MAGENTA
    # Pixels on both sides of the row-32 and column-32 boundaries, away from the small shape.
    assert tuple(image[63, 0]) == tuple(image[32, 0]) == tuple(image[63, 31]) == RED  # quad1
    assert tuple(image[63, 63]) == tuple(image[32, 63]) == tuple(image[63, 32]) == YELLOW
    assert tuple(image[0, 0]) == tuple(image[31, 0]) == tuple(image[0, 31]) == quad3
    assert tuple(image[0, 63]) == tuple(image[31, 63]) == tuple(image[0, 32]) == quad4


def test_corner_pixels_carry_the_quadrant_latents():
    # No shape reaches the corners (the largest, s = 48, stays within 34 pixels of the centre).
    images, latents = quad.sample("obs", 500)
    colours = quad_render.colormap(_std_normal_cdf(latents)[:, :4])
    for k, (row, col) in enumerate([(63, 0), (63, 63), (0, 0), (0, 63)]):
        np.testing.assert_array_equal(images[:, row, col], colours[:, k])


def test_square_pixel_counts_exact():
    # Pixel centres at offsets c + 0.5 - 32: half-side 24 covers columns 8..55, 4.8 covers 27..36.
    mask = _shape_mask(shape=1 / 3, size=1.0)
    assert mask.sum() == 48 * 48
    assert mask[8:56, 8:56].all()
    assert _shape_mask(shape=1 / 3, size=0.0).sum() == 10 * 10


@pytest.mark.parametrize(
    ("shape", "area"),
    [
        (0.0, math.pi * 24**2),  # disc, radius 24
        (1 / 3, 48.0**2),  # square, side 48
        (2 / 3, 3 * math.sqrt(3) / 4 * 24**2),  # equilateral triangle, circumradius 24
        (1.0, math.pi * 24 * 12),  # ellipse, semi-axes 24 and 12
    ],
)
def test_shape_areas(shape, area):
    assert _shape_mask(shape=shape).sum() == pytest.approx(area, rel=0.03)


def test_shape_rounding_and_size_map():
    # round(3 * 0.4) = 1 (square); size 0.5 -> s = 48 * 0.6 = 28.8, half 14.4 -> columns 18..45.
    assert _shape_mask(shape=0.4, size=0.5).sum() == 28 * 28


def test_orientation_conventions():
    def extent(mask):
        rows, cols = np.nonzero(mask)
        return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1

    assert extent(_shape_mask(shape=1.0, orientation=0.0)) == (24, 48)  # long axis along x
    assert extent(_shape_mask(shape=1.0, orientation=0.25)) == (48, 24)  # turned by pi/2
    # theta = pi/8 with dy pointing down: the long axis runs to the lower right on screen.
    mask = _shape_mask(shape=1.0, orientation=1 / 16)
    dx, dy = 20 * math.cos(math.pi / 8), 20 * math.sin(math.pi / 8)
    assert mask[int(32 + dy), int(32 + dx)] and not mask[int(32 - dy), int(32 + dx)]
    # Triangle at theta = pi/2: a vertex at dy = +24 (down), the opposite edge at dy = -12.
    rows = np.nonzero(_shape_mask(shape=2 / 3, orientation=0.25))[0]
    assert rows.min() == 20 and rows.max() > 50
    # Square at theta = pi/4 is a diamond reaching 24 * sqrt(2) > 32 along the axes.
    diamond = _shape_mask(shape=1 / 3, orientation=0.125)
    assert diamond[32, 0] and diamond[0, 32] and not diamond[8, 8]


def test_render_is_vectorised_over_mixed_shapes():
    values = np.random.default_rng(0).uniform(size=(2100, 8))  # spans several render chunks
    images = quad_render.render(values)
    for i in (0, 1500, 2099):
        np.testing.assert_array_equal(images[i], quad_render.render(values[i : i + 1])[0])


# ---------------------------------------------------------------------------------------------
# Datasets


@pytest.fixture(scope="module")
def dataset_dict(tmp_path_factory):
    return quad.build_dataset(
        n_per_context=3, heldout_per_context=2, seed=1, cache_dir=str(tmp_path_factory.mktemp("c"))
    )


def test_build_dataset_layout(dataset_dict):
    assert set(dataset_dict) == {"train", "validation", "test"}
    for split in dataset_dict.values():
        assert split.column_names == ["image", "context", "latents"]
        assert isinstance(split.features["image"], datasets.Image)
    train, test = dataset_dict["train"], dataset_dict["test"]
    assert train.num_rows == 7 * 3 and test.num_rows == 16 * 2
    assert sorted(set(train["context"])) == sorted(quad.TRAIN_CONTEXTS)
    assert set(test["context"]) == set(quad.TRAIN_CONTEXTS + quad.HELDOUT_COMPOSITIONS)
    assert train["context"].count("quad1") == 3 and test["context"].count("quad1+size") == 2
    validation = dataset_dict["validation"]
    assert validation.num_rows == 7 and sorted(validation["context"]) == sorted(quad.TRAIN_CONTEXTS)


def test_build_dataset_rows_match_sample(dataset_dict):
    test = dataset_dict["test"].filter(lambda row: row["context"] == "quad1+size")
    images, latents = quad.sample("quad1+size", 2, seed=1, split="test")
    np.testing.assert_array_equal(np.array(test["latents"], dtype=np.float32), latents)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in test["image"]]), images)


def test_imagefolder_round_trip(dataset_dict, tmp_path):
    root = tmp_path / "quad"
    quad.write_imagefolder(dataset_dict, root)
    assert (root / "test" / "quad1+size_1.png").is_file()
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "c"))
    assert set(loaded) == {"train", "validation", "test"}

    def key(row):
        return row["context"], tuple(row["latents"])

    for name, original in dataset_dict.items():
        expected = {key(row): np.asarray(row["image"]) for row in original}
        got = {key(row): np.asarray(row["image"]) for row in loaded[name]}
        assert expected.keys() == got.keys()
        for k, image in expected.items():
            np.testing.assert_array_equal(got[k], image)
