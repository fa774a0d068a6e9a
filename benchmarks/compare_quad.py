"""The project's comparison on quad: the context module against its pooled ablation.

For each quad variant (dependent, independent), each method and each seed, train an adapter
in-process with ``ctxadapter.training.finetune`` on the same frozen autoencoder and the same
budget, score it on held-out quad images with ``ctxadapter.evaluation.evaluate`` and write a
markdown table (mean +- standard error over seeds) and a JSON file with every run.

Methods (``--variants``):

- ``cm``: the default adapter (latent-space Gaussian loss) - the paper's "CM (frozen)";
- ``pooled``: the same with ``--pooled`` (context labels ignored) - "CM pooled";
- ``pixel``: ``--loss pixel`` (the paper's Bernoulli pixel loss through the frozen decoder);
- ``finetune``: ``--loss pixel --decoder_lora_rank 4`` - "CM (fine-tune)" as a decoder LoRA.

The portable figure is the ratio cm / pooled for Concept and Compo (the paper: about 0.5;
``docs/results.md``). Every run uses the same held-out images (``--heldout_seed``), the same
projections and the same generation noise (``--eval_seed``).

    python benchmarks/compare_quad.py                                   # everything, long
    python benchmarks/compare_quad.py --data_variants dependent --variants cm pooled  # defaults
    python benchmarks/compare_quad.py --smoke                           # seconds, for CI

Adapters are written under ``--work_dir/<data variant>/<method>/seed<k>``; ``--reuse`` skips
training where that folder already holds a finished adapter (its ``metrics.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from ctxadapter import ContextAutoencoder  # noqa: E402
from ctxadapter.evaluation import (  # noqa: E402
    counterfactual_shifts,
    evaluate,
    format_table,
    graph_auroc,
    heldout_quad_images,
    prepare_images,
)
from ctxadapter.quad import ancestral_relation  # noqa: E402
from ctxadapter.training import QUAD_AUTOENCODER, FinetuneArguments, finetune  # noqa: E402

VARIANTS: dict[str, dict] = {
    "cm": {},
    "pooled": {"pooled": True},
    "pixel": {"loss": "pixel"},
    "finetune": {"loss": "pixel", "decoder_lora_rank": 4},
}
"""Method name -> the FinetuneArguments fields it sets (on top of the shared budget)."""

LABELS = {
    "cm": "(a) ctxadapter default (latent loss)",
    "pooled": "(b) pooled (labels ignored)",
    "pixel": "(c) pixel loss",
    "finetune": "(d) pixel loss + decoder LoRA r4",
}
DATA_VARIANTS = ("dependent", "independent")
METRICS = (
    "concept",
    "compo",
    "recon_bpp",
    "recon_psnr_db",
    "base_psnr_db",
    "graph_auroc",
    "edit_moved_min",
    "edit_drift_max",
)
EDIT_IMAGES = 200
"""Observational images edited per run for the counterfactual scores."""


def quad_scores(model, heldout: dict, dependent: bool) -> dict:
    """The scores beside Concept / Compo / Recon: the base autoencoder's own PSNR on the
    single-context images, the concept graph's AUROC against the SCM's ancestral relation
    (dependent quad; None on independent quad, which has no edges), and the counterfactual edits
    of ``EDIT_IMAGES`` observational images under each quadrant: the smallest fraction of the
    way an edit moved its own quadrant, and the largest drift of a quadrant that is no
    descendant of the intervened one (``ctxadapter.evaluation.counterfactual_shifts``)."""
    singles = [name for name in heldout if "+" not in name]
    errors = []
    with torch.no_grad():
        for name in singles:
            for start in range(0, len(heldout[name]), 256):
                real = prepare_images(heldout[name][start : start + 256], model.resolution)
                real = real.to(model.codec.device).float() / 255
                decoded = model.codec.decode(model.codec.encode(real * 2 - 1))
                own = ((decoded + 1) / 2).clamp(0, 1)
                errors.append((own - real).pow(2).flatten(1).mean(1).cpu())
    base_psnr = (-10 * torch.log10(torch.cat(errors).clamp_min(1e-10))).mean().item()
    concepts = list(model.adapter.concepts)
    auroc = None
    if dependent:
        truth = ancestral_relation(concepts, dependent=True)
        auroc = graph_auroc(model.adapter.concept_graph(), truth)
    edits = counterfactual_shifts(
        model, heldout["obs"][:EDIT_IMAGES], heldout, dependent=dependent
    )["summary"]
    return {
        "base_psnr_db": base_psnr,
        "graph_auroc": auroc,
        "edit_moved_min": min(s["moved"] for s in edits.values() if s["moved"] is not None),
        "edit_drift_max": max(
            (s["max_drift"] for s in edits.values() if s["max_drift"] is not None), default=None
        ),
        "edits": edits,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base_autoencoder",
        default=None,
        help=f"The frozen AutoencoderKL folder (default: {QUAD_AUTOENCODER}; "
        "with --smoke: a tiny random one).",
    )
    parser.add_argument(
        "--work_dir",
        default="compare-quad",
        help="Adapters, data caches and results are written here.",
    )
    parser.add_argument(
        "--data_variants", nargs="+", choices=DATA_VARIANTS, default=list(DATA_VARIANTS)
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    budget = parser.add_argument_group("training budget (the same for every method)")
    defaults = FinetuneArguments()  # the budget of a plain examples/finetune.py run
    budget.add_argument(
        "--quad_images_per_context", type=int, default=defaults.quad_images_per_context
    )
    budget.add_argument(
        "--max_train_steps",
        type=int,
        default=defaults.max_train_steps,
        help="Default: --num_train_epochs epochs with early stopping, as finetune.py.",
    )
    budget.add_argument("--train_batch_size", type=int, default=defaults.train_batch_size)
    budget.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Training resolution (default: the autoencoder's sample_size).",
    )
    budget.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="Other FinetuneArguments fields for every run, e.g. "
        "learning_rate=3e-3 early_stopping_patience=none.",
    )
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--images_per_context", type=int, default=400)
    evaluation.add_argument("--num_projections", type=int, default=50)
    evaluation.add_argument(
        "--eval_seed", type=int, default=0, help="Seed of the projections and the generated images."
    )
    evaluation.add_argument(
        "--heldout_seed", type=int, default=0, help="Seed of the held-out quad images."
    )
    evaluation.add_argument(
        "--heldout_split",
        choices=("test", "validation"),
        default="test",
        help="Score on the test images (the reported numbers) or on validation images (to "
        "choose settings without looking at the test set).",
    )
    evaluation.add_argument(
        "--no_recon", action="store_true", help="Skip Recon and PSNR (about half the time)."
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Evaluate existing adapters instead of training them again.",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--output",
        default=None,
        help="Results path without extension (default: <work_dir>/results); writes .md and .json.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="A seconds-long run for CI: tiny autoencoder (unless "
        "--base_autoencoder), resolution 32, 16 images per context, 3 steps, "
        "8 held-out images per context, one seed, dependent data.",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.quad_images_per_context, args.max_train_steps, args.train_batch_size = 16, 3, 16
        args.images_per_context, args.num_projections = 8, 10
        args.resolution = args.resolution or 32
        args.seeds = args.seeds[:1]
        args.data_variants = args.data_variants[:1]
        args.set = ["exogenous_width=4", "concept_width=2", *args.set]
    return args


def _parse_value(field: dataclasses.Field, text: str):
    if text.lower() == "none":
        return None
    kind = str(field.type)
    if "bool" in kind:
        return text.lower() in ("1", "true", "yes")
    if "list" in kind:
        return text.split(",")
    if "int" in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def extra_fields(pairs: list[str]) -> dict:
    """``["learning_rate=3e-3", ...]`` -> typed FinetuneArguments fields."""
    fields = {f.name: f for f in dataclasses.fields(FinetuneArguments)}
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in fields:
            raise SystemExit(
                f"--set {pair!r}: expected FIELD=VALUE with a FinetuneArguments field name"
            )
        out[name] = _parse_value(fields[name], value)
    return out


def tiny_autoencoder(folder: Path) -> str:
    """A tiny random AutoencoderKL (8x downsampling) for --smoke."""
    from diffusers import AutoencoderKL

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=32,
            latent_channels=4,
        )
        vae.save_pretrained(folder)
    return str(folder)


def train_arguments(
    args, base: str, data_variant: str, variant: str, seed: int, output_dir: Path, extra: dict
) -> FinetuneArguments:
    fields = dict(
        pretrained_model_name_or_path=base,
        quad_variant=data_variant,
        seed=seed,
        output_dir=str(output_dir),
        report_to="none",
        cache_dir=str(Path(args.work_dir) / "cache"),
        quad_images_per_context=args.quad_images_per_context,
        max_train_steps=args.max_train_steps,
        train_batch_size=args.train_batch_size,
        resolution=args.resolution,
        checkpointing_steps=10**9,
        validation_steps=10**9,
    )
    fields.update(extra)
    fields.update(VARIANTS[variant])
    return FinetuneArguments(**fields)


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample standard deviation / sqrt(n); None for n < 2)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def summarize(runs: list[dict]) -> dict:
    """Per (data variant, method): mean and SE of each metric over seeds; per data variant: the
    ratios cm / pooled of Concept and Compo (ratio of the means, and mean +- SE of the per-seed
    ratios where both ran with the same seed)."""
    summary: dict = {}
    for run in runs:
        group = summary.setdefault(run["data_variant"], {}).setdefault(run["variant"], {})
        group.setdefault("seeds", []).append(run["seed"])
        for metric in METRICS:
            group.setdefault("_" + metric, []).append(run["results"][metric])
    for data_variant, groups in summary.items():
        for group in groups.values():
            for metric in METRICS:
                mean, se = mean_se(group.pop("_" + metric))
                group[metric] = {"mean": mean, "se": se}
        if "cm" in groups and "pooled" in groups:
            results = {
                (r["variant"], r["seed"]): r["results"]
                for r in runs
                if r["data_variant"] == data_variant
            }
            ratios = {}
            for metric in ("concept", "compo"):
                a, b = groups["cm"][metric]["mean"], groups["pooled"][metric]["mean"]
                paired = [
                    results[("cm", s)][metric] / results[("pooled", s)][metric]
                    for s in groups["cm"]["seeds"]
                    if ("pooled", s) in results
                ]
                mean, se = mean_se(paired)
                ratios[metric] = {
                    "ratio_of_means": a / b if a and b else None,
                    "paired_mean": mean,
                    "paired_se": se,
                }
            groups["ratio_cm_pooled"] = ratios
    return summary


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pm(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "not measured"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['se']:.{digits}f}" if stat["se"] is not None else "")


def markdown(summary: dict, args, runs: list[dict]) -> str:
    lines = [
        "# quad comparison: context module vs pooled ablation",
        "",
        f"Budget per run: {args.quad_images_per_context} training images per context, "
        + (
            f"{args.max_train_steps} steps"
            if args.max_train_steps
            else "the default epochs with early stopping"
        )
        + f" at batch {args.train_batch_size}"
        + (f", extra settings {' '.join(args.set)}" if args.set else "")
        + ". "
        f"Evaluation: {args.images_per_context} held-out images per context ({args.heldout_split} "
        f"split, seed {args.heldout_seed}), SW2 with {args.num_projections} projections (seed "
        f"{args.eval_seed}). Mean ± standard error over seeds.",
        "",
    ]
    for data_variant, groups in summary.items():
        lines += [
            f"## quad {data_variant}",
            "",
            "| method | seeds | Concept | Compo | Recon (bits/px) | PSNR (dB) | base PSNR (dB) "
            "| graph AUROC | edit moved (min) | edit drift (max) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for variant in VARIANTS:
            if variant not in groups:
                continue
            g = groups[variant]
            lines.append(
                f"| {LABELS[variant]} | {','.join(map(str, g['seeds']))} | "
                f"{_pm(g['concept'])} | {_pm(g['compo'])} | {_pm(g['recon_bpp'])} | "
                f"{_pm(g['recon_psnr_db'], 2)} | {_pm(g['base_psnr_db'], 2)} | "
                f"{_pm(g['graph_auroc'])} | {_pm(g['edit_moved_min'], 2)} | "
                f"{_pm(g['edit_drift_max'], 3)} |"
            )
        ratios = groups.get("ratio_cm_pooled")
        if ratios:
            lines.append("")
            for metric in ("concept", "compo"):
                r = ratios[metric]
                paired = (
                    f"; per-seed {r['paired_mean']:.3f}"
                    + (f" ± {r['paired_se']:.3f}" if r["paired_se"] is not None else "")
                    if r["paired_mean"] is not None
                    else ""
                )
                lines.append(
                    f"- ratio (a)/(b) {metric.capitalize()}: "
                    f"{_num(r['ratio_of_means'], 3)} (ratio of means{paired})"
                )
        lines.append("")
    lines += [
        "## runs",
        "",
        "| data | method | seed | steps | train s | eval s | Concept | Compo | Recon | PSNR "
        "| graph AUROC | edit moved (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        r = run["results"]
        lines.append(
            f"| {run['data_variant']} | {run['variant']} | {run['seed']} | "
            f"{run.get('steps')} | {run['train_seconds']:.0f} | "
            f"{run['eval_seconds']:.0f} | {_num(r['concept'])} | {_num(r['compo'])} | "
            f"{_num(r['recon_bpp'])} | {_num(r['recon_psnr_db'], 2)} | "
            f"{_num(r['graph_auroc'], 3)} | {_num(r['edit_moved_min'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.base_autoencoder:
        base = args.base_autoencoder
    elif args.smoke:
        base = tiny_autoencoder(work / "tiny-autoencoder")
    else:
        base = str(QUAD_AUTOENCODER)
    if not Path(base).exists() and not args.smoke:
        raise SystemExit(
            f"No autoencoder at {base}: train it with "
            "examples/pretrain_autoencoder.py or pass --base_autoencoder."
        )
    extra = extra_fields(args.set)
    output = Path(args.output) if args.output else work / "results"
    runs: list[dict] = []
    for data_variant in args.data_variants:
        heldout = heldout_quad_images(
            args.images_per_context,
            dependent=data_variant == "dependent",
            seed=args.heldout_seed,
            split=args.heldout_split,
        )
        for variant in args.variants:
            for seed in args.seeds:
                folder = work / data_variant / variant / f"seed{seed}"
                train_args = train_arguments(args, base, data_variant, variant, seed, folder, extra)
                start = time.perf_counter()
                if not (args.reuse and (folder / "metrics.json").exists()):
                    print(f"== training {data_variant} / {variant} / seed {seed}", flush=True)
                    finetune(train_args)
                train_seconds = time.perf_counter() - start
                train_metrics = json.loads((folder / "metrics.json").read_text())
                start = time.perf_counter()
                model = ContextAutoencoder.from_pretrained(folder).to(args.device)
                results = evaluate(
                    model,
                    heldout,
                    num_projections=args.num_projections,
                    seed=args.eval_seed,
                    recon=not args.no_recon,
                )
                results |= quad_scores(model, heldout, data_variant == "dependent")
                eval_seconds = time.perf_counter() - start
                print(
                    f"== {data_variant} / {variant} / seed {seed}: Concept "
                    f"{_num(results['concept'])} Compo {_num(results['compo'])} Recon "
                    f"{_num(results['recon_bpp'])} ({train_seconds:.0f} s training, "
                    f"{eval_seconds:.0f} s evaluation)",
                    flush=True,
                )
                print(format_table(results), flush=True)
                runs.append(
                    {
                        "data_variant": data_variant,
                        "variant": variant,
                        "seed": seed,
                        "adapter": str(folder),
                        "train_seconds": train_seconds,
                        "eval_seconds": eval_seconds,
                        "steps": train_metrics.get("steps"),
                        "stopped_early": train_metrics.get("stopped_early"),
                        "best_validation_loss": train_metrics.get("best_validation_loss"),
                        "finetune_arguments": {
                            k: v
                            for k, v in dataclasses.asdict(train_args).items()
                            if k not in ("hub_token",)
                        },
                        "results": results,
                    }
                )
                del model
    summary = summarize(runs)
    report = {
        "settings": {k: v for k, v in vars(args).items()} | {"base_autoencoder": base},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": args.device,
            "threads": torch.get_num_threads(),
        },
        "summary": summary,
        "runs": runs,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(summary, args, runs)
    output.with_suffix(".md").write_text(table)
    print(table)
    print(f"Written {output.with_suffix('.md')} and {output.with_suffix('.json')}")
    return report


if __name__ == "__main__":
    main()
