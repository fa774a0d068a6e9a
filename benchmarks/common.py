"""The models and the training step the benchmark scripts time, and its FLOP count (the
command line, timing and result files are in ``harness.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from harness import measure

from ctxadapter.config import AdapterConfig
from ctxadapter.contexts import distinct_contexts
from ctxadapter.heads import AdditiveLatentHead
from ctxadapter.training import QUAD_AUTOENCODER

# The project's quad autoencoder (training.PretrainArguments defaults) and the Stable Diffusion
# VAE architecture (random weights are fine for timing); see ``kl_autoencoder`` for the rest.
QUAD_CONFIG = dict(block_out_channels=(16, 32, 64, 64), sample_size=64)
SD_CONFIG = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
WIDTHS = {
    name: getattr(AdapterConfig(), name)
    for name in ("exogenous_width", "concept_width", "expressive_depth")
}
"""The adapter's widths in every script (``context_model``; the defaults), as their settings
record them."""


def kl_autoencoder(
    block_out_channels: Sequence[int],
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    latent_channels: int = 4,
    **config,
):
    """A diffusers ``AutoencoderKL`` with random weights, one down and one up block per entry of
    ``block_out_channels`` (8x downsampling for four); ``config``: its other arguments."""
    from diffusers import AutoencoderKL

    levels = len(block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        latent_channels=latent_channels,
        **config,
    )


def autoencoder(kind: str = "quad", smoke: bool = False):
    """A frozen diffusers ``AutoencoderKL``: ``"quad"`` (the shipped quad autoencoder if it
    exists, else random weights from its config) or ``"sd"`` (the SD VAE architecture, random
    weights). ``smoke`` shrinks the channels so that CI stays fast."""
    if kind == "quad" and not smoke and (QUAD_AUTOENCODER / "config.json").exists():
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(QUAD_AUTOENCODER).eval()
    config = dict(QUAD_CONFIG if kind == "quad" else SD_CONFIG)
    if smoke:
        config.update(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=8)
    torch.manual_seed(0)
    return kl_autoencoder(**config).eval()


def concepts(k: int) -> list[str]:
    """``k`` concept names: quad's six first, then ``c6``, ``c7``..."""
    from ctxadapter.data.quad import CONCEPTS

    return list(CONCEPTS[:k]) + [f"c{i}" for i in range(len(CONCEPTS), k)]


def context_model(num_concepts: int = 6, latent_shape=(4, 8, 8), vae=None, heads=None):
    """A ``ContextAutoencoder`` in train mode: the adapter ``examples/finetune.py`` trains by
    default (``CtxAdapter``'s defaults; ``heads`` overrides the kind of head).
    ``vae=None`` uses a tiny stand-in autoencoder: the latent loss never runs it."""
    from ctxadapter import ContextAutoencoder, CtxAdapter

    if vae is None:
        vae = kl_autoencoder((8,) * 4, latent_channels=latent_shape[0])
    kind = {"heads": heads} if heads else {}
    adapter = CtxAdapter(concepts(num_concepts), list(latent_shape), **kind)
    return ContextAutoencoder(vae, adapter).train()


def mixed_mask(
    names: Sequence[str], contexts: Sequence[str], batch_size: int, seed: int = 0
) -> torch.Tensor:
    """``(batch_size, K)`` mask: ``contexts`` (strings) spread evenly over the rows, shuffled."""
    from ctxadapter.contexts import context_mask

    rows = [contexts[i % len(contexts)] for i in range(batch_size)]
    mask = context_mask(rows, list(names), batch_size)
    order = torch.randperm(batch_size, generator=torch.Generator().manual_seed(seed))
    return mask[order]


def train_step(
    model,
    optimizer,
    contexts,
    latents=None,
    pixel_values=None,
    reconstruction: str = "latent",
    generator=None,
) -> Callable[[], None]:
    """One training step as ``finetune`` does it, with its default objective: forward (loss),
    backward, Adam step, ``zero_grad``, ``apply_constraints_``. ``contexts`` as the model takes
    them (mask or strings)."""
    from ctxadapter.objective import Objective

    objective = Objective(reconstruction=reconstruction)

    def step() -> None:
        out = model(
            contexts,
            latents=latents,
            pixel_values=pixel_values,
            objective=objective,
            generator=generator,
        )
        update(model, optimizer, out["loss"])

    return step


def update(model, optimizer, loss: torch.Tensor) -> None:
    """What ``finetune`` does with a batch's loss: backward, the optimizer's step,
    ``zero_grad``, ``apply_constraints_``."""
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.adapter.apply_constraints_()


def adam(model, **kwargs) -> torch.optim.Optimizer:
    """Adam as ``finetune`` builds it (``ctxadapter.training.make_optimizer``, the default
    learning rate); ``kwargs`` override."""
    from ctxadapter.training import FinetuneArguments, make_optimizer

    return make_optimizer(model, FinetuneArguments().learning_rate, **kwargs)


