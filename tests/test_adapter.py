"""CtxAdapter: shapes, context semantics, readouts, box constraint, penalty, saving and loading.

Everything here runs on the adapter alone (no autoencoder): latents are random tensors of the
adapter's ``latent_shape``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch.testing import assert_close

from ctxadapter import CtxAdapter
from ctxadapter.config import AdapterConfig
from ctxadapter.contexts import context_mask

CONCEPTS = ["a", "b", "c"]
K = len(CONCEPTS)
W_IN, W_OUT = 32, 8
LATENT_SHAPE = [4, 4, 4]
ADAPTER_FILES = {"config.json", "model.safetensors", "README.md"}


def make_adapter(seed: int = 0, **kwargs) -> CtxAdapter:
    """The paper's adapter (linear heads, dense observational mixing, a shared exogenous bias:
    what these tests were written for) unless ``kwargs`` say otherwise."""
    torch.manual_seed(seed)
    options = AdapterConfig.paper().to_dict() | dict(
        concepts=CONCEPTS,
        latent_shape=LATENT_SHAPE,
        exogenous_width=W_IN,
        concept_width=W_OUT,
        expressive_depth=2,
    )
    return CtxAdapter(**{**options, **kwargs})


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def latents(n: int = 4, seed: int = 0) -> torch.Tensor:
    return randn(n, *LATENT_SHAPE, seed=seed)


def noise(n: int = 4, seed: int = 1) -> torch.Tensor:
    return randn(n, K * W_IN, seed=seed)


def block(matrix: torch.Tensor, i: int, j: int, width: int = W_OUT) -> torch.Tensor:
    return matrix[i * width : (i + 1) * width, j * width : (j + 1) * width]


def warm_up_batchnorm(adapter: CtxAdapter, steps: int = 3) -> None:
    """A few training-mode forwards so the BatchNorm running statistics move off their init."""
    adapter.train()
    with torch.no_grad():
        for step in range(steps):
            adapter.concepts_from_noise(noise(16, seed=10 + step) * 3 + 1, "obs")
    adapter.eval()


def outputs(adapter: CtxAdapter) -> dict[str, torch.Tensor]:
    """Deterministic (eval-mode) outputs that cover every parameter and buffer."""
    with torch.no_grad():
        mean, logvar = adapter.posterior(latents())
        z = noise()
        mixed = ["obs", "a", "b+c", "a+b+c"]
        return dict(
            mean=mean,
            logvar=logvar,
            concepts=adapter.concepts_from_noise(z, mixed),
            latents=adapter.latents_from_noise(z, mixed),
            log_scale=adapter.latent_log_scale.detach().clone(),
        )


def assert_same_outputs(left: CtxAdapter, right: CtxAdapter) -> None:
    expected, actual = outputs(left), outputs(right)
    for key in expected:
        assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------------- shapes


def test_public_shapes_and_submodules():
    adapter = make_adapter()
    mean, logvar = adapter.posterior(latents(5))
    assert mean.shape == logvar.shape == (5, K * W_IN)
    z = noise(5)
    assert adapter.concepts_from_noise(z, "obs").shape == (5, K * W_OUT)
    assert adapter.latents_from_noise(z, "a+b").shape == (5, *LATENT_SHAPE)
    out = adapter(latents(5), "c", generator=torch.Generator().manual_seed(0))
    assert out.latents.shape == (5, *LATENT_SHAPE)
    assert out.mean.shape == out.logvar.shape == (5, K * W_IN)
    for name in ("exogenous", "causal"):
        params = dict(getattr(adapter, name).named_parameters())
        assert {"weight_obs", "weight_ivn", "bias"} <= set(params), name
    size_in, size_out = K * W_IN, K * W_OUT
    assert (
        adapter.exogenous.weight_obs.shape
        == adapter.exogenous.weight_ivn.shape
        == (size_in, size_in)
    )
    assert (
        adapter.causal.weight_obs.shape == adapter.causal.weight_ivn.shape == (size_out, size_out)
    )
    assert isinstance(adapter.expressive, torch.nn.Module)
    assert adapter.sample_noise(6, generator=torch.Generator().manual_seed(0)).shape == (
        6,
        K * W_IN,
    )


def test_the_posterior_reads_the_context_when_asked():
    """Linear heads on a 1-value latent, one noise value per concept: the posterior mean is
    ``W [latent, mask_a, mask_b] + bias``; with the latent's weight 0 and the mask's the
    identity, it is the context mask itself."""
    adapter = CtxAdapter(["a", "b"], [1, 1, 1], heads="linear", exogenous_width=1)
    head = adapter.posterior_head
    assert head.weight.shape == (4, 3)  # (mean, logvar) of 2 noise values <- latent + 2 bits
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 1] = head.weight[1, 2] = 1.0
    values = torch.randn(4, 1, 1, 1)
    mean, logvar = adapter.posterior(values, ["obs", "a", "b", "a+b"])
    assert_close(mean, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert_close(logvar, torch.zeros(4, 2))
    assert_close(adapter.posterior(values)[0], torch.zeros(4, 2))  # default: obs
    # The paper's posterior reads the latent only: the context changes nothing.
    paper = CtxAdapter(["a", "b"], [1, 1, 1], heads="linear", posterior_context=False)
    assert paper.posterior_head.weight.shape[1] == 1
    assert_close(paper.posterior(values, "a+b")[0], paper.posterior(values, "obs")[0])
    # A pooled adapter sees every image as observational.
    pooled = CtxAdapter(["a", "b"], [1, 1, 1], heads="linear", exogenous_width=1, pooled=True)
    pooled.posterior_head.load_state_dict(head.state_dict())
    assert_close(pooled.posterior(values, "a+b")[0], torch.zeros(4, 2))


@pytest.mark.parametrize("heads", ["mlp", "conv", "additive"])
def test_every_head_kind_reads_the_context(heads):
    adapter = CtxAdapter(["a", "b"], [4, 16, 16], heads=heads, head_width=8).eval()
    values = torch.randn(3, 4, 16, 16)
    obs, a = adapter.posterior(values, "obs")[0], adapter.posterior(values, "a")[0]
    assert obs.shape == a.shape == (3, adapter.noise_size)
    assert not torch.allclose(obs, a)


def test_wrong_latent_or_noise_shape_is_rejected():
    adapter = make_adapter()
    with pytest.raises(ValueError, match=r"\(N, 4, 4, 4\)"):
        adapter.posterior(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match=str(K * W_IN)):
        adapter.concepts_from_noise(torch.zeros(2, K * W_IN + 1), "obs")


# ---------------------------------------------------------------------------------- contexts


def test_contexts_change_the_output():
    """The premise of the context tests below: the context is not ignored by default."""
    adapter = make_adapter().eval()
    z = noise()
    with torch.no_grad():
        obs = adapter.latents_from_noise(z, "obs")
        for context in ("a", "b", "a+b", "a+b+c"):
            assert not torch.allclose(obs, adapter.latents_from_noise(z, context)), context


def test_pooled_ignores_contexts():
    pooled = make_adapter(pooled=True).eval()
    reference = make_adapter(pooled=False).eval()
    reference.load_state_dict(pooled.state_dict())
    z = noise()
    with torch.no_grad():
        observational = reference.latents_from_noise(z, "obs")
        assert not torch.allclose(observational, reference.latents_from_noise(z, "a"))
        for context in ("obs", "a", "b+c", "a+b+c", ["obs", "a", "b", "a+c"]):
            assert_close(pooled.latents_from_noise(z, context), observational, rtol=0, atol=0)
            assert_close(
                pooled.concepts_from_noise(z, context),
                reference.concepts_from_noise(z, "obs"),
                rtol=0,
                atol=0,
            )
    assert_close(
        pooled.concept_graph("a", readout="direct"), reference.concept_graph(readout="direct")
    )
    # no context changes anything, so no intervention moves any concept
    assert (pooled.concept_graph(num_samples=64) == 0).all()
    assert_close(pooled.grouped_weight("a+b"), reference.grouped_weight("obs"))


@pytest.mark.parametrize(
    "kwargs", [{}, {"observational_mixing": "block"}, {"composition": "strict"}]
)
def test_mixed_context_batch_equals_per_context(kwargs):
    adapter = make_adapter(**kwargs)
    warm_up_batchnorm(adapter)
    contexts = ["obs", "a", "b", "a+b", "c", "obs", "a+b+c", "b", "a+b", "b+c"]
    z = noise(len(contexts), seed=3)
    with torch.no_grad():
        mixed_concepts = adapter.concepts_from_noise(z, contexts)
        mixed_latents = adapter.latents_from_noise(z, contexts)
        for context in set(contexts):
            rows = [n for n, c in enumerate(contexts) if c == context]
            alone = adapter.concepts_from_noise(z[rows], context)
            assert_close(mixed_concepts[rows], alone, msg=context)
            assert_close(
                mixed_latents[rows], adapter.latents_from_noise(z[rows], context), msg=context
            )
    # Per-sample names, a list per sample and a prebuilt mask are the same contexts.
    mask = context_mask(contexts, CONCEPTS, len(contexts))
    as_lists = [[] if c == "obs" else c.split("+") for c in contexts]
    with torch.no_grad():
        assert_close(adapter.concepts_from_noise(z, mask), mixed_concepts)
        assert_close(adapter.concepts_from_noise(z, as_lists), mixed_concepts)


# ---------------------------------------------------------------------------------- readouts


def _block_means(weight: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[block(weight, i, j).mean().item() for j in range(K)] for i in range(K)])


def _block_norms(weight: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[block(weight, i, j).norm().item() for j in range(K)] for i in range(K)])


@pytest.mark.parametrize("context", ["obs", "a", "b", "c", "a+b", "a+b+c"])
def test_readouts_match_effective_weight(context):
    adapter = make_adapter()
    mask = context_mask(context, CONCEPTS, 1)
    with torch.no_grad():
        weight = adapter.causal.effective_weight(mask)[0]
    graph, grouped = adapter.block_means(context), adapter.grouped_weight(context)
    assert graph.shape == grouped.shape == (K, K)
    assert_close(adapter.causal_weight(context), weight)
    assert_close(graph, _block_means(weight))
    assert_close(grouped, _block_norms(weight))
    assert_close(torch.diagonal(graph), torch.full((K,), 1 / W_OUT))
    assert_close(torch.diagonal(grouped), torch.full((K,), math.sqrt(W_OUT)))


@pytest.mark.parametrize("k", range(K))
def test_single_intervention_cuts_incoming_edges(k):
    adapter = make_adapter()
    with torch.no_grad():  # strictly positive weights, so a cut edge is visible as a zero
        adapter.causal.weight_obs.uniform_(0.1, 0.9)
        adapter.causal.weight_ivn.uniform_(0.1, 0.9)
    name = CONCEPTS[k]
    graph, grouped = adapter.block_means(name), adapter.grouped_weight(name)
    weight_obs, weight_ivn = adapter.causal.weight_obs, adapter.causal.weight_ivn
    observational = adapter.block_means("obs")
    for i in range(K):
        for j in range(K):
            if i == j:
                assert graph[i, j].item() == pytest.approx(1 / W_OUT)
            elif i == k:  # incoming edges of the intervened concept are cut
                assert graph[i, j].item() == 0
                assert grouped[i, j].item() == 0
            elif j == k:  # its outgoing edges switch to the interventional weights
                assert graph[i, j].item() == pytest.approx(block(weight_ivn, i, j).mean().item())
                assert grouped[i, j].item() == pytest.approx(block(weight_ivn, i, j).norm().item())
            else:  # everything else stays observational
                assert graph[i, j].item() == pytest.approx(block(weight_obs, i, j).mean().item())
                assert graph[i, j].item() == pytest.approx(observational[i, j].item())
    assert (observational > 0).all()


def test_concept_graph_is_the_variance_share_of_each_source():
    adapter = make_adapter()
    with torch.no_grad():
        for weight in (adapter.causal.weight_obs, adapter.causal.weight_ivn):
            weight.zero_()
        adapter.causal.weight_obs[W_OUT : 2 * W_OUT, :W_OUT] = 0.5  # a -> b, every entry 0.5
        adapter.causal.weight_ivn[2 * W_OUT :, W_OUT : 2 * W_OUT] = 0.25  # b -> c
    # row b: the identity block has ||I||^2 = 8, the block from a 64 * 0.25 = 16: shares 1/3, 2/3
    expected = torch.tensor([[1.0, 0, 0], [2 / 3, 1 / 3, 0], [0, 0, 1.0]])
    assert_close(adapter.concept_graph(readout="direct"), expected)
    # under do(b) the observational effect a -> b is cut and b -> c uses Bi:
    # row c of Bi: 8 from the identity, 64 / 16 = 4 from b
    expected_under_b = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1 / 3, 2 / 3]])
    assert_close(adapter.concept_graph("b", readout="direct"), expected_under_b)
    with pytest.raises(ValueError, match="readout must be one of"):
        adapter.concept_graph(readout="direkt")


def test_readouts_reject_bad_context():
    adapter = make_adapter()
    with pytest.raises(ValueError, match="nope"):
        adapter.concept_graph("nope")
    with pytest.raises(ValueError, match="nope"):
        adapter.grouped_weight("a+nope")


# ---------------------------------------------------------------------------------- box constraint


def test_apply_constraints_projects_into_box_and_keeps_identity_diagonal():
    adapter = make_adapter()
    causal = adapter.causal
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1.0)
    generator = torch.Generator().manual_seed(0)
    signs = {
        name: torch.randint(0, 2, p.shape, generator=generator) * 2.0 - 1.0
        for name, p in (("obs", causal.weight_obs), ("ivn", causal.weight_ivn))
    }
    contexts = ["obs", "a", "b+c", "a+b+c"]
    for _ in range(4):
        optimizer.zero_grad()
        # Half the entries are pushed down (below 0), the other half up (above 1).
        loss = (signs["obs"] * causal.weight_obs).sum() + (signs["ivn"] * causal.weight_ivn).sum()
        loss = loss + adapter.latents_from_noise(noise(), contexts).pow(2).mean()
        loss.backward()
        optimizer.step()
        for weight in (causal.weight_obs, causal.weight_ivn):
            assert (weight < 0).any() and (weight > 1).any()  # the step left the box
        adapter.apply_constraints_()
        for weight in (causal.weight_obs, causal.weight_ivn):
            assert weight.min() >= 0 and weight.max() <= 1
            assert (weight == 0).any() and (weight == 1).any()
        eye = torch.eye(W_OUT)
        for context in ("obs", "a", "b", "c", "a+b", "a+b+c"):
            weight = adapter.causal_weight(context)
            for k in range(K):
                assert torch.equal(block(weight, k, k), eye), (context, k)


# ---------------------------------------------------------------------------------- penalty


def _set_causal(adapter: CtxAdapter, obs: float, ivn: float) -> None:
    with torch.no_grad():
        adapter.causal.weight_obs.fill_(obs)
        adapter.causal.weight_ivn.fill_(ivn)


def test_causal_penalty_observational_by_hand():
    adapter = make_adapter()
    c = 0.3
    _set_causal(adapter, c, 0.7)
    mask = context_mask("obs", CONCEPTS, 4)
    group = K * (K - 1) * c * W_OUT  # each off-diagonal w x w block of c has norm c * w
    l2 = math.sqrt(K * W_OUT + (K - 1) * K * W_OUT**2 * c**2)
    assert adapter.causal_penalty(mask).item() == 0
    assert adapter.causal_penalty(mask, group_sparsity=1.0).item() == pytest.approx(group)
    assert adapter.causal_penalty(mask, l2=1.0).item() == pytest.approx(l2)
    both = adapter.causal_penalty(mask, group_sparsity=0.5, l2=2.0)
    assert both.item() == pytest.approx(0.5 * group + 2.0 * l2)


def test_causal_penalty_mixed_batch_averages_rows():
    adapter = make_adapter()
    c, d = 0.3, 0.6
    _set_causal(adapter, c, d)
    # Intervening on one concept: its column switches to d (K-1 blocks), its row is cut,
    # the (K-1)(K-2) other off-diagonal blocks stay c.
    group_obs = K * (K - 1) * c * W_OUT
    group_one = (K - 1) * d * W_OUT + (K - 1) * (K - 2) * c * W_OUT
    l2_obs = math.sqrt(K * W_OUT + K * (K - 1) * W_OUT**2 * c**2)
    l2_one = math.sqrt(K * W_OUT + (K - 1) * W_OUT**2 * d**2 + (K - 1) * (K - 2) * W_OUT**2 * c**2)
    single = context_mask("b", CONCEPTS, 1)
    assert adapter.causal_penalty(single, group_sparsity=1.0).item() == pytest.approx(group_one)
    assert adapter.causal_penalty(single, l2=1.0).item() == pytest.approx(l2_one)
    mask = context_mask(["obs", "b", "obs", "a"], CONCEPTS, 4)
    penalty = adapter.causal_penalty(mask, group_sparsity=1.0, l2=1.0)
    expected = (2 * (group_obs + l2_obs) + 2 * (group_one + l2_one)) / 4
    assert penalty.item() == pytest.approx(expected)
    # Row order does not matter, row counts do.
    three_obs = context_mask(["obs", "obs", "obs", "c"], CONCEPTS, 4)
    expected = (3 * (group_obs + l2_obs) + (group_one + l2_one)) / 4
    assert adapter.causal_penalty(three_obs, group_sparsity=1.0, l2=1.0).item() == pytest.approx(
        expected
    )


def test_causal_penalty_gradient_by_hand():
    adapter = make_adapter()
    c = 0.3
    _set_causal(adapter, c, 0.7)
    mask = context_mask("obs", CONCEPTS, 2)
    adapter.causal_penalty(mask, group_sparsity=1.0, l2=1.0).backward()
    l2 = math.sqrt(K * W_OUT + (K - 1) * K * W_OUT**2 * c**2)
    # d||B||_F / dB = B / ||B||_F: 1/w for a block of c; d||W||_F / dW = W / ||W||_F.
    expected = torch.full((K * W_OUT, K * W_OUT), 1 / W_OUT + c / l2)
    expected = expected * adapter.causal.off_diagonal  # diagonal blocks are fixed
    assert_close(adapter.causal.weight_obs.grad, expected)
    assert not adapter.causal.weight_ivn.grad.any()


def test_causal_penalty_gradient_is_finite_with_zero_blocks():
    """Interventions cut whole blocks to zero, and the box constraint can clamp a block to
    zero: the norm of a zero block must not give NaN gradients."""
    adapter = make_adapter()
    adapter.apply_constraints_()
    with torch.no_grad():
        adapter.causal.weight_obs[:W_OUT, W_OUT : 2 * W_OUT] = 0  # block (0, 1) clamped to 0
    mask = context_mask(["obs", "a", "b+c", "obs"], CONCEPTS, 4)
    penalty = adapter.causal_penalty(mask, group_sparsity=1.0, l2=1.0)
    assert torch.isfinite(penalty)
    penalty.backward()
    for weight in (adapter.causal.weight_obs, adapter.causal.weight_ivn):
        assert torch.isfinite(weight.grad).all()
        assert weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- save / load


def saved_adapter(tmp_path: Path, **kwargs) -> tuple[CtxAdapter, Path]:
    adapter = make_adapter(**kwargs)
    with torch.no_grad():
        adapter.latent_log_scale.fill_(0.25)
    warm_up_batchnorm(adapter)
    folder = tmp_path / "adapter"
    adapter.save_pretrained(folder)
    return adapter, folder


def test_save_and_load_round_trip(tmp_path):
    base = {
        "pretrained_model_name_or_path": "user/vae",
        "revision": None,
        "subfolder": "vae",
        "class_name": "AutoencoderKL",
        "scaling_factor": 0.18215,
        "shift_factor": 0.0,
    }
    adapter, folder = saved_adapter(tmp_path, base_model=base, composition="strict")
    assert {p.name for p in folder.iterdir()} == ADAPTER_FILES
    bn = adapter.expressive[1]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))

    loaded = CtxAdapter.from_pretrained(folder)
    assert not loaded.training
    assert loaded.concepts == CONCEPTS
    assert loaded.config["base_model"] == base
    assert loaded.config["composition"] == "strict"
    assert_same_outputs(adapter, loaded)
    for key, value in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    config = json.loads((folder / "config.json").read_text())
    assert config["concepts"] == CONCEPTS
    assert config["latent_shape"] == LATENT_SHAPE
    assert "ctxadapter_version" in config
    card = (folder / "README.md").read_text()
    assert "ctxadapter" in card and all(f"`{c}`" in card for c in CONCEPTS)

    # A loaded adapter saves again to the same thing.
    loaded.save_pretrained(tmp_path / "again")
    assert {p.name for p in (tmp_path / "again").iterdir()} == ADAPTER_FILES
    assert_same_outputs(adapter, CtxAdapter.from_pretrained(tmp_path / "again"))


def test_weights_file_holds_only_adapter_tensors(tmp_path):
    adapter, folder = saved_adapter(tmp_path)
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    assert set(tensors) == set(adapter.state_dict())
    assert not any(k.startswith(("codec", "autoencoder", "encoder", "decoder")) for k in tensors)


def test_from_pretrained_accepts_init_overrides(tmp_path):
    _, folder = saved_adapter(tmp_path)
    loaded = CtxAdapter.from_pretrained(folder, pooled=True)
    assert loaded.pooled
    z = noise()
    with torch.no_grad():
        assert_close(loaded.latents_from_noise(z, "a"), loaded.latents_from_noise(z, "obs"))


class FakeHfApi:
    """Records what ``push_to_hub`` would send to the Hub."""

    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = Path(FakeHfApi.destination) / "uploaded"
        shutil.copytree(folder_path, copy)  # the folder is temporary: copy it now
        FakeHfApi.calls.append(("upload_folder", repo_id, kwargs, copy))
        return f"https://huggingface.co/{repo_id}/commit/0123"


def test_push_to_hub_uploads_adapter_folder(tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "destination", str(tmp_path), raising=False)
    adapter = make_adapter()
    warm_up_batchnorm(adapter)
    url = adapter.push_to_hub("user/my-adapter", commit_message="hello")
    assert url == "https://huggingface.co/user/my-adapter/commit/0123"
    assert [call[:2] for call in FakeHfApi.calls] == [
        ("create_repo", "user/my-adapter"),
        ("upload_folder", "user/my-adapter"),
    ]
    _, _, kwargs, uploaded = FakeHfApi.calls[1]
    assert kwargs.get("repo_type", "model") == "model"
    assert kwargs["commit_message"] == "hello"
    assert {p.name for p in uploaded.iterdir()} == ADAPTER_FILES
    assert_same_outputs(adapter, CtxAdapter.from_pretrained(uploaded))


def test_save_pretrained_writes_a_given_config_and_keeps_its_own(tmp_path):
    """A config moved to another base location is saved (and loads: it describes the same
    weights); one describing other weights is refused; the adapter's own never changes."""
    adapter = make_adapter(
        base_model={"pretrained_model_name_or_path": "here", "scaling_factor": 1}
    )
    before = json.dumps(adapter.config, sort_keys=True)
    moved = {**adapter.config, "base_model": {**adapter.config["base_model"]}}
    moved["base_model"]["pretrained_model_name_or_path"] = "org/vae"
    adapter.save_pretrained(tmp_path / "moved", config=moved)
    loaded = CtxAdapter.from_pretrained(tmp_path / "moved")
    assert loaded.config["base_model"]["pretrained_model_name_or_path"] == "org/vae"
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["ctxadapter_version"]
    with pytest.raises(ValueError, match="would not describe these weights"):
        adapter.save_pretrained(tmp_path / "other", config={**adapter.config, "concept_width": 3})
    assert not (tmp_path / "other" / "model.safetensors").exists()
    assert json.dumps(adapter.config, sort_keys=True) == before


