import math

import pytest
import torch

from ctxadapter.layers import (
    BlockLinear,
    CausalLayer,
    ExogenousLayer,
    ExpressiveLayers,
    block_mask,
    block_readout,
    expressive_widths,
)

K, W = 4, 3


def masks(*contexts):
    """Context masks (U, K) from sets of concept indices."""
    out = torch.zeros(len(contexts), K, dtype=torch.bool)
    for row, context in enumerate(contexts):
        out[row, list(context)] = True
    return out


def block(matrix, i, j, w=W):
    return matrix[i * w : (i + 1) * w, j * w : (j + 1) * w]


def assert_every_block(weight, expected):
    """Block ``(i, j)`` of ``weight`` equals ``expected(i, j)`` for every ``i, j < K``."""
    for i in range(K):
        for j in range(K):
            torch.testing.assert_close(block(weight, i, j), expected(i, j))


CONTEXTS = [set(), {1}, {0, 2}, {0, 1, 3}, {0, 1, 2, 3}]


# ---------------------------------------------------------------- causal layer


def expected_causal_block(layer, context, i, j):
    """The block table of ``CausalLayer``'s docstring, written out case by case."""
    identity = torch.eye(W)
    b_obs = identity if i == j else block(layer.weight_obs, i, j)
    b_ivn = identity if i == j else block(layer.weight_ivn, i, j)
    if i in context:
        return b_ivn if j in context else torch.zeros(W, W)
    return b_ivn if j in context else b_obs


@pytest.mark.parametrize("context", CONTEXTS, ids=str)
def test_causal_block_table_every_cell(context):
    torch.manual_seed(0)
    layer = CausalLayer(K, W)
    weight = layer.effective_weight(masks(context))[0]
    assert_every_block(weight, lambda i, j: expected_causal_block(layer, context, i, j))


def test_causal_observational_is_identity_plus_off_diagonal_obs():
    torch.manual_seed(0)
    layer = CausalLayer(K, W)
    expected = torch.eye(K * W) + layer.weight_obs * (1 - block_mask(K, W, W))
    torch.testing.assert_close(layer.effective_weight(masks(set()))[0], expected)


@pytest.mark.parametrize("context", CONTEXTS, ids=str)
def test_causal_forward_is_effective_weight_times_eps_plus_bias(context):
    torch.manual_seed(1)
    layer = CausalLayer(K, W)
    eps = torch.randn(5, K * W)
    weight = layer.effective_weight(masks(context))[0]
    out = layer(eps, masks(context).expand(5, K))
    torch.testing.assert_close(out, eps @ weight.T + layer.bias)


def test_single_intervention_cuts_incoming_effects():
    torch.manual_seed(2)
    layer = CausalLayer(K, W)
    eps = torch.randn(6, K * W)
    out = layer(eps, masks({2}).expand(6, K))
    # c_k = eps_k + b_k under an intervention on k
    torch.testing.assert_close(
        out[:, 2 * W : 3 * W], eps[:, 2 * W : 3 * W] + layer.bias[2 * W : 3 * W]
    )
    # the other concepts receive eps_2 through the interventional weights
    expected_0 = (
        eps[:, :W]
        + eps[:, 2 * W : 3 * W] @ block(layer.weight_ivn, 0, 2).T
        + eps[:, W : 2 * W] @ block(layer.weight_obs, 0, 1).T
        + eps[:, 3 * W :] @ block(layer.weight_obs, 0, 3).T
        + layer.bias[:W]
    )
    torch.testing.assert_close(out[:, :W], expected_0)


def test_composition_keeps_effects_among_intervened_concepts():
    torch.manual_seed(3)
    layer = CausalLayer(K, W)
    eps = torch.randn(4, K * W)
    out = layer(eps, masks({0, 1}).expand(4, K))
    # c_0 = eps_0 + Bi[0, 1] eps_1 + b_0: cut from non-intervened sources, not from concept 1
    expected = eps[:, :W] + eps[:, W : 2 * W] @ block(layer.weight_ivn, 0, 1).T + layer.bias[:W]
    torch.testing.assert_close(out[:, :W], expected)


