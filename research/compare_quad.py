"""The project's comparison on quad: the context module against its pooled ablation.

For each quad variant (dependent, independent), each method and each seed, train an adapter
in-process with ``ctxadapter.training.finetune`` on the same frozen autoencoder and the same
budget, score it on held-out quad images with ``ctxadapter.evaluation.evaluate`` and write a
markdown table (mean +- standard error over seeds) and a JSON file with every run.

Methods (``--variants``):

- ``cm``: the default adapter (latent-space Gaussian loss) - the paper's "CM (frozen)";
- ``pooled``: the same with ``pooled`` set (context labels ignored) - "CM pooled";
- ``pixel``: ``reconstruction`` ``pixel`` (the paper's Bernoulli pixel loss through the frozen
  decoder);
- ``finetune``: the pixel loss and ``--decoder_lora_rank 4`` - "CM (fine-tune)" as a decoder
  LoRA.

The portable figure is the ratio cm / pooled for Concept and Compo (the paper: about 0.5;
``docs/results.md``). Every run uses the same held-out images (``--heldout_seed``), the same
projections and the same generation noise (``--eval_seed``).

    python research/run.py compare-quad                                 # everything, long
    python research/run.py compare-quad --data_variants dependent --variants cm pooled
    python research/run.py compare-quad --smoke                         # seconds, for CI

The budget of every run is a ``FinetuneArguments``: every ``examples/finetune.py`` flag works
here, with the same default, e.g. ``--max_train_steps 600 --learning_rate 3e-3`` (or ``--set
learning_rate=3e-3``); ``--set`` also sets the fields of the adapter and of the loss
(``AdapterConfig``, ``Objective``), e.g. ``--set heads=additive sample_matching=2``. The
comparison sets ``--seed``, ``--quad_variant``, ``--output_dir`` and
``--pretrained_model_name_or_path`` for each run itself (from ``--seeds``, ``--data_variants``,
``--work_dir``, ``--base_autoencoder``) and, unless told otherwise, writes no checkpoints,
sample grids or tracker logs. The scores and the table are in ``compare_scores.py``.

Adapters are written under ``--work_dir/<data variant>/<method>/seed<k>``; ``--reuse`` skips
training where that folder already holds a finished adapter (its ``metrics.json``).
"""

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE):  # run from a checkout without installing; the helpers here
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from compare_scores import (  # noqa: E402
    markdown,
    mean_se,  # noqa: F401 - tests/test_research.py reads compare_quad.mean_se
    number,
    quad_scores,
    summarize,
)
from diffusers import AutoencoderKL  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from ctxadapter import ContextAutoencoder  # noqa: E402
from ctxadapter.config import AdapterConfig  # noqa: E402
from ctxadapter.evaluation import evaluate, format_table, heldout_quad_images  # noqa: E402
from ctxadapter.objective import Objective  # noqa: E402
from ctxadapter.training import (  # noqa: E402
    PRESETS,
    QUAD_AUTOENCODER,
    FinetuneArguments,
    finetune,
)

VARIANTS: dict[str, dict] = {
    "cm": {},
    "pooled": {"adapter_config": {"pooled": True}},
    "pixel": {"objective_config": {"reconstruction": "pixel"}},
    "finetune": {"objective_config": {"reconstruction": "pixel"}, "decoder_lora_rank": 4},
}
"""Method name -> the FinetuneArguments fields it sets on top of the shared budget (the
changes to the adapter and the loss are added to those of ``--set``)."""
DATA_VARIANTS = ("dependent", "independent")
RUN_DEFAULTS = dict(report_to="none", checkpointing_steps=10**9, overwrite_output_dir=True)
"""FinetuneArguments defaults of the comparison: no tracker, no checkpoints, no sample grids;
a run's folder is retrained unless ``--reuse``."""
PER_RUN = {
    "pretrained_model_name_or_path": "--base_autoencoder",
    "quad_variant": "--data_variants",
    "seed": "--seeds",
    "output_dir": "--work_dir",
}
"""FinetuneArguments fields the comparison sets for each run -> its option that sets them."""
SMOKE_BUDGET = dict(quad_images_per_context=16, max_train_steps=3, train_batch_size=16)
SMOKE_SET = ["exogenous_width=4", "concept_width=2"]
"""AdapterConfig fields of ``--smoke`` (before the ``--set`` pairs, which win)."""
BUDGET = ("quad_images_per_context", "max_train_steps", "train_batch_size", "resolution")
"""The FinetuneArguments fields recorded in the results' settings and table."""


def option(help: str, **kwargs) -> dataclasses.Field:
    metadata = {"help": help}
    for key in ("choices", "metavar"):
        if key in kwargs:
            metadata[key] = kwargs.pop(key)
    return dataclasses.field(metadata=metadata, **kwargs)