def _hub_cache(tmp_path: Path, folder: Path, repo_id: str = "user/repo") -> tuple[Path, str]:
    """The layout ``hf_hub_download`` reads: refs/main -> commit, snapshots/<commit>/<files>."""
    cache = tmp_path / "hub-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copy(folder / name, snapshot / name)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)  # no newline: it is read verbatim
    return cache, commit


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 (environment and the constant read at import), and a record of any
    attempt to open a network connection."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.mark.parametrize("how", ["cache_dir", "HF_HUB_CACHE", "revision"])
def test_from_pretrained_from_offline_hub_cache(tmp_path, monkeypatch, offline, how):
    import huggingface_hub.constants

    adapter, folder = saved_adapter(tmp_path)
    cache, commit = _hub_cache(tmp_path, folder)
    if how == "cache_dir":
        loaded = CtxAdapter.from_pretrained("user/repo", cache_dir=cache)
    elif how == "revision":
        loaded = CtxAdapter.from_pretrained("user/repo", cache_dir=str(cache), revision=commit)
    else:
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        loaded = CtxAdapter.from_pretrained("user/repo")
    assert_same_outputs(adapter, loaded)
    assert offline == []


def test_from_pretrained_offline_without_weights_in_cache(tmp_path, offline):
    _, folder = saved_adapter(tmp_path)
    cache, commit = _hub_cache(tmp_path, folder)
    os.remove(cache / "models--user--repo" / "snapshots" / commit / "model.safetensors")
    with pytest.raises(Exception, match="model.safetensors"):
        CtxAdapter.from_pretrained("user/repo", cache_dir=cache)
    assert offline == []


