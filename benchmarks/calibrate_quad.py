"""Calibrate a trained quad adapter's interventions, then score it (a second training stage).

Loads an adapter trained on quad (e.g. by ``benchmarks/compare_quad.py``), encodes ``--images``
training images of each single-concept intervention (quad's ``train`` stream of ``--data_seed``,
the adapter's own training seed; never held-out images), runs
``ctxadapter.calibration.calibrate_interventions``, saves the calibrated adapter to
``--output_dir`` and scores it with ``ctxadapter.evaluation.evaluate`` on the held-out split.

    python benchmarks/calibrate_quad.py --adapter compare-quad/dependent/cm/seed0 \\
        --data_seed 0 --output_dir calibrated/dependent/seed0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from ctxadapter import ContextAutoencoder, quad  # noqa: E402
from ctxadapter.calibration import calibrate_interventions  # noqa: E402
from ctxadapter.evaluation import evaluate, heldout_quad_images, prepare_images  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="A trained quad adapter folder.")
    parser.add_argument("--output_dir", required=True, help="Where the calibrated adapter goes.")
    parser.add_argument("--quad_variant", choices=("dependent", "independent"), default="dependent")
    parser.add_argument("--data_seed", type=int, default=0, help="The adapter's training seed.")
    parser.add_argument("--images", type=int, default=1500, help="Training images per context.")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the calibration.")
    parser.add_argument("--images_per_context", type=int, default=400, help="Held-out images.")
    parser.add_argument("--heldout_split", choices=("test", "validation"), default="test")
    parser.add_argument("--no_recon", action="store_true", help="Skip Recon and PSNR.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model = ContextAutoencoder.from_pretrained(args.adapter).eval()
    dependent = args.quad_variant == "dependent"
    start = time.perf_counter()
    latents = {}
    with torch.no_grad():
        for context in model.adapter.concepts:
            images, _ = quad.sample(
                context, args.images, seed=args.data_seed, dependent=dependent, split="train"
            )
            pixels = prepare_images(torch.from_numpy(images), tuple(model.resolution))
            pixels = pixels.float() / 255 if pixels.dtype == torch.uint8 else pixels
            latents[context] = torch.cat(
                [model.codec.encode(chunk * 2 - 1) for chunk in pixels.split(250)]
            )
    encode_s = time.perf_counter() - start
    losses = calibrate_interventions(
        model,
        latents,
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    calibrate_s = time.perf_counter() - start - encode_s
    model.save_pretrained(args.output_dir)
    real = heldout_quad_images(args.images_per_context, dependent, seed=0, split=args.heldout_split)
    results = evaluate(model, real, recon=not args.no_recon)
    report = {
        "settings": vars(args),
        "encode_seconds": encode_s,
        "calibrate_seconds": calibrate_s,
        "first_losses": losses[: len(latents)],
        "last_losses": losses[-len(latents) :],
        "results": results,
    }
    path = Path(args.output_dir) / "calibration.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Concept {results['concept']:.4f}  Compo {results['compo']:.4f}  -> {path}")
    return report


if __name__ == "__main__":
    main()
