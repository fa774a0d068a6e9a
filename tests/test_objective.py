"""The objective's sample- and prior-matching terms and their grouped sliced Wasserstein-2
(``ctxadapter.evaluation.wasserstein``), by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from diffusers import AutoencoderKL
from torch.testing import assert_close

from ctxadapter import ContextAutoencoder, CtxAdapter
from ctxadapter.codec import LatentCodec
from ctxadapter.evaluation.wasserstein import grouped_sliced_wasserstein
from ctxadapter.objective import Objective, grouped_covariance_distance, grouped_edit_order


def test_grouped_sliced_wasserstein_matches_within_groups_only():
    direction = torch.ones(1, 1)
    real = torch.tensor([[10.0], [11.0], [0.0], [1.0]])
    fake = torch.tensor([[1.0], [0.0], [11.0], [10.0]])
    # Pooled, the two sets are equal; per group, every rank is 10 apart.
    assert grouped_sliced_wasserstein(real, fake, torch.zeros(4), direction).item() == 0
    grouped = grouped_sliced_wasserstein(real, fake, torch.tensor([0, 0, 1, 1]), direction)
    assert grouped.item() == pytest.approx(100.0)
    # Sorted within group 1: real (5, 7), fake (4, 7): squared differences 1 and 0 of 4 rows.
    real = torch.tensor([[0.0], [1.0], [5.0], [7.0]])
    fake = torch.tensor([[1.0], [0.0], [7.0], [4.0]])
    groups = torch.tensor([0, 0, 1, 1])
    assert grouped_sliced_wasserstein(real, fake, groups, direction).item() == pytest.approx(0.25)


def test_grouped_sliced_wasserstein_averages_directions():
    real = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    directions = torch.eye(2)  # x: (0, 1) vs (0, 0) -> 1; y: (0, 0) vs (0, 3) -> 9
    value = grouped_sliced_wasserstein(real, fake, torch.zeros(2, dtype=torch.long), directions)
    assert value.item() == pytest.approx((1 + 0 + 0 + 9) / 4)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"beta": -1.0}, "beta"),
        ({"sample_matching": float("nan")}, "sample_matching"),
        ({"prior_matching": -0.5}, "prior_matching"),
        ({"group_sparsity": "1"}, "group_sparsity"),
        ({"num_projections": 0}, "num_projections"),
        ({"reconstruction": "both"}, "reconstruction"),
    ],
)
def test_objective_rejects_bad_values(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        Objective(**kwargs)


ELBO = Objective(
    sample_matching=0.0,
    prior_matching=0.0,
    covariance_matching=0.0,
    edit_order=0.0,
    group_sparsity=0.0,
)
"""The reconstruction and KL terms only: each term under test is added to it alone."""


def test_defaults_are_the_cli_loss_and_paper_the_papers():
    assert Objective() == Objective(
        reconstruction="latent",
        beta=1.0,
        sample_matching=4.0,
        num_projections=64,
        prior_matching=4.0,
        covariance_matching=8.0,
        edit_order=30.0,
        group_sparsity=0.0,
        l2=0.0,
    )
    assert Objective.paper() == dataclasses.replace(ELBO, reconstruction="pixel")


@pytest.fixture
def tiny_batch(tiny_kl_path):
    """A two-concept model on the tiny autoencoder and 5 latents with their contexts."""
    vae = AutoencoderKL.from_pretrained(tiny_kl_path)
    torch.manual_seed(0)
    shape = list(LatentCodec(vae).latent_shape(32))
    adapter = CtxAdapter(["a", "b"], latent_shape=shape, exogenous_width=4, concept_width=2)
    model = ContextAutoencoder(vae, adapter).eval()
    latents = torch.randn(5, *shape)
    contexts = ["a", "obs", "a", "b", "obs"]
    return model, adapter, latents, contexts


def test_grouped_covariance_distance_by_hand():
    # One group of three scalars: real centred (-1, 0, 1), fake centred (-2, 0, 2). Without the
    # terms of a row with itself: sum_{i != j} (a_i a_j)^2 = 2^2 - 2 = 2, the same for b
    # 8^2 - 32 = 32, and the cross sum (a_i b_j)^2 = 2 * 8 = 16: 3 * (34 / 6 - 2 * 16 / 9) over
    # 3 rows of one value each, 19 / 9.
    real = torch.tensor([[0.0], [1.0], [2.0]])
    fake = torch.tensor([[0.0], [2.0], [4.0]])
    one_group = torch.zeros(3, dtype=torch.long)
    assert grouped_covariance_distance(real, fake, one_group).item() == pytest.approx(19 / 9)
    # a shift changes no covariance; the order of the rows within a group does not matter
    assert grouped_covariance_distance(real, real + 5, one_group).item() == pytest.approx(
        grouped_covariance_distance(real, real, one_group).item()
    )
    assert grouped_covariance_distance(real, fake.flip(0), one_group).item() == pytest.approx(
        19 / 9
    )
    # a second group of one row adds nothing, and counts in the average over rows
    real2, fake2 = torch.cat([real, torch.ones(1, 1)]), torch.cat([fake, torch.zeros(1, 1)])
    groups = torch.tensor([0, 0, 0, 1])
    assert grouped_covariance_distance(real2, fake2, groups).item() == pytest.approx(19 / 12)


def test_grouped_covariance_distance_compares_within_groups():
    # Pooled, the two sets have one covariance; within each group, fake varies and real not.
    real = torch.tensor([[0.0], [0.0], [2.0], [2.0]])
    fake = torch.tensor([[0.0], [2.0], [0.0], [2.0]])
    assert grouped_covariance_distance(real, fake, torch.zeros(4)).item() == pytest.approx(0)
    per_group = grouped_covariance_distance(real, fake, torch.tensor([0, 0, 1, 1]))
    # each group: real centred (0, 0), fake centred (-1, 1): (2 * 1 - 0) / 2 rows, 2 rows each
    assert per_group.item() == pytest.approx(1.0)


def test_grouped_edit_order_by_hand():
    # Four scalars of group 0 edited into group 1; the mean move is +5, so u = +1.
    before = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    source, target = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    # a shift and a stretch keep the order: corr 1
    assert grouped_edit_order(before, 2 * before + 5, source, target).item() == pytest.approx(0)
    # a fold reverses it: corr -1
    folded = torch.tensor([[8.0], [7.0], [6.0], [5.0]])
    assert grouped_edit_order(before, folded, source, target).item() == pytest.approx(2)
    # two middle rows swapped: centred p = q' = (-1.5, -0.5, 0.5, 1.5), q = (-1.5, 0.5, -0.5,
    # 1.5): sum pq = 4, sum p^2 = sum q^2 = 5, corr 0.8
    swapped = torch.tensor([[5.0], [7.0], [6.0], [8.0]])
    assert grouped_edit_order(before, swapped, source, target).item() == pytest.approx(0.2)


def test_grouped_edit_order_counts_moved_pairs_of_four_rows():
    before = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    folded = 5 - before
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    # a pair decoded under its own group was not edited; fewer than 4 rows say nothing
    assert grouped_edit_order(before, folded, zeros, zeros).item() == 0
    assert grouped_edit_order(before[:3], folded[:3], zeros[:3], ones[:3]).item() == 0
    # the mean over pairs: a fold (2) and a shift (0), in either order of the rows
    rows = torch.cat([before, before])
    edits = torch.cat([folded, before + 1])
    sources, targets = torch.cat([zeros, ones]), torch.cat([ones, zeros])
    assert grouped_edit_order(rows, edits, sources, targets).item() == pytest.approx(1)
    mixed = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    assert grouped_edit_order(
        rows[mixed], edits[mixed], sources[mixed], targets[mixed]
    ).item() == pytest.approx(1)


def test_grouped_edit_order_reads_along_the_move_only():
    # The move is along the first axis and keeps its order; the second axis is reversed.
    before = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    after = torch.stack([before[:, 0] + 10, 3 - before[:, 1]], dim=1)
    source, target = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert grouped_edit_order(before, after, source, target).item() == pytest.approx(0, abs=1e-6)


def plain_and_objective(model, latents, contexts, objective):
    """The losses of ``ELBO`` and of ``objective`` on one batch, with the same generator."""
    return [
        model(contexts, latents=latents, objective=o, generator=torch.Generator().manual_seed(1))
        for o in (ELBO, objective)
    ]


def losses_and_draws(model, adapter, latents, contexts, objective):
    """The loss of ``objective`` and, by hand, the rest of it: ``base``, the loss of ``ELBO``
    with the reconstruction of the matching terms (the average of the posterior sample's NLL
    and the posterior mean's, ``mean_reconstruction``), and the draws of the matching terms in
    their order: the posterior noise, the permutation of the rows and the prior noise; then
    each row decoded under its own context from another row's posterior mean (a
    counterfactual) and from a prior draw. Returns ``(base, out, counterfactuals, generated,
    g)``, ``g`` the generator after those draws."""
    plain, out = plain_and_objective(model, latents, contexts, objective)
    g = torch.Generator().manual_seed(1)
    mean = adapter(latents, contexts, generator=g).mean
    others = torch.randperm(len(latents), generator=g)
    noise = adapter.sample_noise(len(latents), generator=g)
    counterfactuals = adapter.latents_from_noise(mean[others], contexts).flatten(1)
    generated = adapter.latents_from_noise(noise, contexts).flatten(1)
    reconstruction = (plain["reconstruction"] + mean_reconstruction(adapter, latents, contexts)) / 2
    base = plain["loss"] - plain["reconstruction"] + reconstruction
    return base, out, counterfactuals, generated, g


def mean_reconstruction(adapter, latents, contexts):
    """The latent NLL of each row's posterior mean decoded under its context, batch mean."""
    mean = adapter.posterior(latents, contexts)[0]
    scale = adapter.latent_log_scale.exp()
    error = (latents - adapter.latents_from_noise(mean, contexts)) / scale
    size = error[0].numel()
    nll = 0.5 * error.pow(2).flatten(1).sum(1) + size * (scale.log() + 0.5 * math.log(2 * math.pi))
    return nll.mean()