@pytest.mark.parametrize("context", CONTEXTS, ids=str)
def test_shared_effects_block_table(context):
    """effects="shared": the reference table with Bi = Bo, and no interventional weight."""
    torch.manual_seed(4)
    layer = CausalLayer(K, W, effects="shared")
    assert not hasattr(layer, "weight_ivn")
    assert [name for name, _ in layer.named_parameters()] == ["weight_obs", "bias"]
    weight = layer.effective_weight(masks(context))[0]

    def expected(i, j):
        if i in context and j not in context:
            return torch.zeros(W, W)
        return torch.eye(W) if i == j else block(layer.weight_obs, i, j)

    assert_every_block(weight, expected)
    eps = torch.randn(5, K * W)
    torch.testing.assert_close(layer(eps, masks(context).expand(5, K)), eps @ weight.T + layer.bias)


def test_shared_effects_counterfactual_moves_children_by_the_effect():
    """An edit under do(2) with shared effects: concept 0 moves by Bo[0, 2] times the move of
    eps_2, concept 2 loses its causes, and a concept that 2 does not affect stays put."""
    layer = CausalLayer(K, W, effects="shared")
    with torch.no_grad():
        layer.weight_obs.zero_()
        block(layer.weight_obs, 0, 2).copy_(0.5 * torch.eye(W))  # 2 -> 0
        block(layer.weight_obs, 2, 3).copy_(0.25 * torch.eye(W))  # 3 -> 2
        layer.bias.zero_()
    eps, eps_do = torch.ones(1, K * W), torch.ones(1, K * W)
    eps_do[:, 2 * W : 3 * W] = 3.0  # the intervened concept's new exogenous value
    before = layer(eps, masks(set()))
    after = layer(eps_do, masks({2}))
    torch.testing.assert_close(after[:, :W] - before[:, :W], torch.full((1, W), 0.5 * 2.0))
    torch.testing.assert_close(before[:, 2 * W : 3 * W], torch.full((1, W), 1.25))
    torch.testing.assert_close(after[:, 2 * W : 3 * W], torch.full((1, W), 3.0))
    torch.testing.assert_close(after[:, W : 2 * W], before[:, W : 2 * W])
    torch.testing.assert_close(after[:, 3 * W :], before[:, 3 * W :])


def test_unknown_causal_effects_is_refused():
    with pytest.raises(ValueError, match="effects must be one of .*'tied'"):
        CausalLayer(K, W, effects="tied")


def test_strict_composition_cuts_edges_among_intervened_concepts():
    torch.manual_seed(3)
    strict = CausalLayer(K, W, composition="strict")
    weight = strict.effective_weight(masks({0, 1, 3}))[0]
    for i in (0, 1, 3):
        for j in range(K):
            expected = torch.eye(W) if i == j else torch.zeros(W, W)
            torch.testing.assert_close(block(weight, i, j), expected)
    torch.testing.assert_close(block(weight, 2, 0), block(strict.weight_ivn, 2, 0))
    eps = torch.randn(3, K * W)
    out = strict(eps, masks({0, 1, 3}).expand(3, K))
    torch.testing.assert_close(out, eps @ weight.T + strict.bias)
    # single interventions and the observational context are unchanged
    reference = CausalLayer(K, W)
    reference.load_state_dict(strict.state_dict())
    for context in (set(), {2}):
        torch.testing.assert_close(
            strict.effective_weight(masks(context)), reference.effective_weight(masks(context))
        )


def test_causal_init_bounds():
    torch.manual_seed(0)
    layer = CausalLayer(6, 8)
    r = 1 / math.sqrt(5 * 8)
    for p in (layer.weight_obs, layer.weight_ivn, layer.bias):
        assert p.abs().max() <= r
        assert p.abs().max() > 0.9 * r
    assert CausalLayer(1, 4).weight_obs.abs().max() > 1 / math.sqrt(4)  # r = 1 when K = 1


def test_identity_diagonal_blocks_and_box_constraint_under_training():
    torch.manual_seed(0)
    layer = CausalLayer(K, W)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.5)
    eps = torch.randn(32, K * W)
    contexts = masks(*CONTEXTS)[torch.arange(32) % len(CONTEXTS)]
    for _ in range(5):
        optimizer.zero_grad()
        # pushes all entries up: off-diagonal ones pass 1 without the constraint
        (
            -layer(eps, contexts).sum() - 3 * layer.weight_obs.sum() + layer.weight_ivn.sum()
        ).backward()
        optimizer.step()
        layer.clamp_()
    off = 1 - block_mask(K, W, W)
    for p in (layer.weight_obs, layer.weight_ivn):
        assert p.min() >= 0 and p.max() <= 1
        assert (p * off).max() == 1 or (p * off).min() == 0  # the box was active
    for weight in layer.effective_weight(masks(*CONTEXTS)):
        for k in range(K):
            torch.testing.assert_close(block(weight, k, k), torch.eye(W), rtol=0, atol=0)


