"""Score a trained adapter: Concept, Compo (sliced Wasserstein-2) and Recon (bits per pixel).

    python examples/evaluate.py --adapter ctxadapter-quad               # held-out quad data
    python examples/evaluate.py --adapter ctxadapter-quad --quad_variant independent
    python examples/evaluate.py --adapter user/my-adapter \
        --dataset_name user/my-interventional-images --context_column context

By default the held-out quad images (the ``test`` split of the 7 training contexts and the 9
held-out compositions, ``--images_per_context`` each) are used. With ``--dataset_name`` or
``--train_data_dir`` the rows of the dataset's ``test`` split (else ``validation``, else
``train``) are grouped by their context column, ``--images_per_context`` per context (the first
ones, in dataset order); contexts joining several concepts with ``+`` count as compositions.

SW2 values mean little alone, so they are reported against a reference: the CM pooled
ablation (an adapter trained with ``pooled`` set, ``--adapter_config '{"pooled": true}'``,
on the same data) evaluated on the same images
when ``--reference`` names it, else the real images' own split-half SW2 (the first half of each
context's images against the second), a floor that no adapter goes below at that sample size.

Prints a table (one row per context, then the means) and the reference, and writes every number
to ``--output`` (JSON; by default ``evaluation.json`` in the adapter's folder). See
``docs/results.md`` for the method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ctxadapter import ContextAutoencoder
from ctxadapter.evaluation import (
    concept_compo_scores,
    evaluate,
    format_table,
    heldout_quad_images,
    prepare_images,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--adapter",
        required=True,
        help="Adapter folder or Hub id (its base autoencoder is loaded too).",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="The CM pooled ablation (an adapter trained with --adapter_config "
        "'{\"pooled\": true}' on the same data), "
        "evaluated on the same images as the reference. Default: the real images' split-half "
        "SW2.",
    )
    data = parser.add_argument_group("data (default: held-out quad images)")
    data.add_argument(
        "--dataset_name",
        default=None,
        help="A Hub dataset id, a save_to_disk folder or a local dataset with a context column.",
    )
    data.add_argument("--dataset_config_name", default=None, help="The dataset's configuration.")
    data.add_argument(
        "--train_data_dir",
        default=None,
        help="An imagefolder with a metadata.jsonl holding a context column.",
    )
    data.add_argument("--image_column", default="image", help="The column holding the images.")
    data.add_argument(
        "--context_column", default="context", help="The column holding each image's context."
    )
    data.add_argument("--cache_dir", default=None, help="The datasets cache folder.")
    data.add_argument(
        "--quad_variant",
        choices=("dependent", "independent"),
        default="dependent",
        help="Held-out quad data: the dependent or the independent variant.",
    )
    data.add_argument("--quad_seed", type=int, default=0, help="Seed of the held-out quad data.")
    data.add_argument(
        "--images_per_context",
        type=int,
        default=400,
        help="Real (and generated) images per context.",
    )
    parser.add_argument(
        "--num_projections",
        type=int,
        default=50,
        help="Random projections of the sliced Wasserstein distance.",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the projections and of the generated images."
    )
    parser.add_argument("--no_recon", action="store_true", help="Skip Recon, PSNR and MSE.")
    parser.add_argument(
        "--batch_size", type=int, default=256, help="Images per generator, encoder or decoder pass."
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="Device to run on: cuda if available, else cpu.",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="Where to write the results as JSON ('' to skip). Default: evaluation.json in the "
        "adapter's folder (for a Hub id: evaluation-<name>.json here).",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        local = Path(args.adapter).is_dir()
        name = "evaluation.json" if local else f"evaluation-{Path(args.adapter).name}.json"
        args.output = str(Path(args.adapter, name) if local else Path(name))
    if args.dataset_name and args.train_data_dir:
        parser.error("pass --dataset_name or --train_data_dir, not both")
    if args.images_per_context < 1:
        parser.error("--images_per_context must be >= 1")
    return args


def dataset_images(args: argparse.Namespace, model: ContextAutoencoder) -> dict[str, torch.Tensor]:
    """The first ``--images_per_context`` images of each context of the dataset's evaluation
    split, resized and centre-cropped to the model's resolution: ``uint8`` ``(N, 3, H, W)``."""
    from ctxadapter.contexts import context_name, parse_context
    from ctxadapter.data import context_strings, load_image_dataset
    from ctxadapter.images import preprocess_images

    data = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        cache_dir=args.cache_dir,
    )
    split = next(s for s in ("test", "validation", "train") if s in data and len(data[s]))
    rows = data[split]
    for column in (args.image_column, args.context_column):
        if column not in rows.column_names:
            raise ValueError(
                f"The column {column!r} is not in the {split!r} split; its columns "
                f"are {rows.column_names}."
            )
    concepts = model.adapter.concepts
    indices: dict[str, list[int]] = {}
    for i, raw in enumerate(context_strings(rows, args.context_column)):
        name = context_name(parse_context(raw, concepts))
        if len(indices.setdefault(name, [])) < args.images_per_context:
            indices[name].append(i)
    out = {
        name: preprocess_images(
            rows.select(picked)[args.image_column], model.resolution, output="uint8"
        )
        for name, picked in indices.items()
    }
    print(
        f"Evaluating on the {split!r} split: {len(out)} contexts, "
        f"{sum(len(v) for v in out.values())} images."
    )
    return out