# ---------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "context, shown",
    [
        ("z", "'z'"),
        ("obs+a", "'obs+a'"),
        ("a+a", "'a+a'"),
        ("", "''"),
        ("a+", "'a+'"),
        (["a", "d"], "'d'"),
    ],
)
def test_bad_context_names_the_value_and_the_concepts(context, shown):
    adapter = make_adapter()
    # A list is one context per sample, so a whole-batch composition list is wrapped.
    contexts = [context] if isinstance(context, list) else context
    with pytest.raises(ValueError) as error:
        adapter.concepts_from_noise(noise(1), contexts)
    message = str(error.value)
    assert shown in message
    assert all(f"'{c}'" in message for c in CONCEPTS), message


@pytest.mark.parametrize("contexts", [[1], ["a", 1], [None, "a"]])
def test_non_string_context_is_rejected(contexts):
    adapter = make_adapter()
    with pytest.raises(ValueError) as error:
        adapter.concepts_from_noise(noise(len(contexts)), contexts)
    message = str(error.value)
    bad = next(c for c in contexts if not isinstance(c, str))
    assert repr(bad) in message
    assert all(f"'{c}'" in message for c in CONCEPTS), message


def test_wrong_number_of_contexts_is_rejected():
    adapter = make_adapter()
    with pytest.raises(ValueError, match="3"):
        adapter.concepts_from_noise(noise(2), ["a", "b", "c"])


