"""``CtxAdapter.concept_graph(readout="rendered")`` on an adapter whose every layer is set by
hand, so that each entry can be worked out on paper.

The adapter: concepts ``a, b, c`` of width 8, no expressive MLP (``expressive_depth=1``), a
linear latent head that copies block ``a`` to latent entries 0-7, ``b`` to 8-15 and ``c`` to
16-23. The exogenous layer adds 50 to every block, where GELU is the identity (in float32), so
``eps_a = sigma * z_a + 50``, ``eps_b = sigma_b * z_b + 50`` and ``eps_c`` is the constant 50.
An intervention on ``a`` adds ``shift`` to ``a``'s bias: ``eps_a' = eps_a + shift``; one on
``b`` or ``c`` leaves their noise as it is. The causal layer copies ``a`` into ``b``
(``c_b = eps_b + copy * eps_a``), nothing else.

By hand, with ``d`` the shift, per dimension (8 of them, which cancel):

- ``do(a)`` moves ``a`` by ``d``, where two random draws of ``a`` differ by ``2 sigma^2`` on
  average: ``move[a, a] = d^2 / (2 sigma^2)``;
- it moves ``b`` by ``copy * d``, where ``b`` varies by ``2 (sigma_b^2 + copy^2 sigma^2)``:
  ``move[b, a] = copy^2 d^2 / (2 (sigma_b^2 + copy^2 sigma^2))``;
- so entry ``(b, a) = move[b, a] / move[a, a] = copy^2 sigma^2 / (sigma_b^2 + copy^2
  sigma^2)``, the share of ``b``'s variance that comes from ``a``, whatever the shift;
- ``do(b)`` cuts the copy, so it moves ``b`` (column ``b`` is ``1`` on the diagonal) and
  nothing else; ``c`` never varies (its row is 0), and ``do(c)`` moves nothing, not even
  ``c`` (its column is 0).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ctxadapter import CtxAdapter

WIDTH = 8


def hand_set_adapter(
    sigma: float = 1.0,
    sigma_b: float = 1.0,
    shift: float = 1.0,
    copy: float = 0.5,
    composition: str = "strict",
) -> CtxAdapter:
    adapter = CtxAdapter(
        ["a", "b", "c"],
        [4, 4, 4],
        exogenous_width=WIDTH,
        concept_width=WIDTH,
        expressive_depth=1,
        heads="linear",
        observational_mixing="block",
        exogenous_bias="interventional",
        causal_effects="shared",
        composition=composition,
    )
    eye = torch.eye(WIDTH)
    a, b = slice(0, WIDTH), slice(WIDTH, 2 * WIDTH)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.zero_()
        exogenous = adapter.exogenous
        for weight in (exogenous.weight_obs, exogenous.weight_ivn):
            weight[a, a] = sigma * eye
            weight[b, b] = sigma_b * eye
        exogenous.bias.fill_(50.0)
        exogenous.bias_ivn.fill_(50.0)
        exogenous.bias_ivn[a] += shift
        adapter.causal.weight_obs[b, a] = copy * eye
        adapter.latent_head.weight[: 3 * WIDTH] = torch.eye(3 * WIDTH)
    return adapter


def test_rendered_graph_by_hand():
    graph = hand_set_adapter(sigma=1.0, sigma_b=1.0, copy=0.5).concept_graph(num_samples=4096)
    # (b, a): 0.25 / (1 + 0.25) = 0.2, up to the sampling error of the two spreads (about 1%)
    assert graph[1, 0].item() == pytest.approx(0.2, rel=0.05)
    expected = torch.tensor([[1.0, 0.0, 0.0], [graph[1, 0].item(), 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert_close(graph, expected, rtol=1e-5, atol=0)
    # b made of a alone: b moves one standard deviation for each of a's (exactly: same draws)
    alone = hand_set_adapter(sigma_b=0.0).concept_graph()
    assert alone[1, 0].item() == pytest.approx(1.0, rel=1e-4)
    # twice a's weight in b: 1 / (1 + 1) = 0.5
    assert hand_set_adapter(copy=1.0).concept_graph(num_samples=4096)[1, 0].item() == (
        pytest.approx(0.5, rel=0.05)
    )


def test_rendered_graph_does_not_depend_on_the_interventions_size_nor_the_heads_scale():
    graph = hand_set_adapter(shift=1.0).concept_graph()
    assert_close(hand_set_adapter(shift=3.0).concept_graph(), graph, rtol=1e-4, atol=0)
    louder = hand_set_adapter()
    with torch.no_grad():
        louder.latent_head.weight.mul_(3.0)
    assert_close(louder.concept_graph(), graph, rtol=1e-4, atol=0)


def test_rendered_graph_is_fixed_by_its_seed_and_keeps_the_mode():
    adapter = hand_set_adapter().train()
    graph = adapter.concept_graph(seed=3)
    assert adapter.training
    assert_close(adapter.concept_graph(seed=3), graph, rtol=0, atol=0)
    assert not torch.equal(adapter.concept_graph(seed=4), graph)


def test_rendered_graph_under_an_intervention_reads_what_one_more_adds():
    adapter = hand_set_adapter()
    # a is already intervened on: its column is 0; do(a, b) cuts the copy of a in b (a
    # composition cuts every effect into its concepts), so adding b to do(a) moves b, by the
    # copy it loses, and nothing else: b's column is (0, 1, 0)
    expected = torch.zeros(3, 3)
    expected[1, 1] = 1.0
    assert_close(adapter.concept_graph("a"), expected, rtol=0, atol=1e-6)
    # under do(b) the copy is cut and b's column is 0; do(a, b) keeps it cut, so adding a
    # moves only a
    expected = torch.zeros(3, 3)
    expected[0, 0] = 1.0
    assert_close(adapter.concept_graph("b"), expected, rtol=0, atol=1e-6)


def test_rendered_graph_under_the_reference_composition():
    adapter = hand_set_adapter(composition="reference")
    # the reference composition do(a, b) keeps the copy of a in b (jointly intervened
    # concepts still receive each other's effects), and b's own exogenous map is the same in
    # every context here, so adding b to do(a) moves nothing: every column is 0
    assert (adapter.concept_graph("a") == 0).all()
    # under do(b) the copy is cut and b's column is 0; adding a brings the copy back, so b
    # jumps by copy * (eps_a + d), about 25 per dimension, where it varied by sigma_b alone:
    # move[b, a] = copy^2 (sigma^2 + (50 + d)^2) / (2 sigma_b^2) = 325.25 against
    # move[a, a] = 0.5
    under_b = adapter.concept_graph("b", num_samples=4096)
    assert under_b[1, 0].item() == pytest.approx(650.5, rel=0.05)
    expected = torch.zeros(3, 3)
    expected[0, 0], expected[1, 0] = 1.0, under_b[1, 0]
    assert_close(under_b, expected, rtol=1e-5, atol=0)


def test_rendered_graph_rejects_bad_arguments():
    adapter = hand_set_adapter()
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2, got 1"):
        adapter.concept_graph(num_samples=1)
    with pytest.raises(ValueError, match="readout must be one of"):
        adapter.concept_graph(readout="total")