def split_half(
    real: dict[str, torch.Tensor], resolution: tuple[int, int], num_projections: int, seed: int
) -> dict | None:
    """The real images' own SW2: the first half of each context's images against the second
    (contexts with fewer than two images left out), with the projections ``evaluate`` uses.
    Returns ``concept``, ``compo`` and ``per_context`` SW2, and the images per side; ``None``
    when no context has two images."""
    halves = {
        name: prepare_images(images, resolution)
        for name, images in real.items()
        if len(images) >= 2
    }
    if not halves:
        return None
    scores = concept_compo_scores(
        {name: images[: len(images) // 2] for name, images in halves.items()},
        {name: images[len(images) // 2 :] for name, images in halves.items()},
        num_projections=num_projections,
        seed=seed,
    )
    return {
        "kind": "split_half",
        "concept": scores.concept,
        "compo": scores.compo,
        "per_context": scores.per_context,
        "num_images": scores.num_images,
    }


def format_reference(results: dict, reference: dict | None) -> str:
    """Lines comparing the adapter's Concept and Compo with the reference's."""
    if reference is None:
        return "Reference: none (no context has two images to split in halves; use --reference)."
    if reference["kind"] == "split_half":
        title = "the real images' split-half SW2 (a floor; half the images per side)"
    else:
        title = f"the pooled ablation {reference['adapter']}"
    lines = [f"Reference: {title}."]
    for score in ("concept", "compo"):
        ours, theirs = results[score], reference[score]
        if ours is None or theirs is None:
            continue
        ratio = f" ({ours / theirs:.2f}x the reference)" if theirs > 0 else ""
        lines.append(f"{score.capitalize()}: {ours:.4f} against {theirs:.4f}{ratio}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model = ContextAutoencoder.from_pretrained(args.adapter).to(args.device)
    if args.dataset_name or args.train_data_dir:
        real = dataset_images(args, model)
        data = {"dataset_name": args.dataset_name, "train_data_dir": args.train_data_dir}
    else:
        real = heldout_quad_images(
            args.images_per_context, dependent=args.quad_variant == "dependent", seed=args.quad_seed
        )
        data = {"quad_variant": args.quad_variant, "quad_seed": args.quad_seed}
    results = evaluate(
        model,
        real,
        num_projections=args.num_projections,
        seed=args.seed,
        recon=not args.no_recon,
        batch_size=args.batch_size,
    )
    if args.reference:
        pooled = ContextAutoencoder.from_pretrained(args.reference).to(args.device)
        scores = evaluate(
            pooled, real, num_projections=args.num_projections, seed=args.seed, recon=False
        )
        reference = {"kind": "adapter", "adapter": str(args.reference)} | {
            key: scores[key] for key in ("concept", "compo")
        }
        reference["per_context"] = {k: v["sw2"] for k, v in scores["per_context"].items()}
    else:
        reference = split_half(real, model.resolution, args.num_projections, args.seed)
    results = {"adapter": str(args.adapter), "data": data, **results, "reference": reference}
    print(format_table(results))
    print(format_reference(results, reference))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        print(f"Results written to {args.output}")
    return results


if __name__ == "__main__":
    main()
