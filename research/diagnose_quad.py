"""Where a trained quad adapter keeps each concept, and what its heads alone reconstruct: the
tables that explain its edit, graph and reconstruction scores (``docs/results.md``).

1. **Which concept block paints which quadrant.** Prior samples are drawn under ``obs``; for
   each concept, its block of concept values (after the causal layer) is swapped between
   samples and the images decoded again. The table gives the mean absolute change of each
   quadrant's corner colour (``ctxadapter.evaluation.corner_masks``; RGB in ``[0, 1]``). A
   block that only paints its own quadrant has one large entry in its row; a row with large
   entries elsewhere means the latent head, not the causal layer, carries that concept's
   effects on the others (the concept graph then stays empty).
2. **How much the posterior knows.** On held-out observational images: per concept block, the
   KL of the posterior to ``N(0, I)`` (nats per image), the variance of the posterior means
   and the mean posterior variance (an uninformative posterior: variances near 1, means near
   0), and the adapter's latent reconstruction error against the latents' variance.
3. **What the heads alone reconstruct** (``--ceiling_steps N``). A deterministic autoencoder
   of the latents made of a posterior head and a latent head of the adapter's kind and width,
   with a bottleneck the size of its concept values (``K * w_out``) and nothing between them
   (no noise, no context layers), trained by mean squared error on the quad training images'
   latents for ``N`` steps of batch 512 with the default optimizer and schedule. Its held-out
   PSNR beside the base autoencoder's says how much of the adapter's reconstruction gap the
   heads and the budget leave, before the method's terms.

    python research/run.py diagnose-quad path/to/adapter [--dependent] [--num_images 400] \
        [--ceiling_steps 2700]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np
import torch

from ctxadapter import ContextAutoencoder
from ctxadapter.data import quad
from ctxadapter.evaluation import QUADRANTS, corner_masks, heldout_quad_images, psnr
from ctxadapter.heads import latent_head, posterior_head
from ctxadapter.images import model_input, unit_to_signed
from ctxadapter.objective import gaussian_kl
from ctxadapter.training import FinetuneArguments, make_optimizer
from ctxadapter.training.optimization import make_scheduler


def corner_colours(images: torch.Tensor, masks: dict) -> torch.Tensor:
    """``(N, 3, H, W)`` images -> ``(N, 4, 3)`` mean RGB of each quadrant's corner."""
    return torch.stack([images[:, :, mask].mean(-1) for mask in masks.values()], dim=1)


@torch.no_grad()
def block_influence(model, num_samples: int, seed: int = 0) -> dict[str, list[float]]:
    """Concept -> mean |change| of each quadrant's corner colour when its block is swapped."""
    adapter, generator = model.adapter, torch.Generator().manual_seed(seed)
    masks = corner_masks(model.resolution)
    concepts = adapter.concepts_from_noise(adapter.sample_noise(num_samples, generator), "obs")
    width = concepts.shape[1] // len(adapter.concepts)

    def colours(values: torch.Tensor) -> torch.Tensor:
        latents = adapter.latent_head(values).view(-1, *adapter.latent_shape)
        return corner_colours(model.codec.postprocess(model.codec.decode(latents), "pt"), masks)

    before, order = colours(concepts), torch.randperm(num_samples, generator=generator)
    table = {}
    for k, name in enumerate(adapter.concepts):
        swapped = concepts.clone()
        block = slice(k * width, (k + 1) * width)
        swapped[:, block] = concepts[order, block]
        table[name] = (colours(swapped) - before).abs().mean(dim=(0, 2)).tolist()
    return table


@torch.no_grad()
def posterior_stats(model, images: torch.Tensor) -> dict:
    """Per-block KL, posterior-mean variance and posterior variance; latent MSE and variance."""
    adapter = model.adapter
    latents = model.codec.encode(unit_to_signed(images))
    mean, logvar = adapter.posterior(latents)
    blocks, width = len(adapter.concepts), mean.shape[1] // len(adapter.concepts)
    kl = gaussian_kl(mean.reshape(-1, width), logvar.reshape(-1, width))  # per image and block
    decoded = adapter.latents_from_noise(mean, "obs").view_as(latents)
    return dict(
        kl=kl.view(len(mean), blocks).mean(0).tolist(),
        mean_variance=mean.view(len(mean), blocks, -1).var(0).mean(-1).tolist(),
        posterior_variance=logvar.exp().view(len(mean), blocks, -1).mean((0, 2)).tolist(),
        latent_mse=(decoded - latents).pow(2).mean().item(),
        latent_variance=latents.var(0).mean().item(),
    )


