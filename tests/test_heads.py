"""The posterior and latent heads (ctxadapter.heads): shapes, sizes, the automatic choice."""

import math

import pytest
import torch

from ctxadapter import CtxAdapter
from ctxadapter.heads import (
    AUTO_CONV_SIZE,
    CONV_CHANNELS,
    latent_head,
    patch_size,
    posterior_head,
    resolve_heads,
)


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_auto_heads_are_spatial_only_for_large_latents():
    assert resolve_heads("auto", (4, 8, 8)) == "additive"  # quad: 256 values
    assert resolve_heads("auto", (4, 16, 16)) == "additive"
    assert resolve_heads("auto", (4, 32, 31)) == "additive"  # one column short of AUTO_CONV_SIZE
    assert resolve_heads("auto", (4, 32, 32)) == "conv"  # exactly AUTO_CONV_SIZE
    assert math.prod((4, 32, 32)) == AUTO_CONV_SIZE
    assert resolve_heads("auto", (4, 64, 64)) == "conv"
    assert resolve_heads("linear", (16, 64, 64)) == "linear"
    with pytest.raises(ValueError, match="heads must be one of"):
        resolve_heads("transformer", (4, 8, 8))


@pytest.mark.parametrize("kind", ["linear", "mlp", "conv", "additive"])
@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 32, 32), (16, 16, 12), (3, 5, 7)])
def test_heads_map_flat_latents_both_ways(kind, shape):
    torch.manual_seed(0)
    size = math.prod(shape)
    post = posterior_head(kind, shape, 32, 10)
    head = latent_head(kind, 6, 32, shape)
    assert post(torch.randn(3, size)).shape == (3, 10)
    assert head(torch.randn(3, 6)).shape == (3, size)


def test_conv_heads_hardly_grow_with_resolution():
    def size(kind, shape):
        post = posterior_head(kind, shape, 256, 384)
        return parameters(post) + parameters(latent_head(kind, 48, 256, shape))

    small, large = size("conv", (4, 32, 32)), size("conv", (4, 128, 128))
    assert large < 1.1 * small  # 16 times the latent values
    assert size("linear", (4, 128, 128)) > 15 * size("linear", (4, 32, 32))
    assert size("conv", (4, 64, 64)) < size("linear", (4, 64, 64)) / 5


@pytest.mark.parametrize(
    "shape, patch", [((4, 8, 8), 1), ((4, 32, 32), 4), ((4, 64, 64), 8), ((16, 48, 64), 8)]
)
def test_patches_leave_a_grid_of_at_most_eight(shape, patch):
    assert patch_size(shape) == patch
    post = posterior_head("conv", shape, 8, 2)
    embed = post.convs[0]
    assert embed.kernel_size == embed.stride == (patch, patch)
    assert post.mlp[0].in_features == CONV_CHANNELS * (shape[1] // patch) * (shape[2] // patch)


def test_conv_posterior_head_sees_space():
    """The same spot at two places gives two different posteriors: the conv head keeps
    where things are."""
    torch.manual_seed(0)
    post = posterior_head("conv", (4, 16, 16), 32, 8)
    latents = torch.zeros(2, 4, 16, 16)
    latents[0, :, 2, 2] = 1
    latents[1, :, 12, 12] = 1
    out = post(latents.flatten(1))
    assert not torch.allclose(out[0], out[1])


def test_an_adapter_records_the_head_chosen():
    adapter = CtxAdapter(["a", "b"], [4, 64, 64], heads="auto", head_width=16)
    assert adapter.config["heads"] == "conv"
    z = adapter.sample_noise(2)
    with torch.no_grad():
        assert adapter.latents_from_noise(z, "a").shape == (2, 4, 64, 64)
        mean, logvar = adapter.posterior(torch.randn(2, 4, 64, 64))
    assert mean.shape == logvar.shape == (2, adapter.noise_size)


def test_additive_latent_head_is_a_sum_over_blocks():
    torch.manual_seed(0)
    head = latent_head("additive", 3 * 4, 16, (2, 2, 2), num_blocks=3)
    concepts = torch.randn(5, 12)

    def with_block(k: int, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(5, 12)
        out[:, 4 * k : 4 * (k + 1)] = values
        return out

    with torch.no_grad():
        total = head(concepts)
        parts = [head(with_block(k, concepts[:, 4 * k : 4 * (k + 1)])) for k in range(3)]
        empty = head(torch.zeros(5, 12))
    assert total.shape == (5, 8)
    # f(c) = sum_k g_k(c_k) + bias, so f(c) = sum_k f(c_k alone) - 2 f(0)
    torch.testing.assert_close(total, sum(parts) - 2 * empty)
    # changing one block changes the output by the same amount whatever the other blocks hold
    other = concepts.clone()
    other[:, 4:] = torch.randn(5, 8)
    moved = with_block(0, torch.ones(5, 4))
    with torch.no_grad():
        torch.testing.assert_close(
            head(concepts + moved) - head(concepts), head(other + moved) - head(other)
        )