def test_block_readout_norm_and_mean():
    weight = torch.arange(16.0).reshape(4, 4)  # K = 2, blocks of 2 x 2
    means = block_readout(weight, 2, "mean")
    torch.testing.assert_close(means, torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    norms = block_readout(weight, 2, "norm")
    assert norms[0, 1] == pytest.approx(math.sqrt(2**2 + 3**2 + 6**2 + 7**2))


# ---------------------------------------------------------------- exogenous layer


def test_exogenous_observational_dense_and_block_option():
    torch.manual_seed(0)
    dense = ExogenousLayer(K, W)
    torch.testing.assert_close(dense.effective_weight(masks(set()))[0], dense.weight_obs)
    blocked = ExogenousLayer(K, W, observational_mixing="block")
    weight = blocked.effective_weight(masks(set()))[0]
    assert_every_block(
        weight, lambda i, j: block(blocked.weight_obs, i, j) if i == j else torch.zeros(W, W)
    )


@pytest.mark.parametrize("context", CONTEXTS[1:], ids=str)
def test_exogenous_interventional_blocks(context):
    torch.manual_seed(0)
    layer = ExogenousLayer(K, W)
    weight = layer.effective_weight(masks(context))[0]

    def expected(i, j):
        if i != j:
            return torch.zeros(W, W)
        return block(layer.weight_ivn if i in context else layer.weight_obs, i, i)

    assert_every_block(weight, expected)


@pytest.mark.parametrize("mixing", ["dense", "block"])
def test_exogenous_forward_is_gelu_of_effective_weight(mixing):
    torch.manual_seed(0)
    layer = ExogenousLayer(K, W, observational_mixing=mixing)
    z = torch.randn(len(CONTEXTS), K * W)
    out = layer(z, masks(*CONTEXTS))
    weights = layer.effective_weight(masks(*CONTEXTS))
    expected = torch.nn.functional.gelu(torch.einsum("nij,nj->ni", weights, z) + layer.bias)
    torch.testing.assert_close(out, expected)
    # the blockwise forward also gives the gradients of the effective-weight formulation
    probe = torch.randn_like(out)
    grads = torch.autograd.grad((out * probe).sum(), [layer.weight_obs, layer.weight_ivn])
    expected_grads = torch.autograd.grad(
        (expected * probe).sum(), [layer.weight_obs, layer.weight_ivn]
    )
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("mixing", ["dense", "block"])
def test_exogenous_interventional_bias(mixing):
    torch.manual_seed(0)
    layer = ExogenousLayer(K, W, observational_mixing=mixing, exogenous_bias="interventional")
    shared = ExogenousLayer(K, W, observational_mixing=mixing)
    shared.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "bias_ivn"})
    assert "bias_ivn" not in shared.state_dict()
    z, contexts = torch.randn(len(CONTEXTS), K * W), masks(*CONTEXTS)
    torch.testing.assert_close(layer(z, contexts), shared(z, contexts))  # a copy at first
    with torch.no_grad():
        layer.bias_ivn.add_(1.0)
    # Block k of row n takes bias_ivn exactly when concept k is intervened on in that row.
    expected_bias = torch.stack(
        [
            torch.cat(
                [(layer.bias_ivn if k in c else layer.bias)[k * W : (k + 1) * W] for k in range(K)]
            )
            for c in CONTEXTS
        ]
    )
    torch.testing.assert_close(layer.effective_bias(contexts), expected_bias)
    weights = layer.effective_weight(contexts)
    expected = torch.nn.functional.gelu(torch.einsum("nij,nj->ni", weights, z) + expected_bias)
    torch.testing.assert_close(layer(z, contexts), expected)
    # At z = 0 an intervention now changes the output; with a shared bias it cannot.
    zero, single = torch.zeros(2, K * W), masks(set(), {1})
    assert not torch.allclose(layer(zero, single)[0], layer(zero, single)[1])
    torch.testing.assert_close(shared(zero, single)[0], shared(zero, single)[1])