def head_ceiling(
    model, train_latents: torch.Tensor, steps: int, batch_size: int = 512, seed: int = 0
) -> torch.nn.Sequential:
    """A deterministic autoencoder of ``(N, C, h, w)`` latents with the heads of ``model``'s
    adapter (kind, width, bottleneck ``K * w_out``), trained by MSE with the optimizer and the
    learning-rate schedule of ``examples/finetune.py``'s defaults; returns it in eval mode
    (flat latents in and out)."""
    config, defaults = model.adapter.config, FinetuneArguments()
    shape = tuple(config["latent_shape"])
    blocks = len(config["concepts"])
    size = blocks * config["concept_width"]
    torch.manual_seed(seed)
    autoencoder = torch.nn.Sequential(
        posterior_head(config["heads"], shape, config["head_width"], size),
        latent_head(config["heads"], size, config["head_width"], shape, blocks),
    )
    optimizer = make_optimizer(autoencoder, defaults.learning_rate)
    schedule = make_scheduler(defaults, optimizer, steps)
    flat, generator = train_latents.flatten(1), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = flat[torch.randint(len(flat), (batch_size,), generator=generator)]
        loss = (autoencoder(batch) - batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return autoencoder.eval()


def unit_batches(model, images, batch_size: int) -> Iterator[torch.Tensor]:
    """Quad images (``uint8`` ``(N, 64, 64, 3)``) as ``(n, 3, H, W)`` floats in ``[0, 1]`` at
    the model's resolution, ``batch_size`` at a time."""
    images = torch.as_tensor(images)
    for i in range(0, len(images), batch_size):
        yield model_input(images[i : i + batch_size], model.resolution)


@torch.no_grad()
def encode(model, images, batch_size: int = 256) -> torch.Tensor:
    """Quad images (``uint8`` ``(N, 64, 64, 3)``) -> model-space latents."""
    return torch.cat(
        [model.codec.encode(unit_to_signed(x)) for x in unit_batches(model, images, batch_size)]
    )


@torch.no_grad()
def ceiling_psnr(model, autoencoder, images, batch_size: int = 256) -> dict[str, float]:
    """Mean per-image PSNR (dB) on quad images (``uint8`` ``(N, 64, 64, 3)``) of the base
    autoencoder and of its latents passed through ``autoencoder`` (``head_ceiling``)."""
    codec, scores = model.codec, dict(base=[], heads=[])
    for target in unit_batches(model, images, batch_size):
        latents = codec.encode(unit_to_signed(target))
        through = autoencoder(latents.flatten(1)).view_as(latents)
        for name, z in (("base", latents), ("heads", through)):
            decoded = codec.postprocess(codec.decode(z), "pt")
            scores[name].append(psnr(decoded, target).item() * len(target))
    return {name: sum(values) / len(images) for name, values in scores.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", help="a trained quad adapter's folder")
    parser.add_argument("--dependent", action="store_true", help="held-out dependent quad")
    parser.add_argument("--num_images", type=int, default=400)
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument(
        "--ceiling_steps", type=int, default=0, help="train the heads' ceiling (0: skip)"
    )
    parser.add_argument("--train_images_per_context", type=int, default=2000)
    args = parser.parse_args(argv)

    model = ContextAutoencoder.from_pretrained(args.adapter).eval()
    names = model.adapter.concepts
    print("## Mean |change| of each quadrant's corner colour when a block is swapped\n")
    print("| block | " + " | ".join(QUADRANTS) + " |")
    print("|---" * (len(QUADRANTS) + 1) + "|")
    for name, row in block_influence(model, args.num_images).items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")

    held = heldout_quad_images(args.num_images, args.dependent, contexts=["obs"], split=args.split)
    images = model_input(held["obs"], model.resolution)
    stats = posterior_stats(model, images)
    print(f"\n## The posterior on {len(images)} held-out observational images\n")
    print("| block | KL (nats) | variance of the means | mean posterior variance |")
    print("|---|---|---|---|")
    for k, name in enumerate(names):
        print(
            f"| {name} | {stats['kl'][k]:.2f} | {stats['mean_variance'][k]:.3f} | "
            f"{stats['posterior_variance'][k]:.3f} |"
        )
    print(
        f"\nLatent reconstruction MSE {stats['latent_mse']:.4f} "
        f"(the latents' variance: {stats['latent_variance']:.4f})"
    )
    if args.ceiling_steps:
        n, dependent = args.train_images_per_context, args.dependent
        train = [quad.sample(c, n, dependent=dependent)[0] for c in quad.TRAIN_CONTEXTS]
        autoencoder = head_ceiling(model, encode(model, np.concatenate(train)), args.ceiling_steps)
        held = heldout_quad_images(
            args.num_images, dependent, contexts=quad.TRAIN_CONTEXTS, split=args.split
        )
        images = torch.cat(list(held.values()))
        scores = ceiling_psnr(model, autoencoder, images)
        print(
            f"\n## The heads alone ({args.ceiling_steps} steps), on {len(images)} held-out "
            f"images\n\nThe base autoencoder {scores['base']:.2f} dB; the adapter's heads as a "
            f"deterministic autoencoder of its latents {scores['heads']:.2f} dB"
        )


if __name__ == "__main__":
    main()
