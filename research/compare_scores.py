"""The scoring half of ``compare_quad.py``: the scores it adds to ``evaluate``'s (the base
autoencoder's PSNR, the concept graph's AUROC, counterfactual edits), their mean and standard
error over seeds with the ratios cm / pooled, and the Markdown table."""

from __future__ import annotations

import math

import torch

from ctxadapter.data import quad
from ctxadapter.evaluation import (
    block_identifiability,
    graph_auroc,
    psnr,
    quad_counterfactual_accuracy,
)
from ctxadapter.images import DEFAULT_BATCH_SIZE, model_input, unit_to_signed
from ctxadapter.readouts import EDGE_THRESHOLD, GRAPH_READOUTS

LABELS = {
    "cm": "(a) ctxadapter default (latent loss)",
    "pooled": "(b) pooled (labels ignored)",
    "pixel": "(c) pixel loss",
    "finetune": "(d) pixel loss + decoder LoRA r4",
}
"""Method name -> its row label, in table order."""
METRICS = {
    "concept": 3,
    "compo": 3,
    "recon_bpp": 3,
    "recon_psnr_db": 2,
    "base_psnr_db": 2,
    "cf_success_intervened": 2,
    "cf_success_all": 2,
    "cf_error_ratio": 2,
    "own_r2_min": 2,
    "graph_auroc_rendered": 2,
    "graph_auroc_direct": 2,
    "graph_edges": 0,
}
"""Metric averaged over seeds -> its digits in the table, in column order."""
HEADERS = {
    "concept": "Concept",
    "compo": "Compo",
    "recon_bpp": "Recon (bits/px)",
    "recon_psnr_db": "PSNR (dB)",
    "base_psnr_db": "base PSNR (dB)",
    "cf_success_intervened": "edit success, intervened",
    "cf_success_all": "edit success, all",
    "cf_error_ratio": "edit error / no-edit error",
    "own_r2_min": "own-block R² (min)",
    "graph_auroc_rendered": "AUROC rendered",
    "graph_auroc_direct": "AUROC direct",
    "graph_edges": "edges (rendered)",
}
EDIT_IMAGES = 200
"""Observational images edited per run for the per-image counterfactual scores."""
PROBE_IMAGES = 400
"""Observational images of the own-block linear probes."""
DETERMINED = ("quad1", "quad2", "quad3", "quad4", "size")
"""The concepts an image determines (orientation is ambiguous for symmetric shapes)."""