def test_exogenous_init_bounds():
    torch.manual_seed(0)
    layer = ExogenousLayer(6, 32)
    for p in (layer.weight_obs, layer.weight_ivn, layer.bias):
        assert p.abs().max() <= 1 / math.sqrt(32)
        assert p.abs().max() > 0.9 / math.sqrt(32)


def test_option_values_are_checked():
    with pytest.raises(ValueError, match="'sparse'"):
        ExogenousLayer(K, W, observational_mixing="sparse")
    with pytest.raises(ValueError, match="'loose'"):
        CausalLayer(K, W, composition="loose")
    with pytest.raises(ValueError, match="'per_concept'"):
        ExogenousLayer(K, W, exogenous_bias="per_concept")


# ---------------------------------------------------------------- expressive layers


def test_expressive_widths():
    assert expressive_widths(32, 8, 2) == [32, 8]
    assert expressive_widths(32, 8, 4) == [32, 24, 16, 8]
    assert expressive_widths(16, 32, 4) == [16, 21, 26, 32]
    assert expressive_widths(8, 8, 1) == [8]
    with pytest.raises(ValueError, match="must equal concept_width"):
        expressive_widths(32, 8, 1)
    with pytest.raises(ValueError, match="got 0"):
        expressive_widths(32, 8, 0)


@pytest.mark.parametrize(
    "depth, linear_shapes",
    [
        (1, []),
        (2, [(4 * 8, 4 * 32)]),
        (4, [(4 * 24, 4 * 32), (4 * 16, 4 * 24), (4 * 8, 4 * 16)]),
    ],
)
def test_expressive_layer_structure(depth, linear_shapes):
    in_width = 8 if depth == 1 else 32
    layers = ExpressiveLayers(4, in_width, 8, depth)
    linears = [m for m in layers if isinstance(m, BlockLinear)]
    assert [tuple(m.weight.shape) for m in linears] == linear_shapes
    norms = [m for m in layers if isinstance(m, torch.nn.BatchNorm1d)]
    assert [m.num_features for m in norms] == [shape[0] for shape in linear_shapes]
    assert sum(isinstance(m, torch.nn.GELU) for m in layers) == len(linear_shapes)
    x = torch.randn(5, 4 * in_width)
    assert layers(x).shape == (5, 4 * 8)
    if depth == 1:
        torch.testing.assert_close(layers(x), x)


def test_expressive_layers_are_per_concept():
    torch.manual_seed(0)
    layers = ExpressiveLayers(3, 6, 4, 3).eval()  # eval: BatchNorm does not mix samples
    x = torch.randn(2, 18)
    jacobian = torch.autograd.functional.jacobian(lambda v: layers(v), x[:1])[0, :, 0, :]
    for i in range(3):
        for j in range(3):
            part = jacobian[i * 4 : (i + 1) * 4, j * 6 : (j + 1) * 6]
            assert (part.abs().sum() > 0) == (i == j)


def test_block_linear_init_bounds():
    torch.manual_seed(0)
    layer = BlockLinear(3, 32, 24)
    for p in (layer.weight, layer.bias):
        assert p.abs().max() <= 1 / math.sqrt(32)
        assert p.abs().max() > 0.9 / math.sqrt(32)


# ---------------------------------------------------------------- mixed batches


def test_mixed_batch_equals_per_context_computation():
    torch.manual_seed(0)
    exogenous, causal = ExogenousLayer(K, W), CausalLayer(K, W)
    contexts = masks(*CONTEXTS)[torch.tensor([0, 3, 1, 1, 4, 2, 0, 3, 2])]
    z = torch.randn(len(contexts), K * W)
    eps = torch.randn(len(contexts), K * W)
    mixed_exo, mixed_causal = exogenous(z, contexts), causal(eps, contexts)
    for context in CONTEXTS:
        rows = (contexts == masks(context)).all(dim=1)
        torch.testing.assert_close(mixed_exo[rows], exogenous(z[rows], contexts[rows]))
        torch.testing.assert_close(mixed_causal[rows], causal(eps[rows], contexts[rows]))
