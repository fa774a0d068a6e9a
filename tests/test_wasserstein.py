"""Tests for ctxadapter.evaluation.wasserstein: hand-computable cases."""

from __future__ import annotations

import math

import pytest
import torch

from ctxadapter.evaluation import wasserstein
from ctxadapter.evaluation.wasserstein import random_projections, sliced_wasserstein, wasserstein_1d


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# wasserstein_1d
# --------------------------------------------------------------------------------------------


def test_w1d_equal_sizes_hand_cases() -> None:
    # u=[0,1,2,3], v=[1,2,3,4]: sorted pairs differ by 1 each -> W2 = sqrt(mean(1,1,1,1)) = 1.
    assert float(wasserstein_1d(_t([0, 1, 2, 3]), _t([1, 2, 3, 4]))) == pytest.approx(1.0)
    # u=[0,0], v=[0,2]: pairs (0,0), (0,2) -> W2^2 = mean(0, 4) = 2 -> W2 = sqrt(2);
    # W1 = mean(0, 2) = 1.
    assert float(wasserstein_1d(_t([0, 0]), _t([0, 2]))) == pytest.approx(math.sqrt(2))
    assert float(wasserstein_1d(_t([0, 0]), _t([2, 0]), p=1)) == pytest.approx(1.0)
    # order of the samples does not matter
    assert float(wasserstein_1d(_t([3, 0, 2, 1]), _t([4, 1, 3, 2]))) == pytest.approx(1.0)


def test_w1d_unequal_sizes_hand_case() -> None:
    # u=[0,1] (mass 1/2 each), v=[0,0.5,1] (mass 1/3 each). Quantile functions:
    #   Q_u = 0 on (0,1/2], 1 on (1/2,1];  Q_v = 0 on (0,1/3], 0.5 on (1/3,2/3], 1 on (2/3,1].
    # Merged breakpoints 1/3, 1/2, 2/3, 1 -> pieces (length, |Q_u - Q_v|):
    #   (1/3, 0), (1/6, 0.5), (1/6, 0.5), (1/3, 0).
    # W2^2 = 2 * (1/6) * 0.25 = 1/12  -> W2 = sqrt(1/12);  W1 = 2 * (1/6) * 0.5 = 1/6.
    u, v = _t([0, 1]), _t([0, 0.5, 1])
    assert float(wasserstein_1d(u, v)) == pytest.approx(math.sqrt(1 / 12))
    assert float(wasserstein_1d(u, v, p=1)) == pytest.approx(1 / 6)
    assert float(wasserstein_1d(v, u)) == pytest.approx(math.sqrt(1 / 12))
    # One point vs two: u=[1], v=[0,4] -> W2^2 = (1/2)*1 + (1/2)*9 = 5.
    assert float(wasserstein_1d(_t([1]), _t([0, 4]))) == pytest.approx(math.sqrt(5))


def test_w1d_unequal_sizes_matches_replication() -> None:
    # Replicating each of n samples m times and each of m samples n times gives two sets of
    # n*m equally weighted points with the same distributions: W must not change.
    g = torch.Generator().manual_seed(3)
    u = torch.randn(6, generator=g, dtype=torch.float64)
    v = torch.randn(4, generator=g, dtype=torch.float64) + 0.3
    for p in (1, 2, 3):
        expected = wasserstein_1d(u.repeat_interleave(4), v.repeat_interleave(6), p=p)
        assert float(wasserstein_1d(u, v, p=p)) == pytest.approx(float(expected), rel=1e-12)


def test_w1d_batched() -> None:
    u = _t([[0, 1, 2, 3], [0, 0, 0, 0]])
    v = _t([[1, 2, 3], [0, 0, 2]])
    out = wasserstein_1d(u, v)
    assert out.shape == (2,)
    for i in range(2):
        assert float(out[i]) == pytest.approx(float(wasserstein_1d(u[i], v[i])))


def test_w1d_errors() -> None:
    with pytest.raises(ValueError, match="u is empty"):
        wasserstein_1d(_t([]), _t([1]))
    with pytest.raises(ValueError, match="v is empty"):
        wasserstein_1d(_t([1]), _t([]))
    with pytest.raises(ValueError, match="0.5"):
        wasserstein_1d(_t([1]), _t([2]), p=0.5)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        wasserstein_1d(torch.zeros(2, 3), torch.zeros(3, 3))


# --------------------------------------------------------------------------------------------
# sliced_wasserstein
# --------------------------------------------------------------------------------------------


def test_sw_identical_sets_is_zero() -> None:
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(sliced_wasserstein(x, x.clone())) == 0.0
    # permuting the samples does not change the sets
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    assert float(sliced_wasserstein(x, x[perm])) < 1e-6


