"""Where a trained adapter's SW2 comes from, context by context (a diagnostic on quad).

For each context, five image sets are scored against the same held-out real images, with the
projections of ``ctxadapter.evaluation.evaluate`` (SW2, ``--num_projections`` directions drawn
from ``--seed``). "Other images" are a second, independent held-out draw of that context
(``--heldout_seed + 1``), so every column compares two independent samples:

- ``prior``: generated from ``z ~ N(0, I)`` under the context; this is the score ``evaluate``
  reports (the same noise, the same number).
- ``gaussian_fit``: ``z`` drawn from a diagonal Gaussian fitted to the posteriors of the other
  images (per dimension: the mean of their posterior means; the variance of the posterior means
  plus the mean posterior variance), then the layers under the context.
- ``posterior_samples``: ``z`` drawn from each other image's posterior, then the layers.
- ``posterior_mean``: the other images reconstructed from their posterior means under their
  context (what ``ContextAutoencoder.reconstruct`` does).
- ``autoencoder``: the other images through the frozen autoencoder alone (no adapter): the
  floor any adapter on this autoencoder can reach at this sample size.

Reading the columns: ``posterior_mean`` against ``autoencoder`` is what the adapter's
reconstruction path loses; ``prior`` against ``gaussian_fit`` is what the context's noise
distribution being away from ``N(0, I)`` costs, i.e. an intervention carried by the noise
posterior instead of by the context layers (``|mean|``, the norm of that Gaussian's mean, says
how far). ``docs/evaluation.md`` describes it.

    python research/run.py sw2-sources --adapter compare-quad/dependent/cm/seed0
    python research/run.py sw2-sources --adapter ADAPTER --quad_variant independent \\
        --contexts obs quad3 --output sources.json

Scores use the validation images by default (``--split``), so settings chosen with it never see
the test images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from ctxadapter import ContextAutoencoder  # noqa: E402
from ctxadapter.data import quad  # noqa: E402
from ctxadapter.evaluation import (  # noqa: E402
    generation_seed,
    heldout_quad_images,
    random_projections,
    sliced_wasserstein,
)
from ctxadapter.images import model_input, unit_to_signed  # noqa: E402

COLUMNS = ("prior", "gaussian_fit", "posterior_samples", "posterior_mean", "autoencoder")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="A trained adapter folder or Hub id.")
    parser.add_argument("--quad_variant", choices=("dependent", "independent"), default="dependent")
    parser.add_argument(
        "--contexts",
        nargs="+",
        default=list(quad.TRAIN_CONTEXTS),
        help="Contexts to score (default: the 7 training contexts).",
    )
    parser.add_argument("--images_per_context", type=int, default=400)
    parser.add_argument("--num_projections", type=int, default=50)
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the projections and of the noise."
    )
    parser.add_argument(
        "--heldout_seed",
        type=int,
        default=0,
        help="Seed of the real images; the other images use this plus 1.",
    )
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--output", default=None, help="Also write the rows as JSON here.")
    return parser.parse_args(argv)


def _to_images(model: ContextAutoencoder, latents: torch.Tensor) -> torch.Tensor:
    return model.codec.postprocess(model.codec.decode(latents)).float().clamp(0, 1)


@torch.no_grad()
def sources(
    model: ContextAutoencoder,
    real: torch.Tensor,
    other: torch.Tensor,
    context: str,
    projections: torch.Tensor,
    seed: int,
    batch_size: int,
) -> dict[str, float]:
    """SW2 of each column of the module docstring for one context.

    Args:
        model: the trained ``ContextAutoencoder`` (in eval mode).
        real: ``(N, 3, H, W)`` real images in ``[0, 1]`` at the model's resolution.
        other: ``(N, 3, H, W)`` an independent draw of the same context.
        context: the context's name.
        projections: ``(P, 3*H*W)`` unit directions.
        seed: ``prior`` uses ``evaluate``'s noise (``generation_seed(seed, context)``); the other
            columns draw their standard normal noise from the same stream.
        batch_size: images per pass.

    Returns:
        Column name -> SW2, and ``mean_norm``: the norm of the fitted Gaussian's mean.
    """
    adapter = model.adapter
    generator = torch.Generator().manual_seed(generation_seed(seed, context))
    noise = torch.cat(
        [
            adapter.sample_noise(min(batch_size, len(real) - start), generator=generator).cpu()
            for start in range(0, len(real), batch_size)
        ]
    )
    means, logvars, autoencoded = [], [], []
    for chunk in other.split(batch_size):
        latents = model.codec.encode(unit_to_signed(chunk.to(model.codec.device)))
        mean, logvar = adapter.posterior(latents, context)
        means.append(mean)
        logvars.append(logvar)
        autoencoded.append(_to_images(model, latents).cpu())
    mean, logvar = torch.cat(means), torch.cat(logvars)
    eps = noise.to(mean)
    fit_mean = mean.mean(0)
    fit_std = (mean.var(0, unbiased=False) + logvar.exp().mean(0)).sqrt()
    noises = {
        "prior": eps,
        "gaussian_fit": fit_mean + fit_std * eps,
        "posterior_samples": mean + (0.5 * logvar).exp() * eps,
        "posterior_mean": mean,
    }
    images = {
        name: torch.cat(
            [
                _to_images(model, adapter.latents_from_noise(z, context)).cpu()
                for z in zs.split(batch_size)
            ]
        )
        for name, zs in noises.items()
    }
    images["autoencoder"] = torch.cat(autoencoded)
    row = {
        name: sliced_wasserstein(real, images[name], projections=projections).item()
        for name in COLUMNS
    }
    row["mean_norm"] = fit_mean.norm().item()
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    model = ContextAutoencoder.from_pretrained(args.adapter)
    dependent = args.quad_variant == "dependent"
    n, split = args.images_per_context, args.split
    real = heldout_quad_images(n, dependent, args.heldout_seed, args.contexts, split)
    other = heldout_quad_images(n, dependent, args.heldout_seed + 1, args.contexts, split)
    resolution = tuple(model.resolution)
    projections = None
    rows = []
    header = f"{'context':<18}" + "".join(f"{c:>18}" for c in COLUMNS) + f"{'|mean|':>9}"
    print(f"SW2 per context ({n} {split} images a side, {args.num_projections} projections)")
    print(header)
    model.eval()  # sources() runs without gradients
    for context in args.contexts:
        x = model_input(real[context], resolution)
        y = model_input(other[context], resolution)
        if projections is None:
            projections = random_projections(x[0].numel(), args.num_projections, args.seed)
        row = sources(model, x, y, context, projections, args.seed, args.batch_size)
        rows.append({"context": context, "num_images": n, **row})
        print(
            f"{context:<18}"
            + "".join(f"{row[c]:>18.4f}" for c in COLUMNS)
            + f"{row['mean_norm']:>9.2f}",
            flush=True,
        )
    if args.output:
        settings = {k: v for k, v in vars(args).items() if k != "output"}
        Path(args.output).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