def test_reconstruction_of_the_mean_by_hand(tiny_batch):
    """With the matching rows decoded, the reconstruction is the average of the ELBO's (a
    posterior sample) and the posterior mean's; without them it is the ELBO's alone."""
    model, adapter, latents, contexts = tiny_batch
    objective = dataclasses.replace(ELBO, edit_order=1.0)
    with torch.no_grad():
        plain, out = plain_and_objective(model, latents, contexts, objective)
        of_mean = mean_reconstruction(adapter, latents, contexts)
        sample = adapter(latents, contexts, generator=torch.Generator().manual_seed(1))
        error = (latents - sample.latents) / adapter.latent_log_scale.exp()
        of_sample = 0.5 * error.pow(2).flatten(1).sum(1).mean() + error[0].numel() * (
            adapter.latent_log_scale + 0.5 * math.log(2 * math.pi)
        )
    assert_close(plain["reconstruction"], of_sample, rtol=1e-5, atol=1e-4)
    assert abs(of_mean.item() - of_sample.item()) > 1e-3  # the two decodings differ
    assert_close(out["reconstruction"], (of_sample + of_mean) / 2, rtol=1e-5, atol=1e-4)


def test_edit_order_by_hand(tiny_batch):
    model, adapter, _, _ = tiny_batch
    latents = torch.randn(60, *adapter.latent_shape, generator=torch.Generator().manual_seed(2))
    contexts = ["a", "obs", "b"] * 20  # about 7 rows per (source, target) pair
    objective = dataclasses.replace(ELBO, edit_order=3.0)
    with torch.no_grad():
        base, out, counterfactuals, _, _ = losses_and_draws(
            model, adapter, latents, contexts, objective
        )
        # row n of the counterfactuals edits row sources[n]: compare with its decoding from
        # the same posterior mean
        decoded = adapter(
            latents, contexts, generator=torch.Generator().manual_seed(1), sample_matching=True
        )
        assert_close(decoded.counterfactuals.flatten(1), counterfactuals)
        g = torch.Generator().manual_seed(1)
        adapter(latents, contexts, generator=g)  # the posterior noise, then the permutation
        sources = decoded.sources
        assert torch.equal(sources, torch.randperm(60, generator=g))
        groups = torch.tensor([1, 0, 2] * 20)  # a, obs, b as distinct_contexts numbers them
        expected = grouped_edit_order(
            decoded.mean_latents[sources].flatten(1), counterfactuals, groups[sources], groups
        )
    assert expected.item() > 0.01
    assert_close(out["edit_order"], expected, rtol=1e-4, atol=1e-5)
    assert_close(out["loss"], base + 3.0 * expected, rtol=1e-4, atol=1e-4)


