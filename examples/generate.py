"""Draw the pictures of a trained adapter: samples per context and per composition, the learned
concept graph and, given real images, their counterfactual edits.

    python examples/generate.py --adapter user/my-adapter --output_dir samples
    python examples/generate.py --adapter my-adapter --compositions quad1+size quad2+quad3 \
        --images photo1.png photo2.png --device cuda

Writes ``contexts.png``, ``compositions.png``, ``concept_graph.png`` (and
``counterfactuals.png`` with ``--images``) into ``--output_dir`` and prints their paths.
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from ctxadapter import ContextAutoencoder
from ctxadapter.images import preprocess_images
from ctxadapter.viz import write_report


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
    parser.add_argument("--output_dir", default="samples", help="Where to write the PNGs.")
    parser.add_argument("--num_samples", type=int, default=8, help="Samples per context.")
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the noise, shared by every row of a grid."
    )
    parser.add_argument(
        "--compositions",
        nargs="*",
        default=None,
        help="Compositions to sample, e.g. quad1+size; None: every pair.",
    )
    parser.add_argument(
        "--images",
        nargs="*",
        default=None,
        help="Image files to edit counterfactually (center-cropped and resized "
        "to the adapter's resolution).",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="Device to run on: cuda if available, else cpu.",
    )
    return parser.parse_args(argv)


def load_images(model: ContextAutoencoder, paths: list[str]) -> torch.Tensor:
    """Image files -> ``(N, 3, H, W)`` in ``[0, 1]`` at ``model.resolution`` (center crop)."""
    pil_images = []
    for path in paths:
        with Image.open(path) as image:
            pil_images.append(image.convert("RGB"))
    return preprocess_images(pil_images, model.resolution, output="unit")


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    model = ContextAutoencoder.from_pretrained(args.adapter).to(args.device)
    images = load_images(model, args.images) if args.images else None
    paths = write_report(
        model,
        args.output_dir,
        num_samples=args.num_samples,
        seed=args.seed,
        compositions=args.compositions,
        images=images,
    )
    for path in paths.values():
        print(path)
    return paths


if __name__ == "__main__":
    main()