def test_sw_constant_shift() -> None:
    # y = x + c: every projection shifts by theta.c, so W2 along theta is |theta.c| and
    # SW2 = sqrt(mean_k (theta_k . c)^2), which tends to ||c|| / sqrt(d) (E[(theta.c)^2] =
    # ||c||^2 / d for theta uniform on the sphere).
    d = 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, d, generator=g, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    theta = random_projections(d, 50, seed=7, dtype=torch.float64)
    expected = (theta @ c).square().mean().sqrt()
    got = sliced_wasserstein(x, x + c, num_projections=50, seed=7)
    assert float(got) == pytest.approx(float(expected), rel=1e-10)
    # explicit projections give the same result
    got_explicit = sliced_wasserstein(x, x + c, projections=theta)
    assert float(got_explicit) == pytest.approx(float(expected), rel=1e-10)
    # many projections: close to ||c|| / sqrt(d)
    many = sliced_wasserstein(x, x + c, num_projections=4000, seed=1)
    assert float(many) == pytest.approx(float(c.norm()) / math.sqrt(d), rel=0.1)


def test_sw_one_dimensional_equals_w2() -> None:
    # With d = 1 every direction is +1 or -1 and W2 is symmetric under negation, so SW2 = W2.
    theta = random_projections(1, 20, seed=0, dtype=torch.float64)
    assert torch.equal(theta.abs(), torch.ones_like(theta))
    u, v = _t([0, 1, 2, 3]), _t([1, 2, 3, 4])
    assert float(sliced_wasserstein(u, v)) == pytest.approx(1.0)
    assert float(sliced_wasserstein(u[:, None], v[:, None])) == pytest.approx(1.0)
    assert float(sliced_wasserstein(_t([0, 0]), _t([0, 2]))) == pytest.approx(math.sqrt(2))
    # unequal sizes, see test_w1d_unequal_sizes_hand_case: sqrt(1/12)
    assert float(sliced_wasserstein(_t([0, 1]), _t([0, 0.5, 1]))) == pytest.approx(
        math.sqrt(1 / 12)
    )


def test_sw_unequal_sizes_matches_replication() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 2, 3, 3, generator=g, dtype=torch.float64)
    y = torch.rand(4, 2, 3, 3, generator=g, dtype=torch.float64)
    expected = sliced_wasserstein(x.repeat_interleave(2, 0), y.repeat_interleave(3, 0))
    assert float(sliced_wasserstein(x, y)) == pytest.approx(float(expected), rel=1e-12)


def test_sw_p1_and_p2_on_shift() -> None:
    # For a pure shift, W_p along theta is |theta.c| for every p: SW1 = mean_k |theta_k . c|.
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    c = _t([1, -2, 0.5, 0])
    theta = random_projections(4, 30, seed=3, dtype=torch.float64)
    sw1 = sliced_wasserstein(x, x + c, num_projections=30, seed=3, p=1)
    assert float(sw1) == pytest.approx(float((theta @ c).abs().mean()), rel=1e-10)


def test_sw_seed_determinism() -> None:
    a = random_projections(12, 5, seed=4)
    b = random_projections(12, 5, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, random_projections(12, 5, seed=5))
    assert torch.allclose(a.norm(dim=1), torch.ones(5))
    # more projections extend the same set
    assert torch.equal(random_projections(12, 8, seed=4)[:5], a)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 12, generator=g), torch.rand(20, 12, generator=g)
    assert float(sliced_wasserstein(x, y, seed=1)) == float(sliced_wasserstein(x, y, seed=1))
    assert float(sliced_wasserstein(x, y, seed=1)) != float(sliced_wasserstein(x, y, seed=2))


def test_sw_uint8_equals_float() -> None:
    g = torch.Generator().manual_seed(0)
    xu = torch.randint(0, 256, (16, 8, 8, 3), generator=g, dtype=torch.uint8)
    yu = torch.randint(0, 256, (12, 8, 8, 3), generator=g, dtype=torch.uint8)
    got = sliced_wasserstein(xu, yu)
    expected = sliced_wasserstein(xu.float() / 255, yu.float() / 255)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_sw_chunking_does_not_change_result(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(37, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.rand(29, 3, 4, 4, generator=g, dtype=torch.float64)
    full = sliced_wasserstein(x, y)
    monkeypatch.setattr(wasserstein, "_CHUNK_ELEMENTS", 100)  # 2 samples per chunk
    assert float(sliced_wasserstein(x, y)) == pytest.approx(float(full), rel=1e-12)


def test_sw_errors_name_bad_values() -> None:
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match="192.*147"):
        sliced_wasserstein(x, torch.rand(4, 3, 7, 7))
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*\(8, 8, 3\)"):
        sliced_wasserstein(x, torch.rand(4, 8, 8, 3))
    with pytest.raises(ValueError, match="x is empty"):
        sliced_wasserstein(torch.rand(0, 3, 8, 8), x)
    with pytest.raises(ValueError, match="y is empty"):
        sliced_wasserstein(x, torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="num_projections.*0"):
        sliced_wasserstein(x, x, num_projections=0)
    with pytest.raises(ValueError, match="p must be.*0.5"):
        sliced_wasserstein(x, x, p=0.5)
    with pytest.raises(TypeError, match="int64"):
        sliced_wasserstein(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3))