def test_corrupted_weights_are_rejected(tmp_path):
    _, folder = saved_adapter(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(os.urandom(weights.stat().st_size))
    with pytest.raises(ValueError, match="corrupted|truncated"):
        CtxAdapter.from_pretrained(folder)


def test_truncated_weights_are_rejected(tmp_path):
    _, folder = saved_adapter(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted|truncated"):
        CtxAdapter.from_pretrained(folder)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_weights_load_strictly(tmp_path, change):
    _, folder = saved_adapter(tmp_path)
    weights = folder / "model.safetensors"
    tensors = safetensors.torch.load_file(weights)
    if change == "missing":
        del tensors["latent_log_scale"]
        named = "latent_log_scale"
    else:
        tensors["codec.autoencoder.decoder.conv_in.weight"] = torch.zeros(2, 2)
        named = "codec.autoencoder.decoder.conv_in.weight"
    safetensors.torch.save_file(tensors, weights)
    with pytest.raises(ValueError, match=named):
        CtxAdapter.from_pretrained(folder)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda config: config.update(concept_width=4), "do not match"),  # weights of another shape
        (lambda config: config.pop("concepts"), "concepts"),  # a missing key
        (lambda config: config.update(mystery_option=3), "mystery_option"),  # an unknown key
    ],
    ids=["weights_of_another_shape", "missing_key", "unknown_key"],
)
def test_edited_config_is_rejected(tmp_path, edit, named):
    _, folder = saved_adapter(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=named):
        CtxAdapter.from_pretrained(folder)


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: pickles must never be loaded")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)


