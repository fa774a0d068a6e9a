"""``CtxAdapter.concept_graph(readout="rendered")`` on an adapter whose every layer is set by
hand, so that each entry can be worked out on paper.

The adapter: concepts ``a, b, c`` of width 8, no expressive MLP (``expressive_depth=1``), a
linear latent head that copies block ``a`` to latent entries 0-7, ``b`` to 8-15 and ``c`` to
16-23. The exogenous layer adds 50 to every block, where GELU is the identity (in float32), so
``eps_a = sigma * z_a + 50``, and ``eps_b``, ``eps_c`` are the constant 50. An intervention on
``a`` adds ``shift`` to ``a``'s bias: ``eps_a' = eps_a + shift``. The causal layer copies ``a``
into ``b`` (``c_b = eps_b + copy * eps_a``), nothing else.

So, by hand, with ``d`` the shift and ``sigma`` the noise scale per dimension:

- ``(a, a)``: the intervention moves ``a`` by ``d`` in each of 8 dimensions (``8 d^2``) where
  two random draws differ by ``2 * 8 sigma^2`` on average: ``d^2 / (2 sigma^2)``;
- ``(b, a)``: ``b`` moves by ``copy * d`` and varies by ``copy`` times ``a``'s variation: the
  same ratio, whatever ``copy``;
- ``(b, b)``: an intervention on ``b`` cuts its incoming effects, so ``b`` loses
  ``copy * eps_a``: ``8 copy^2 (50^2 + sigma^2)`` over ``b``'s variation ``2 * 8 copy^2
  sigma^2``, that is ``(50^2 + sigma^2) / (2 sigma^2)``;
- ``c`` never varies (its row is 0), and an intervention on ``c`` changes nothing (its column
  is 0), nor does one on ``b`` to ``a``.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ctxadapter import CtxAdapter

WIDTH = 8


def hand_set_adapter(sigma: float = 1.0, shift: float = 1.0, copy: float = 0.5) -> CtxAdapter:
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
    )
    eye = torch.eye(WIDTH)
    a, b = slice(0, WIDTH), slice(WIDTH, 2 * WIDTH)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.zero_()
        exogenous = adapter.exogenous
        exogenous.weight_obs[a, a] = sigma * eye
        exogenous.weight_ivn[a, a] = sigma * eye
        exogenous.bias.fill_(50.0)
        exogenous.bias_ivn.fill_(50.0)
        exogenous.bias_ivn[a] += shift
        adapter.causal.weight_obs[b, a] = copy * eye
        adapter.latent_head.weight[: 3 * WIDTH] = torch.eye(3 * WIDTH)
    return adapter


def test_rendered_graph_by_hand():
    graph = hand_set_adapter(sigma=1.0, shift=1.0).concept_graph(num_samples=4096)
    # (a, a): d^2 / (2 sigma^2) = 0.5, up to the sampling error of the spread (about 1%)
    assert graph[0, 0].item() == pytest.approx(0.5, rel=0.05)
    # b copies a: moved as much as a, relative to its own variation (exactly: same draws)
    assert_close(graph[1, 0], graph[0, 0], rtol=1e-4, atol=0)
    # do(b) cuts the copy of a, which is about 50 per dimension
    assert graph[1, 1].item() == pytest.approx((50**2 + 1) / 2, rel=0.05)
    expected_zero = torch.ones(3, 3, dtype=torch.bool)
    expected_zero[:2, 0] = expected_zero[1, 1] = False
    assert (graph[expected_zero] == 0).all(), graph


def test_rendered_graph_scales_with_the_shift_and_not_with_the_copy_or_the_head():
    graph = hand_set_adapter(shift=1.0).concept_graph()
    doubled = hand_set_adapter(shift=2.0).concept_graph()
    assert_close(doubled[:, 0], 4 * graph[:, 0], rtol=1e-4, atol=0)  # column a: d^2
    assert_close(doubled[:, 1:], graph[:, 1:], rtol=1e-4, atol=0)  # do(b) does not shift
    assert_close(hand_set_adapter(copy=0.9).concept_graph(), graph, rtol=1e-4, atol=0)
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
    observational = adapter.concept_graph("obs")
    # a is already intervened on: its column is 0; and in the reference composition do(a, b)
    # keeps the effect of a on b (jointly intervened concepts still receive each other's), so
    # adding b to do(a) moves nothing either
    assert (adapter.concept_graph("a") == 0).all()
    # under do(b) a no longer reaches b: nothing moves b, and a still moves itself
    under_b = adapter.concept_graph("b")
    assert (under_b[1:] == 0).all() and (under_b[:, 1:] == 0).all()
    assert_close(under_b[0, 0], observational[0, 0], rtol=1e-4, atol=0)


def test_rendered_graph_rejects_bad_arguments():
    adapter = hand_set_adapter()
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2, got 1"):
        adapter.concept_graph(num_samples=1)
    with pytest.raises(ValueError, match="readout must be one of"):
        adapter.concept_graph(readout="total")
