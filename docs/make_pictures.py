"""Make the quad pictures of the documentation (``docs/images/quad_*.png``).

    accelerate launch --num_processes 1 --cpu examples/finetune.py --output_dir /tmp/docs-run \
        --report_to none                                  # the quickstart's run: the defaults
    python docs/make_pictures.py --quad_run /tmp/docs-run

Writes:

- ``quad_data.png``: held-out quad images (``ctxadapter.data.quad``, ``test`` split), one row per
  training context and two compositions (needs no model);
- ``quad_contexts.png``, ``quad_compositions.png``, ``quad_concept_graph.png``: copies of the
  pictures the training run wrote into its output folder;
- ``quad_counterfactuals.png``: ``examples/generate.py --images`` on a few held-out
  observational quad images, saved as PNG files first.

The real-photograph pictures (``real_*.png``) come from ``examples/real_images.py``. Finally
every PNG of the folder is stored with a 256-colour palette (``--no_compress`` to skip), which
keeps the documentation's pictures small.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from ctxadapter.data import quad
from ctxadapter.viz import image_grid

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"


def quad_data_picture(num_samples: int = 8, seed: int = 0) -> Image.Image:
    contexts = [*quad.TRAIN_CONTEXTS, "quad1+size", "quad2+orientation"]
    tiles = []
    for context in contexts:
        images, _ = quad.sample(context, num_samples, seed=seed, split="test")
        tiles += [Image.fromarray(image) for image in images]
    return image_grid(tiles, len(contexts), contexts)


def compress(folder: Path) -> None:
    """Re-save every RGB PNG of ``folder`` with an adaptive 256-colour palette."""
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            if image.mode == "P":
                continue
            small = image.convert("RGB").quantize(256)
        small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quad_run", default=None, help="Output folder of the default training.")
    parser.add_argument("--num_samples", type=int, default=8, help="Images per row.")
    parser.add_argument("--output_dir", default=str(IMAGES), help="Where the PNGs go.")
    parser.add_argument("--no_compress", action="store_true", help="Keep the PNGs in full RGB.")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    quad_data_picture(args.num_samples).save(out / "quad_data.png")
    print(out / "quad_data.png")
    if args.quad_run is not None:
        quad_run_pictures(Path(args.quad_run), out, args.num_samples)
    if not args.no_compress:
        compress(out)


def quad_run_pictures(run: Path, out: Path, num_samples: int) -> None:
    for name in ("contexts", "compositions", "concept_graph"):
        shutil.copyfile(run / f"{name}.png", out / f"quad_{name}.png")
        print(out / f"quad_{name}.png")
    with tempfile.TemporaryDirectory() as folder:
        images, _ = quad.sample("obs", num_samples, seed=1, split="test")
        files = []
        for i, image in enumerate(images):
            files.append(str(Path(folder) / f"heldout_{i}.png"))
            Image.fromarray(image).save(files[-1])
        command = [
            sys.executable,
            str(ROOT / "examples" / "generate.py"),
            "--adapter",
            str(run),
            "--output_dir",
            folder,
            "--num_samples",
            str(num_samples),
            "--images",
            *files,
        ]
        subprocess.run(command, check=True)
        shutil.copyfile(Path(folder) / "counterfactuals.png", out / "quad_counterfactuals.png")
        print(out / "quad_counterfactuals.png")


if __name__ == "__main__":
    main()