def test_covariance_matching_by_hand(tiny_batch):
    model, adapter, latents, contexts = tiny_batch
    objective = dataclasses.replace(ELBO, covariance_matching=3.0)
    with torch.no_grad():
        # the rows of sample matching (the same draws), compared by covariance per context
        base, out, counterfactuals, generated, _ = losses_and_draws(
            model, adapter, latents, contexts, objective
        )
        real = latents.flatten(1)
        expected = 0.0
        for fake in (counterfactuals, generated):
            for rows in ([0, 2], [1, 4]):  # the contexts a and obs; b has one row
                a = real[rows] - real[rows].mean(0)
                b = fake[rows] - fake[rows].mean(0)
                own = 2 * ((a[0] @ a[1]) ** 2 + (b[0] @ b[1]) ** 2) / 2
                cross = sum((a[i] @ b[j]) ** 2 for i in range(2) for j in range(2))
                expected += 2 * (own - 2 * cross / 4) / (5 * real.shape[1])
    assert_close(out["covariance_matching"], expected, rtol=1e-4, atol=1e-5)
    assert out["covariance_matching"].item() != 0
    assert_close(out["loss"], base + 3.0 * expected, rtol=1e-4, atol=1e-4)


def test_sample_matching_by_hand(tiny_batch):
    model, adapter, latents, contexts = tiny_batch
    objective = dataclasses.replace(ELBO, sample_matching=2.0, num_projections=3)
    with torch.no_grad():
        # The same draws by hand, then the directions of each of the two distances.
        base, out, counterfactuals, generated, g = losses_and_draws(
            model, adapter, latents, contexts, objective
        )
        real = latents.flatten(1)
        expected = 0.0
        for fake in (counterfactuals, generated):
            directions = torch.randn(real.shape[1], 3, generator=g)
            directions = directions / directions.norm(dim=0)
            total = 0.0
            for rows in ([0, 2], [1, 4], [3]):  # the contexts a, obs and b
                r = (real[rows] @ directions).sort(dim=0).values
                f = (fake[rows] @ directions).sort(dim=0).values
                total += (r - f).pow(2).sum()
            expected += total / (5 * 3) * real.shape[1]
    assert_close(out["sample_matching"], expected, rtol=1e-4, atol=1e-5)
    assert out["sample_matching"].item() > 0
    assert_close(out["loss"], base + 2.0 * expected, rtol=1e-4, atol=1e-4)


