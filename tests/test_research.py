"""The research scripts (``research/``) and their entry point ``research/run.py`` on a tiny
autoencoder (32 x 32 images, random weights)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_evaluation import CONCEPTS, REPO, load_script, make_model

from ctxadapter.evaluation import evaluate, heldout_quad_images, psnr, sliced_wasserstein
from ctxadapter.images import prepare_images, to_float, unit_to_signed

RESEARCH = REPO / "research"


def test_run_lists_the_commands_and_refuses_others(capsys):
    run = load_script("research_run", RESEARCH / "run.py")
    for argv, code in (([], 2), (["--help"], 0), (["compare_quad"], 2)):
        with pytest.raises(SystemExit) as exit_:
            run.main(argv)
        assert exit_.value.code == code
    printed = capsys.readouterr().out
    assert all(command in printed for command in run.COMMANDS)
    assert sorted(run.COMMANDS.values()) == sorted(
        p.stem for p in RESEARCH.glob("*.py") if p.stem not in ("run", "compare_scores")
    )


def test_compare_quad_smoke(tiny_kl_path, tmp_path):
    run = load_script("research_run", RESEARCH / "run.py")

    def smoke(*variants_and_flags: str) -> dict:
        common = ["--smoke", "--base_autoencoder", tiny_kl_path, "--work_dir"]
        work = str(tmp_path / "work")
        return run.main(["compare-quad", *common, work, "--variants", *variants_and_flags])

    report = smoke("cm", "pooled", "finetune", "--set", "lr_warmup_steps=0")
    runs = report["runs"]
    assert [(r["variant"], r["seed"], r["data_variant"]) for r in runs] == [
        ("cm", 0, "dependent"),
        ("pooled", 0, "dependent"),
        ("finetune", 0, "dependent"),
    ]
    assert all(r["steps"] == 3 for r in runs)
    assert runs[1]["results"]["pooled"] and not runs[0]["results"]["pooled"]
    assert runs[2]["finetune_arguments"]["decoder_lora_rank"] == 4
    assert runs[2]["finetune_arguments"]["objective_config"] == {"reconstruction": "pixel"}
    assert runs[1]["finetune_arguments"]["adapter_config"] == {
        "exogenous_width": 4,
        "concept_width": 2,
        "pooled": True,
    }  # the smoke widths and the method's change together
    ratios = report["summary"]["dependent"]["ratio_cm_pooled"]
    cm, pooled = runs[0]["results"], runs[1]["results"]
    assert ratios["concept"]["ratio_of_means"] == pytest.approx(cm["concept"] / pooled["concept"])
    assert ratios["compo"]["paired_mean"] == pytest.approx(cm["compo"] / pooled["compo"])
    table = (tmp_path / "work" / "results.md").read_text()
    assert "ratio (a)/(b) Concept" in table and "(d) pixel loss + decoder LoRA r4" in table
    saved = json.loads((tmp_path / "work" / "results.json").read_text())
    assert saved["summary"]["dependent"]["cm"]["concept"]["se"] is None  # one seed
    # --reuse evaluates the trained adapters again without training
    again = smoke("cm", "--reuse", "--output", str(tmp_path / "again"))
    assert again["runs"][0]["results"] == cm


def test_mean_se():
    bench = load_script("compare_quad", RESEARCH / "compare_quad.py")
    mean, se = bench.mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert bench.mean_se([4.0]) == (4.0, None)
    assert bench.mean_se([]) == (None, None)


def test_sw2_sources(tiny_kl_path, tmp_path):
    """research/sw2_sources.py: its ``prior`` column is the score ``evaluate`` reports, its
    ``autoencoder`` column the autoencoder's round trip of the second draw; with a posterior
    head that outputs exactly N(0, I), the fitted Gaussian and the posterior samples are the
    prior noise itself and the posterior mean is z = 0."""
    bench = load_script("sw2_sources", RESEARCH / "sw2_sources.py")
    model = make_model(tiny_kl_path)
    model.save_pretrained(tmp_path / "adapter")
    contexts = ["obs", "quad3"]
    output = tmp_path / "sources.json"
    common = ["--contexts", *contexts, "--images_per_context", "6", "--num_projections", "5"]
    rows = bench.main(["--adapter", str(tmp_path / "adapter"), *common, "--output", str(output)])
    assert json.loads(output.read_text())["rows"] == rows
    assert [r["context"] for r in rows] == contexts
    real = heldout_quad_images(6, True, seed=0, contexts=contexts, split="validation")
    other = heldout_quad_images(6, True, seed=1, contexts=contexts, split="validation")
    reported = evaluate(model, real, num_projections=5, seed=0, recon=False)["per_context"]
    for row, context in zip(rows, contexts, strict=True):
        assert row["prior"] == pytest.approx(reported[context]["sw2"], rel=1e-5)
        y = prepare_images(other[context], (32, 32)).float()
        with torch.no_grad():
            round_trip = model.codec.postprocess(
                model.codec.decode(model.codec.encode(unit_to_signed(y)))
            )
        x = prepare_images(real[context], (32, 32)).float()
        expected = sliced_wasserstein(x, round_trip, 5, 0).item()
        assert row["autoencoder"] == pytest.approx(expected, rel=1e-5)

    with torch.no_grad():  # posterior mean 0, log-variance 0 for every image
        model.adapter.posterior_head.weight.zero_()
        model.adapter.posterior_head.bias.zero_()
    x = prepare_images(real["quad3"], (32, 32)).float()
    y = prepare_images(other["quad3"], (32, 32)).float()
    projections = bench.random_projections(x[0].numel(), 5, 0)
    row = bench.sources(model, x, y, "quad3", projections, seed=0, batch_size=4)
    assert row["mean_norm"] == 0
    assert row["gaussian_fit"] == pytest.approx(row["prior"], rel=1e-5)
    assert row["posterior_samples"] == pytest.approx(row["prior"], rel=1e-5)
    zero = torch.zeros(6, model.adapter.noise_size)
    with torch.no_grad():
        at_zero = model.codec.postprocess(
            model.codec.decode(model.adapter.latents_from_noise(zero, "quad3"))
        )
    expected = sliced_wasserstein(x, at_zero, projections=projections).item()
    assert row["posterior_mean"] == pytest.approx(expected, rel=1e-5)


def test_diagnose_quad_by_hand(tiny_kl_path):
    diagnose = load_script("diagnose_quad", RESEARCH / "diagnose_quad.py")
    model = make_model(tiny_kl_path)
    adapter = model.adapter
    width = adapter.latent_head.in_features // len(CONCEPTS)
    with torch.no_grad():
        # quad1's block reaches no latent entry: swapping it changes no pixel.
        adapter.latent_head.weight[:, :width] = 0
        # A posterior that ignores the image: mean 0 and log-variance 0 for every image.
        adapter.posterior_head.weight.zero_()
        adapter.posterior_head.bias.zero_()
    table = diagnose.block_influence(model, num_samples=16)
    assert list(table) == CONCEPTS
    assert table["quad1"] == [0.0, 0.0, 0.0, 0.0]
    assert all(len(row) == 4 and min(row) >= 0 for row in table.values())
    assert max(table["quad2"]) > 0

    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stats = diagnose.posterior_stats(model, images)
    assert stats["kl"] == [0.0] * 6  # KL(N(0, 1) || N(0, 1))
    assert stats["mean_variance"] == [0.0] * 6
    assert stats["posterior_variance"] == [1.0] * 6
    with torch.no_grad():
        latents = model.codec.encode(unit_to_signed(images))
        constant = adapter.latents_from_noise(torch.zeros(1, adapter.noise_size), "obs")
    expected = (constant.view(1, *adapter.latent_shape) - latents).pow(2).mean().item()
    assert stats["latent_mse"] == pytest.approx(expected)
    assert stats["latent_variance"] == pytest.approx(latents.var(0).mean().item())


def test_diagnose_quad_head_ceiling(tiny_kl_path):
    """The heads' ceiling: the adapter's two heads back to back, with its concept values'
    size in between, trained by MSE; an identity in their place scores the base autoencoder."""
    diagnose = load_script("diagnose_quad", RESEARCH / "diagnose_quad.py")
    model = make_model(tiny_kl_path)
    adapter = model.adapter
    latents = torch.randn(8, *adapter.latent_shape, generator=torch.Generator().manual_seed(0))
    flat = latents.flatten(1)
    untrained = diagnose.head_ceiling(model, latents, steps=0)
    assert [layer.out_features for layer in untrained] == [6 * 2, flat.shape[1]]
    trained = diagnose.head_ceiling(model, latents, steps=300, batch_size=8)
    with torch.no_grad():
        before = (untrained(flat) - flat).pow(2).mean()
        after = (trained(flat) - flat).pow(2).mean()
    assert after < 0.5 * before

    images = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    scores = diagnose.ceiling_psnr(model, torch.nn.Identity(), images, batch_size=2)
    assert scores["heads"] == pytest.approx(scores["base"])
    zero = diagnose.ceiling_psnr(model, lambda z: torch.zeros_like(z), images, batch_size=2)
    target = to_float(prepare_images(images, model.resolution))
    with torch.no_grad():
        decoded = model.codec.postprocess(
            model.codec.decode(torch.zeros(5, *adapter.latent_shape)), "pt"
        )
    assert zero["heads"] == pytest.approx(psnr(decoded, target).item(), rel=1e-5)
    assert zero["base"] == pytest.approx(scores["base"])