@dataclasses.dataclass
class CompareArguments:
    """The comparison's own options (the training budget: ``FinetuneArguments``)."""

    base_autoencoder: str | None = option(
        "The frozen AutoencoderKL folder; unset: the shipped quad autoencoder (with --smoke: "
        "a tiny random one).",
        default=None,
    )
    work_dir: str = option(
        "Adapters, data caches and results are written here.", default="compare-quad"
    )
    data_variants: list[str] = option(
        "Quad variants.", default_factory=lambda: list(DATA_VARIANTS), choices=DATA_VARIANTS
    )
    variants: list[str] = option(
        "Methods.", default_factory=lambda: list(VARIANTS), choices=list(VARIANTS)
    )
    seeds: list[int] = option("Training seeds, one run each.", default_factory=lambda: [0, 1, 2])
    set: list[str] = option(
        "Other FinetuneArguments fields for every run, e.g. learning_rate=3e-3 "
        "early_stopping_patience=0 (the same as --learning_rate 3e-3 ...; lists comma-separated; "
        "'none' for None), or AdapterConfig and Objective fields, e.g. heads=additive "
        "sample_matching=2 (values in JSON: numbers, true/false, or a bare string).",
        default_factory=list,
        metavar="FIELD=VALUE",
    )
    images_per_context: int = option("Held-out images per context.", default=400)
    num_projections: int = option("SW2 projections.", default=50)
    eval_seed: int = option("Seed of the projections and the generated images.", default=0)
    heldout_seed: int = option("Seed of the held-out quad images.", default=0)
    heldout_split: str = option(
        "Score on the test images (the reported numbers) or on validation images (to choose "
        "settings without looking at the test set).",
        default="test",
        choices=("test", "validation"),
    )
    no_recon: bool = option("Skip Recon and PSNR (about half the time).", default=False)
    reuse: bool = option(
        "Evaluate existing adapters instead of training them again.", default=False
    )
    device: str = option(
        "Evaluation device.", default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu"
    )
    output: str | None = option(
        "Results path without extension, unset: <work_dir>/results; writes .md and .json.",
        default=None,
    )
    smoke: bool = option(
        "A seconds-long run for CI: tiny autoencoder (unless --base_autoencoder), resolution 32, "
        "16 images per context, 3 steps, 8 held-out images per context, one seed, dependent data.",
        default=False,
    )


def set_flags(pairs: list[str]) -> tuple[list[str], dict]:
    """``--set`` pairs -> the FinetuneArguments flags they stand for (the AdapterConfig and
    Objective fields as ``--adapter_config`` / ``--objective_config`` JSON objects), and the
    fields set to None (``FIELD=none``)."""
    fields = {f.name: f for f in dataclasses.fields(FinetuneArguments)}
    settings = {"adapter_config": AdapterConfig, "objective_config": Objective}
    changes: dict[str, dict] = {flag: {} for flag in settings}
    flags, nones = [], {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        owner = next((f for f, kind in settings.items() if name in kind.field_types()), None)
        if not sep or (name not in fields and owner is None):
            raise SystemExit(
                f"--set {pair!r}: expected FIELD=VALUE with a FinetuneArguments, AdapterConfig "
                f"or Objective field name"
            )
        if owner is not None:
            changes[owner][name] = json_value(value)
        elif value.lower() == "none":
            nones[name] = None
        else:
            flags += [
                f"--{name}",
                *(value.split(",") if "list" in str(fields[name].type) else [value]),
            ]
    for flag, values in changes.items():
        if values:
            flags += [f"--{flag}", json.dumps(values)]
    return flags, nones


def json_value(text: str):
    """A ``--set`` value of an AdapterConfig or Objective field: its JSON value (a number,
    true, false), else the text itself (a choice such as ``additive``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv: list[str] | None = None) -> tuple[CompareArguments, FinetuneArguments]:
    """The comparison's options and the FinetuneArguments every run starts from (``--preset``,
    the flags, then ``--set``; the per-run fields at their defaults)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(
        (CompareArguments, FinetuneArguments), description=__doc__.split("\n\n")[0]
    )
    parser.set_defaults(**RUN_DEFAULTS)
    compare, train = parser.parse_args_into_dataclasses(argv)
    if train.preset not in PRESETS:
        raise SystemExit(f"--preset must be one of {tuple(PRESETS)}, got {train.preset!r}")
    parser.set_defaults(**PRESETS[train.preset])
    smoke = []
    if compare.smoke:  # the smoke budget wins over the flags, --set over both
        parser.set_defaults(resolution=32)
        smoke = [f"--{name}={value}" for name, value in SMOKE_BUDGET.items()]
        compare.set = [*SMOKE_SET, *compare.set]
    flags, nones = set_flags(compare.set)
    _, train = parser.parse_args_into_dataclasses([*argv, *smoke, *flags])
    train = dataclasses.replace(train, **nones)
    defaults = FinetuneArguments()
    for name, instead in PER_RUN.items():
        if getattr(train, name) != getattr(defaults, name):
            raise SystemExit(f"--{name} is set for each run; use {instead}")
    if compare.smoke:
        compare.images_per_context, compare.num_projections = 8, 10
        compare.seeds = compare.seeds[:1]
        compare.data_variants = compare.data_variants[:1]
    return compare, train