# ---------------------------------------------------------------------------- arithmetic


def _linear_shapes(module) -> list[tuple[int, int]]:
    """``(in, out)`` of every linear map in ``module`` (a head): each ``nn.Linear``, and each
    batched weight ``(K, a, b)`` of an additive head as one ``K*a -> b`` map (the same
    products)."""
    shapes = []
    for m in module.modules():
        if isinstance(m, AdditiveLatentHead):
            shapes += [(w.shape[0] * w.shape[1], w.shape[2]) for w in m.weights]
        elif hasattr(m, "in_features"):
            shapes.append((m.in_features, m.out_features))
    return shapes


def step_flops(
    adapter, contexts: torch.Tensor, matching: bool | None = None, batch_size: int = 512
) -> float:
    """Matrix-product FLOPs per sample of one training step (forward + backward) of ``adapter``
    with the ``latent`` loss on a batch with the ``(N, K)`` context masks ``contexts``, counted
    from the layer shapes as the library computes them. The heads: each of their linear maps.
    The exogenous layer: one dense product if every row is observational (dense mixing);
    otherwise one batched product over the K diagonal blocks of both weights for every row,
    plus, with dense mixing, the dense product on the observational rows. The causal layer: one
    masked dense product, two if any row is intervened. With ``matching`` (default: the matching
    terms ``examples/finetune.py`` trains with), sample matching runs the generator (context
    layers and latent head) three times more per row (the posterior mean, a prior draw and a
    counterfactual) and
    projects both sides of each of its two distances on their own directions; prior matching
    projects the posterior noise and as many prior draws on directions of the noise space;
    covariance matching multiplies, for each of its two distances, the real rows of a context
    with themselves (no gradient), and the decoded rows with themselves and with the real ones,
    ``n`` rows each for a context of ``n`` rows of a batch of ``batch_size``. The edit-order
    term needs the counterfactuals too (its own work is elementwise).
    Backward costs 2x forward, except where the input needs no gradient (the latents).
    Elementwise work (GELU, BatchNorm, masks, sorting, Adam) is not counted."""
    from ctxadapter.training import FinetuneArguments

    objective = FinetuneArguments().objective()
    sample_matching = objective.sample_matching > 0 if matching is None else matching
    prior_matching = objective.prior_matching > 0 if matching is None else matching
    covariance_matching = objective.covariance_matching > 0 if matching is None else matching
    edit_order = objective.edit_order > 0 if matching is None else matching
    k = len(adapter.concepts)
    noise, concept = adapter.noise_size, adapter.causal.weight_obs.shape[0]
    latent = adapter.latent_shape[0] * adapter.latent_shape[1] * adapter.latent_shape[2]
    widths = adapter.expressive.widths
    observational = (~contexts.any(dim=-1)).float().mean().item()
    dense = adapter.exogenous.observational_mixing == "dense"
    posterior = [
        (i, o, n > 0, 1.0) for n, (i, o) in enumerate(_linear_shapes(adapter.posterior_head))
    ]
    generator = []  # (in, out, input needs a gradient, rows)
    if observational == 1 and dense:
        generator += [(noise, noise, True, 1.0), (concept, concept, True, 1.0)]
    else:
        generator += [(noise, 2 * adapter.exogenous.width, True, 1.0)]
        generator += [(noise, noise, True, observational)] if dense else []
        generator += [(concept, concept, True, 2.0 if observational < 1 else 1.0)]
    generator += [(k * a, k * b, True, 1.0) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    generator += [(i, o, True, 1.0) for i, o in _linear_shapes(adapter.latent_head)]
    products = posterior + generator
    if sample_matching or covariance_matching or edit_order:
        products += 3 * generator  # posterior means, prior draws and counterfactuals
    if covariance_matching:
        shares = distinct_contexts(contexts)[2] / len(contexts)
        rows = batch_size * shares.pow(2).sum().item()  # the rows of a row's context, on average
        real_gram = 2 * latent * rows
        products += 2 * [(latent, rows, True, 1.0), (latent, rows, True, 1.0)]
    else:
        real_gram = 0.0
    if sample_matching:
        for _ in ("generated", "counterfactuals"):
            products += [(latent, objective.num_projections, False, 1.0)]
            products += [(latent, objective.num_projections, True, 1.0)]
    if prior_matching:
        products += [(noise, objective.num_projections, False, 1.0)]
        products += [(noise, objective.num_projections, True, 1.0)]
    return 2 * real_gram + sum(2 * i * o * (2 + grad) * rows for i, o, grad, rows in products)


def matmul_flops_per_s(size: int = 2048, repeats: int = 5, min_time: float = 0.2) -> float:
    """Measured FLOP/s of a large float32 matrix product (the CPU's practical arithmetic limit)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    timing = measure(lambda: a @ b, repeats, warmup=2, min_time=min_time)
    return 2 * size**3 / timing["median"]
