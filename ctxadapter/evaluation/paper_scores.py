"""Evaluate a trained adapter the way the paper does (see ``docs/evaluation.md``).

- **Concept**: per single context (``obs`` and each one-concept intervention), the sliced
  Wasserstein-2 distance (SW2) in pixel space between held-out real images and as many images
  generated under that context; the mean over single contexts.
- **Compo**: the same for compositions (``"a+b"``, usually never seen in training); the mean over
  compositions.
- **Recon**: the negative ELBO in bits per pixel (Bernoulli likelihood, channels summed in the
  numerator, ``H * W * ln 2`` in the denominator) of the held-out images of the single
  contexts, reconstructed under their own context; with the PSNR and MSE of those
  reconstructions.

Every score comes with its image and projection counts: SW2 depends on the sample size, so
compare methods only at equal sizes. The random projections are fixed by ``seed``; the generated
images are drawn from another stream derived from ``seed`` and the context's name, so two models
with the same noise size evaluated with the same ``seed`` start from the same noise.

    from ctxadapter import ContextAutoencoder
    from ctxadapter.evaluation import evaluate, format_table, heldout_quad_images

    model = ContextAutoencoder.from_pretrained("my-adapter")
    results = evaluate(model, heldout_quad_images(400, dependent=True))
    print(format_table(results))

The held-out quad images come from ``ctxadapter.evaluation.quad.heldout_quad_images``; the
distances and Recon from ``ctxadapter.evaluation.metrics``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..contexts import context_name, is_composition, parse_context
from ..images import DEFAULT_BATCH_SIZE, prepare_images, signed_to_unit, to_float, unit_to_signed
from ..model import eval_mode
from ..objective import PIXEL_EPS, gaussian_kl
from .metrics import concept_compo_scores, psnr, recon_bits_per_pixel

__all__ = ["evaluate", "format_table", "generation_seed"]


def generation_seed(seed: int, context: str) -> int:
    """Seed of the generated images of ``context``: a hash of ``seed`` and the context's name,
    so the generated images do not depend on the order of the contexts, and differ from the
    stream of the random projections (which use ``seed`` itself)."""
    digest = hashlib.sha256(f"ctxadapter.evaluate/generation/{int(seed)}/{context}".encode())
    return int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def _generate(model, context: str, num_images: int, seed: int, batch_size: int) -> Tensor:
    """``num_images`` generated images of ``context``, float32 ``(N, 3, H, W)`` on the CPU."""
    generator = torch.Generator(device=model.device).manual_seed(generation_seed(seed, context))
    batches = []
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        images = model.generate(context, n, generator=generator, output_type="pt")
        batches.append(images.detach().float().cpu().clamp(0, 1))
    return torch.cat(batches)


def _reconstruct(model, images: Tensor, context: str, batch_size: int) -> dict[str, Tensor]:
    """Per-image Recon (bits per pixel), squared errors and PSNR of ``images`` (N, 3, H, W)
    reconstructed under ``context``: encoder -> posterior mean -> adapter -> decoder."""
    device = model.device
    bits, sq_errors, psnrs = [], [], []
    for start in range(0, images.shape[0], batch_size):
        target = to_float(images[start : start + batch_size]).to(device)
        latents = model.codec.encode(unit_to_signed(target))
        mean, logvar = model.adapter.posterior(latents, context)
        kl = gaussian_kl(mean, logvar)
        decoded = model.codec.decode(model.adapter.latents_from_noise(mean, context))
        probs = signed_to_unit(decoded)
        bits.append(recon_bits_per_pixel(probs, target, kl, eps=PIXEL_EPS, reduction="none").cpu())
        sq_errors.append((probs - target).square().flatten(1).mean(1).cpu())
        psnrs.append(psnr(probs, target, reduction="none").cpu())
    return {"bits": torch.cat(bits), "mse": torch.cat(sq_errors), "psnr": torch.cat(psnrs)}


def evaluate(
    model,
    real_images: Mapping[str, Tensor],
    num_projections: int = 50,
    seed: int = 0,
    max_images: int | None = None,
    *,
    compositions: Sequence[str] | None = None,
    recon: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Concept, Compo and Recon of a ``ctxadapter.ContextAutoencoder`` on held-out images.

    For every context of ``real_images``, as many images as there are real ones (at most
    ``max_images``) are generated under that context, in eval mode, ``batch_size`` at a time,
    from a generator seeded by ``generation_seed`` (independent of the projections), and
    compared with the real ones by SW2 along ``num_projections`` random directions drawn from
    ``seed`` (the same directions for every context and every model). Recon, PSNR and MSE are
    measured on the real images of the single contexts, each reconstructed under its own
    context: encoder, posterior mean of the noise, context layers, latent head, decoder; the
    decoded image in ``[0, 1]`` is the Bernoulli mean (clamped to ``[1e-4, 1 - 1e-4]`` as in
    the training's pixel loss) and the KL of the posterior is added to the negative
    log-likelihood. A pooled adapter ignores the contexts, as it does in training.

    Args:
        model: a ``ctxadapter.ContextAutoencoder`` (its modes are restored afterwards).
        real_images: context name (``"obs"``, a concept, ``"a+b"``) -> held-out images of any
            kind the model reads (``ctxadapter.images.prepare_images``: ``uint8``
            ``(N, H, W, 3)`` as ``heldout_quad_images`` gives them, floats ``(N, 3, H, W)``,
            PIL images...); resized to the model's resolution if needed.
        num_projections: random directions of SW2 (the paper: 50).
        seed: seed of the directions and of the generated images.
        max_images: use at most this many images per context (default: all).
        compositions: the contexts averaged into Compo (default: every ``"a+b"`` context).
        recon: also measure Recon, PSNR and MSE (one encoder and decoder pass per image).
        batch_size: images per generator, encoder or decoder pass.

    Returns:
        A JSON-serializable dict::

            concept, compo               mean SW2 over single contexts / compositions (or None)
            recon_bpp, recon_psnr_db, recon_mse   over every single-context image (or None)
            per_context: {name: {kind, num_images, sw2, recon_bpp, recon_psnr_db, recon_mse}}
            concept_contexts, compo_contexts, num_projections, seed, max_images,
            recon_num_images, resolution, pooled
    """
    if not real_images:
        raise ValueError("real_images is empty: pass at least one context's images")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_images is not None and (int(max_images) != max_images or max_images < 1):
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    concepts = model.adapter.concepts
    names: dict[str, str] = {}
    for key in real_images:
        name = context_name(parse_context(key, concepts))
        if name in names.values():
            raise ValueError(f"context {key!r} appears twice in real_images (as {name!r})")
        names[key] = name
    if compositions is not None:
        compositions = [context_name(parse_context(c, concepts)) for c in compositions]

    resolution = tuple(model.resolution)
    per_context: dict[str, dict] = {}
    real: dict[str, Tensor] = {}
    generated: dict[str, Tensor] = {}
    recon_parts: list[dict[str, Tensor]] = []
    with eval_mode(model):
        for key, name in names.items():
            images = real_images[key]
            if max_images is not None:
                images = images[:max_images]
            images = prepare_images(images, resolution)
            n = images.shape[0]
            fake = _generate(model, name, n, seed, int(batch_size))
            if fake.shape != images.shape:
                raise ValueError(
                    f"context {name!r}: generated images have shape "
                    f"{tuple(fake.shape)}, the real ones {tuple(images.shape)}"
                )
            entry = {
                "kind": "composition" if is_composition(name) else "single",
                "num_images": n,
                "sw2": None,
                "recon_bpp": None,
                "recon_psnr_db": None,
                "recon_mse": None,
            }
            if recon and not is_composition(name):
                part = _reconstruct(model, images, name, int(batch_size))
                recon_parts.append(part)
                entry.update(
                    recon_bpp=part["bits"].mean().item(),
                    recon_psnr_db=part["psnr"].mean().item(),
                    recon_mse=part["mse"].mean().item(),
                )
            per_context[name] = entry
            real[name], generated[name] = images, fake
    scores = concept_compo_scores(
        real, generated, compositions=compositions, num_projections=num_projections, seed=seed
    )
    for name, value in scores.per_context.items():
        per_context[name]["sw2"] = value
        per_context[name]["num_images"] = scores.num_images[name]

    results = {
        "concept": scores.concept,
        "compo": scores.compo,
        "recon_bpp": None,
        "recon_psnr_db": None,
        "recon_mse": None,
        "recon_num_images": 0,
        "per_context": per_context,
        "concept_contexts": list(scores.concept_contexts),
        "compo_contexts": list(scores.compo_contexts),
        "num_projections": scores.num_projections,
        "seed": scores.seed,
        "max_images": max_images,
        "resolution": list(resolution),
        "pooled": bool(getattr(model.adapter, "pooled", False)),
    }
    if recon_parts:
        bits = torch.cat([p["bits"] for p in recon_parts])
        results.update(
            recon_bpp=bits.mean().item(),
            recon_psnr_db=torch.cat([p["psnr"] for p in recon_parts]).mean().item(),
            recon_mse=torch.cat([p["mse"] for p in recon_parts]).mean().item(),
            recon_num_images=int(bits.numel()),
        )
    return results


