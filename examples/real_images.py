"""Worked example on real photographs, fully offline: crops of the photographs bundled with
scikit-image, with four image transformations (hue, blur, rotation, scale) as concepts.

    pip install -e ".[examples]"            # scikit-image, for its bundled photographs
    python examples/real_images.py          # data -> adapter -> pictures in docs/images/
    python examples/real_images.py --pretrain_steps 600
                                            # a photo autoencoder first (as the docs' pictures)
    python examples/real_images.py --pretrained_model_name_or_path ctxadapter:photo-autoencoder
                                            # the general photo autoencoder that ships, offline
    python examples/real_images.py --pretrained_model_name_or_path stabilityai/sd-vae-ft-mse \
        --images_per_context 2000 --output_dir ctxadapter-real --pictures_dir real-pictures

Steps (see docs/real-images.md):

1. ``ctxadapter.data.photos.build_dataset`` draws the interventional data (``obs`` and one context
   per transformation for training; every pair of transformations as held-out compositions in
   ``test``) and ``save_to_disk`` writes it to ``--data_dir``;
2. ``ctxadapter.training.finetune`` trains an adapter on it with ``--dataset_name <data_dir>``,
   exactly as ``examples/finetune.py --dataset_name <data_dir>`` would;
3. the pictures are written into ``--pictures_dir`` with the prefix ``--prefix``: the data
   (``data.png``), samples per context and per composition, the learned concept graph and
   counterfactual edits of held-out photographs' crops, as the adapter makes them and
   exaggerated three times (``strength=3``);
4. ``ctxadapter.evaluation.edit_scores`` scores the edits of ``--num_edit_images`` held-out
   crops (PSNR against the input, how much each concept changes them) into
   ``<output_dir>/edit_scores.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ctxadapter import ContextAutoencoder
from ctxadapter.data import photos
from ctxadapter.evaluation import edit_scores
from ctxadapter.heads import HEADS
from ctxadapter.training import (
    QUAD_AUTOENCODER,
    FinetuneArguments,
    PretrainArguments,
    finetune,
    pretrain_autoencoder,
)
from ctxadapter.viz import counterfactual_grid, image_grid, write_report

ROOT = Path(__file__).resolve().parent.parent
EXAGGERATED = 3
"""The ``strength`` of the second counterfactual picture."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        default=str(QUAD_AUTOENCODER),
        help="The frozen autoencoder: a Hub id, a folder, or 'ctxadapter:photo-autoencoder' "
        "(the general photo autoencoder that ships with ctxadapter). Default: the project's "
        "64 x 64 quad autoencoder.",
    )
    parser.add_argument("--resolution", type=int, default=64, help="Image size.")
    parser.add_argument(
        "--images_per_context", type=int, default=1000, help="Training images per context."
    )
    parser.add_argument("--output_dir", default="ctxadapter-real", help="The training output.")
    parser.add_argument(
        "--data_dir", default=None, help="Where the dataset is saved; None: <output_dir>-data."
    )
    parser.add_argument(
        "--pretrain_steps",
        type=int,
        default=0,
        help="First pretrain a small AutoencoderKL on the photographs for this many steps "
        "(examples/pretrain_autoencoder.py) and use it instead of "
        "--pretrained_model_name_or_path. 0: no pretraining.",
    )
    parser.add_argument(
        "--pretrain_batch_size", type=int, default=32, help="Batch size of that pretraining."
    )
    parser.add_argument(
        "--pretrain_block_out_channels",
        type=int,
        nargs="+",
        default=[16, 32, 64, 64],
        help="Channels per level of that autoencoder; n levels downsample by 2**(n-1).",
    )
    parser.add_argument(
        "--heads",
        default="auto",
        choices=list(HEADS),
        help="The adapter's heads (the AdapterConfig field of finetune.py's --adapter_config).",
    )
    parser.add_argument("--train_batch_size", type=int, default=256, help="Batch size.")
    parser.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Optimizer steps; None: --num_train_epochs.",
    )
    parser.add_argument("--num_train_epochs", type=int, default=100, help="Epochs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data and the training.")
    parser.add_argument(
        "--pictures_dir", default=str(ROOT / "docs" / "images"), help="Where the PNGs go."
    )
    parser.add_argument("--prefix", default="real_", help="File-name prefix of the PNGs.")
    parser.add_argument("--num_samples", type=int, default=8, help="Images per grid row.")
    parser.add_argument(
        "--num_edit_images",
        type=int,
        default=200,
        help="Held-out observational crops whose edits are scored (edit_scores.json).",
    )
    parser.add_argument("--report_to", default="none", help="As in finetune.py.")
    return parser.parse_args(argv)