def tiny_autoencoder(folder: Path) -> str:
    """A tiny random AutoencoderKL (8x downsampling) for --smoke."""
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            norm_num_groups=8,
            sample_size=32,
        ).save_pretrained(folder)
    return str(folder)


def base_autoencoder(compare: CompareArguments, work: Path) -> str:
    """The frozen autoencoder's folder: ``--base_autoencoder``, else the tiny one of
    ``--smoke``, else ``ctxadapter/assets/quad-autoencoder``."""
    if compare.base_autoencoder:
        base = compare.base_autoencoder
    elif compare.smoke:
        base = tiny_autoencoder(work / "tiny-autoencoder")
    else:
        base = str(QUAD_AUTOENCODER)
    if not Path(base).exists() and not compare.smoke:
        raise SystemExit(
            f"No autoencoder at {base}: train it with "
            "examples/pretrain_autoencoder.py or pass --base_autoencoder."
        )
    return base


def run(
    compare: CompareArguments, train_args: FinetuneArguments, heldout: dict, variant: str
) -> dict:
    """Train one adapter (unless ``--reuse`` finds it) and score it."""
    folder = Path(train_args.output_dir)
    data_variant, seed = train_args.quad_variant, train_args.seed
    start = time.perf_counter()
    if not (compare.reuse and (folder / "metrics.json").exists()):
        print(f"== training {data_variant} / {variant} / seed {seed}", flush=True)
        finetune(train_args)
    train_seconds = time.perf_counter() - start
    train_metrics = json.loads((folder / "metrics.json").read_text())
    start = time.perf_counter()
    model = ContextAutoencoder.from_pretrained(folder).to(compare.device)
    results = evaluate(
        model,
        heldout,
        num_projections=compare.num_projections,
        seed=compare.eval_seed,
        recon=not compare.no_recon,
    )
    results |= quad_scores(
        model,
        heldout,
        data_variant == "dependent",
        seed=compare.heldout_seed,
        split=compare.heldout_split,
    )
    eval_seconds = time.perf_counter() - start
    print(
        f"== {data_variant} / {variant} / seed {seed}: Concept {number(results['concept'])} "
        f"Compo {number(results['compo'])} Recon {number(results['recon_bpp'])} "
        f"({train_seconds:.0f} s training, {eval_seconds:.0f} s evaluation)",
        flush=True,
    )
    print(format_table(results), flush=True)
    return {
        "data_variant": data_variant,
        "variant": variant,
        "seed": seed,
        "adapter": str(folder),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "steps": train_metrics.get("steps"),
        "stopped_early": train_metrics.get("stopped_early"),
        "best_validation_loss": train_metrics.get("best_validation_loss"),
        "finetune_arguments": dataclasses.asdict(train_args),
        "results": results,
    }


def main(argv: list[str] | None = None) -> dict:
    compare, train = parse_args(argv)
    work = Path(compare.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    base = base_autoencoder(compare, work)
    output = Path(compare.output) if compare.output else work / "results"
    runs: list[dict] = []
    for data_variant in compare.data_variants:
        heldout = heldout_quad_images(
            compare.images_per_context,
            dependent=data_variant == "dependent",
            seed=compare.heldout_seed,
            split=compare.heldout_split,
        )
        for variant in compare.variants:
            for seed in compare.seeds:
                method = dict(VARIANTS[variant])
                for name in ("adapter_config", "objective_config"):
                    method[name] = {**getattr(train, name), **method.get(name, {})}
                train_args = dataclasses.replace(
                    train,
                    pretrained_model_name_or_path=base,
                    quad_variant=data_variant,
                    seed=seed,
                    output_dir=str(work / data_variant / variant / f"seed{seed}"),
                    cache_dir=train.cache_dir or str(work / "cache"),
                    **method,
                )
                runs.append(run(compare, train_args, heldout, variant))
    summary = summarize(runs)
    settings = dataclasses.asdict(compare) | {name: getattr(train, name) for name in BUDGET}
    report = {
        "settings": settings | {"base_autoencoder": base},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": compare.device,
            "threads": torch.get_num_threads(),
        },
        "summary": summary,
        "runs": runs,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(summary, settings, runs)
    output.with_suffix(".md").write_text(table)
    print(table)
    print(f"Written {output.with_suffix('.md')} and {output.with_suffix('.json')}")
    return report


if __name__ == "__main__":
    main()