def test_counterfactuals_decode_other_rows_noise(tiny_batch):
    """Under one context for every row, the counterfactuals are the batch's reconstructions
    from the posterior mean, shuffled: row i decodes row others[i]'s posterior mean."""
    _, adapter, latents, _ = tiny_batch
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        out = adapter(latents, "obs", generator=g, sample_matching=True)
        g = torch.Generator().manual_seed(4)
        torch.randn(out.mean.shape, generator=g)  # the posterior noise
        others = torch.randperm(5, generator=g)
        drawn = adapter.sample_noise(5, generator=g)
        assert_close(out.generated, adapter.latents_from_noise(drawn, "obs"))
    # not the identity for this seed, or decoding each row's own noise would pass too
    assert others.tolist() != [0, 1, 2, 3, 4]
    assert_close(out.mean_latents, adapter.latents_from_noise(out.mean, "obs"))
    assert_close(out.counterfactuals, out.mean_latents[others])
    assert not torch.allclose(out.counterfactuals, out.latents[others])  # not the samples
    plain = adapter(latents, "obs")
    assert plain.generated is None and plain.counterfactuals is None
    assert plain.mean_latents is None


def test_prior_matching_by_hand(tiny_batch):
    model, adapter, latents, contexts = tiny_batch
    objective = dataclasses.replace(ELBO, prior_matching=3.0, num_projections=4)
    with torch.no_grad():
        plain, out = plain_and_objective(model, latents, contexts, objective)
        # The same draws by hand: the posterior sample z, the prior draws, the directions.
        g = torch.Generator().manual_seed(1)
        z = adapter(latents, contexts, generator=g).noise
        mean, logvar = adapter.posterior(latents, contexts)
        prior = adapter.sample_noise(5, generator=g)
        directions = torch.randn(z.shape[1], 4, generator=g)
        directions = directions / directions.norm(dim=0)
    # z is the posterior sample the reconstruction decodes: mean + std * standard noise.
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    assert_close(z, mean + torch.exp(0.5 * logvar) * noise)
    total = 0.0
    for rows in ([0, 2], [1, 4], [3]):  # the contexts a, obs and b
        p = (z[rows] @ directions).sort(dim=0).values
        q = (prior[rows] @ directions).sort(dim=0).values
        total += (p - q).pow(2).sum()
    expected = total / (5 * 4) * z.shape[1]
    assert_close(out["prior_matching"], expected, rtol=1e-4, atol=1e-5)
    assert out["prior_matching"].item() > 0
    assert out["sample_matching"].item() == 0
    assert_close(out["reconstruction"], plain["reconstruction"])
    assert_close(out["loss"], plain["loss"] + 3.0 * expected, rtol=1e-4, atol=1e-4)