def quad_scores(model, heldout: dict, dependent: bool, seed: int = 0, split: str = "test") -> dict:
    """The scores beside Concept / Compo / Recon (``docs/evaluation.md``):

    - ``base_psnr_db``: the base autoencoder's own PSNR on the single-context images;
    - per-image counterfactual accuracy of ``EDIT_IMAGES`` observational images under every
      concept against the SCM's true counterfactuals
      (``ctxadapter.evaluation.quad_counterfactual_accuracy``): the success rates over the
      intervened quadrant and over every quadrant, and the mean error over the no-edit error;
    - own-block identifiability of ``PROBE_IMAGES`` observational images
      (``block_identifiability``): the smallest own-block R^2 over :data:`DETERMINED`;
    - the concept graph's AUROC against the ancestral relation for each readout (dependent
      quad; None on independent quad, which has no edges) and the number of edges of the
      default (rendered) readout above ``EDGE_THRESHOLD``.

    ``seed`` and ``split`` are those of ``heldout`` (``heldout_quad_images``), whose first
    observational images these are, with their latents.
    """
    singles = [name for name in heldout if "+" not in name]
    codec, psnrs = model.codec, []
    with torch.no_grad():
        for name in singles:
            for chunk in heldout[name].split(DEFAULT_BATCH_SIZE):
                real = model_input(chunk, model.resolution).to(codec.device)
                own = codec.postprocess(codec.decode(codec.encode(unit_to_signed(real))), "pt")
                psnrs.append(psnr(own, real, reduction="none").cpu())
    base_psnr = torch.cat(psnrs).mean().item()
    count = max(EDIT_IMAGES, PROBE_IMAGES)
    images, latents = quad.sample("obs", count, seed=seed, dependent=dependent, split=split)
    edits = quad_counterfactual_accuracy(
        model, images[:EDIT_IMAGES], latents[:EDIT_IMAGES], dependent=dependent
    )
    concepts = list(model.adapter.concepts)
    probes = block_identifiability(
        model, images[:PROBE_IMAGES], quad.concept_values(latents[:PROBE_IMAGES], dependent)
    )["per_concept"]
    graphs = {readout: model.adapter.concept_graph(readout=readout) for readout in GRAPH_READOUTS}
    aurocs = dict.fromkeys(GRAPH_READOUTS)
    if dependent:
        truth = quad.ancestral_relation(concepts, dependent=True)
        aurocs = {readout: graph_auroc(graph, truth) for readout, graph in graphs.items()}
    graph = graphs[GRAPH_READOUTS[0]]
    off_diagonal = ~torch.eye(len(concepts), dtype=torch.bool)
    summary = edits["summary"]
    return {
        "base_psnr_db": base_psnr,
        "cf_success_intervened": summary["success_intervened"],
        "cf_success_all": summary["success_all"],
        "cf_error_ratio": summary["mean_error"] / summary["no_edit_error"],
        "own_r2_min": min(probes[name]["own"] for name in DETERMINED if name in probes),
        "graph_auroc_rendered": aurocs["rendered"],
        "graph_auroc_direct": aurocs["direct"],
        "graph_edges": int((graph[off_diagonal] > EDGE_THRESHOLD).sum()),
        "counterfactuals": edits,
        "own_block_r2": probes,
        "concept_graph": {readout: graph.tolist() for readout, graph in graphs.items()},
    }


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


def number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plus_minus(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "not measured"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['se']:.{digits}f}" if stat["se"] is not None else "")


def markdown(summary: dict, settings: dict, runs: list[dict]) -> str:
    """The results page: per data variant, a row per method (mean ± SE over seeds) and the
    ratios (a)/(b); then a row per run. ``settings``: the comparison's, as its JSON records
    them (budget, evaluation sizes and seeds)."""
    s = settings
    steps = f"{s['max_train_steps']} steps" if s["max_train_steps"] else None
    lines = [
        "# quad comparison: context module vs pooled ablation",
        "",
        f"Budget per run: {s['quad_images_per_context']} training images per context, "
        + (steps or "the default epochs with early stopping")
        + f" at batch {s['train_batch_size']}"
        + (f", extra settings {' '.join(s['set'])}" if s["set"] else "")
        + ". "
        f"Evaluation: {s['images_per_context']} held-out images per context ({s['heldout_split']} "
        f"split, seed {s['heldout_seed']}), SW2 with {s['num_projections']} projections (seed "
        f"{s['eval_seed']}). Mean ± standard error over seeds.",
        "",
    ]
    for data_variant, groups in summary.items():
        lines += [
            f"## quad {data_variant}",
            "",
            "| method | seeds | " + " | ".join(HEADERS[m] for m in METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for variant in LABELS:
            if variant not in groups:
                continue
            g = groups[variant]
            cells = [LABELS[variant], ",".join(map(str, g["seeds"]))]
            cells += [plus_minus(g[metric], digits) for metric, digits in METRICS.items()]
            lines.append("| " + " | ".join(cells) + " |")
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
                    f"{number(r['ratio_of_means'], 3)} (ratio of means{paired})"
                )
        lines.append("")
    lines += [
        "## runs",
        "",
        "| data | method | seed | steps | train s | eval s | "
        + " | ".join(HEADERS[m] for m in METRICS)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(METRICS),
    ]
    for run in runs:
        r = run["results"]
        cells = [
            run["data_variant"],
            run["variant"],
            str(run["seed"]),
            str(run.get("steps")),
            f"{run['train_seconds']:.0f}",
            f"{run['eval_seconds']:.0f}",
        ]
        cells += [number(r[metric], digits) for metric, digits in METRICS.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