# --------------------------------------------------------------------------------------------
# display
# --------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(results: Mapping) -> str:
    """A markdown table of ``evaluate``'s results: one row per single context, one per
    composition, then the means (Concept, Compo, Recon) with their image counts, and a line
    with the number of projections and the seed."""
    per_context = results["per_context"]
    lines = [
        "| context | kind | images | SW2 | Recon (bits/px) | PSNR (dB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    singles = [n for n, e in per_context.items() if e["kind"] != "composition"]
    compos = [n for n, e in per_context.items() if e["kind"] == "composition"]
    for name in singles + compos:
        entry = per_context[name]
        lines.append(
            f"| {name} | {entry['kind']} | {entry['num_images']} | "
            f"{_fmt(entry['sw2'])} | {_fmt(entry['recon_bpp'])} | "
            f"{_fmt(entry['recon_psnr_db'], 2)} |"
        )

    def images_of(names) -> int:
        return sum(per_context[n]["num_images"] for n in names)

    concept_names = results.get("concept_contexts", singles)
    compo_names = results.get("compo_contexts", compos)
    lines.append(
        f"| **Concept** (mean of {len(concept_names)}) | mean | "
        f"{images_of(concept_names)} | {_fmt(results.get('concept'))} | | |"
    )
    lines.append(
        f"| **Compo** (mean of {len(compo_names)}) | mean | {images_of(compo_names)} | "
        f"{_fmt(results.get('compo'))} | | |"
    )
    lines.append(
        f"| **Recon** (single contexts) | mean | {results.get('recon_num_images', 0)} "
        f"| | {_fmt(results.get('recon_bpp'))} | "
        f"{_fmt(results.get('recon_psnr_db'), 2)} |"
    )
    lines.append("")
    lines.append(
        f"SW2 with {results['num_projections']} random projections (seed "
        f"{results['seed']}), real and generated images per side as listed, at "
        f"{'x'.join(map(str, results.get('resolution', [])))} pixels"
        f"{' (pooled adapter)' if results.get('pooled') else ''}."
    )
    return "\n".join(lines)