def data_picture(data, num_samples: int):
    """Held-out samples of each training context and two compositions: what the data looks
    like."""
    contexts = [*photos.TRAIN_CONTEXTS, "hue+rotation", "blur+scale"]
    test = data["test"]
    column = test["context"]
    tiles = []
    for context in contexts:
        rows = [i for i, c in enumerate(column) if c == context][:num_samples]
        tiles += test.select(rows)["image"]
    return image_grid(tiles, len(contexts), contexts)


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    data_dir = args.data_dir or f"{args.output_dir.rstrip('/')}-data"
    data = photos.build_dataset(
        images_per_context=args.images_per_context, size=args.resolution, seed=args.seed
    )
    data.save_to_disk(data_dir)
    print(f"Dataset saved to {data_dir}: {data}")

    autoencoder = args.pretrained_model_name_or_path
    if args.pretrain_steps:
        autoencoder = f"{args.output_dir.rstrip('/')}-autoencoder"
        pretrain_autoencoder(
            PretrainArguments(
                dataset_name=data_dir,
                resolution=args.resolution,
                output_dir=autoencoder,
                max_train_steps=args.pretrain_steps,
                train_batch_size=args.pretrain_batch_size,
                block_out_channels=args.pretrain_block_out_channels,
                seed=args.seed,
                report_to=args.report_to,
            )
        )
    finetune(
        FinetuneArguments(
            pretrained_model_name_or_path=autoencoder,
            dataset_name=data_dir,
            resolution=args.resolution,
            concepts=list(photos.CONCEPTS),
            adapter_config={"heads": args.heads},
            output_dir=args.output_dir,
            train_batch_size=args.train_batch_size,
            max_train_steps=args.max_train_steps,
            num_train_epochs=args.num_train_epochs,
            seed=args.seed,
            report_to=args.report_to,
        )
    )

    model = ContextAutoencoder.from_pretrained(args.output_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    test = data["test"]
    observational = [i for i, c in enumerate(test["context"]) if c == "obs"][: args.num_samples]
    held_out = [image.convert("RGB") for image in test.select(observational)["image"]]
    pictures_dir = Path(args.pictures_dir)
    pictures_dir.mkdir(parents=True, exist_ok=True)
    written = write_report(
        model,
        pictures_dir / "tmp-real-report",
        num_samples=args.num_samples,
        seed=args.seed,
        compositions=list(photos.TEST_COMPOSITIONS),
        images=held_out,
    )
    paths = {}
    for name, path in written.items():
        target = pictures_dir / f"{args.prefix}{name}.png"
        Path(path).replace(target)
        paths[name] = str(target)
    (pictures_dir / "tmp-real-report").rmdir()
    target = pictures_dir / f"{args.prefix}data.png"
    data_picture(data, args.num_samples).save(target)
    paths["data"] = str(target)
    # The same edits, exaggerated: what each concept governs, easier to see
    target = pictures_dir / f"{args.prefix}counterfactuals_x{EXAGGERATED}.png"
    counterfactual_grid(model, held_out, strength=EXAGGERATED).save(target)
    paths[f"counterfactuals_x{EXAGGERATED}"] = str(target)
    for path in paths.values():
        print(path)

    # How the edits keep and change held-out photographs, written beside the adapter
    observational = [i for i, c in enumerate(test["context"]) if c == "obs"]
    crops = test.select(observational[: args.num_edit_images])["image"]
    scores = edit_scores(model, np.stack([np.asarray(image.convert("RGB")) for image in crops]))
    Path(args.output_dir, "edit_scores.json").write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores, indent=2))
    return paths


if __name__ == "__main__":
    main()