@pytest.mark.parametrize("with_config", [True, False])
def test_pickle_weights_are_never_loaded(tmp_path, with_config, no_unpickling):
    adapter, folder = saved_adapter(tmp_path)
    os.remove(folder / "model.safetensors")
    os.remove(folder / "README.md")
    if not with_config:
        os.remove(folder / "config.json")
    torch.save(adapter.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError) as error:
        CtxAdapter.from_pretrained(folder)
    message = str(error.value)
    assert "safetensors" in message
    assert "pytorch_model.bin" in message


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(concepts=[]), "concepts"),
        (dict(concepts="abc"), "concepts"),
        (dict(concepts=["a", "obs"]), "obs"),
        (dict(concepts=["a", "a"]), "unique"),
        (dict(concepts=["a", "b+c"]), "b+c"),
        (dict(concepts=["a", ""]), "''"),
        (dict(concepts=["a", 3]), "3"),
        (dict(latent_shape=[4, 4]), "latent_shape"),
        (dict(latent_shape=[4, 0, 4]), "latent_shape"),
        (dict(latent_shape=[4, -4, 4]), "latent_shape"),
        (dict(latent_shape=[4.0, 4, 4]), "latent_shape"),
        (dict(latent_shape="444"), "latent_shape"),
        (dict(exogenous_width=0), "exogenous_width"),
        (dict(concept_width=-1), "concept_width"),
        (dict(expressive_depth=0), "expressive_depth"),
        (dict(expressive_depth=1), "exogenous_width"),  # depth 1 needs w_in == w_out
        (dict(observational_mixing="full"), "observational_mixing"),
        (dict(composition="loose"), "composition"),
        (dict(heads="big"), "'heads' holds 'big', expected one of ('linear'"),
        (dict(pooled=1), "'pooled' holds 1, expected true or false"),
        (dict(head=16), "CtxAdapter: unknown keys ['head']; the AdapterConfig keys are ["),
    ],
)
def test_invalid_constructor_arguments(kwargs, named):
    with pytest.raises(ValueError) as error:
        make_adapter(**kwargs)
    assert named in str(error.value)
