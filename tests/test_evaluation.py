"""Evaluation (``ctxadapter.evaluation``) and ``examples/evaluate.py`` on a tiny autoencoder
(32 x 32 images, random weights)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from ctxadapter import AdapterConfig, ContextAutoencoder, CtxAdapter
from ctxadapter.data import quad
from ctxadapter.evaluation import (
    edit_scores,
    evaluate,
    format_table,
    generation_seed,
    heldout_quad_images,
)
from ctxadapter.evaluation.metrics import recon_bits_per_pixel
from ctxadapter.evaluation.wasserstein import sliced_wasserstein
from ctxadapter.images import prepare_images, signed_to_unit, unit_to_signed
from ctxadapter.objective import PIXEL_EPS, gaussian_kl
from ctxadapter.pinning import base_model_record

REPO = Path(__file__).resolve().parent.parent
CONCEPTS = list(quad.CONCEPTS)


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_model(path: str, pooled: bool = False, seed: int = 0) -> ContextAutoencoder:
    """A random model with the paper's adapter (linear heads, which tests here and in
    ``test_research`` set by hand), widths 4 and 2."""
    vae = AutoencoderKL.from_pretrained(path)
    torch.manual_seed(seed)
    settings = AdapterConfig.paper().updated(
        dict(exogenous_width=4, concept_width=2, pooled=pooled)
    )
    adapter = CtxAdapter(
        CONCEPTS,
        latent_shape=[4, 4, 4],
        base_model=base_model_record(vae, path),
        **settings.to_dict(),
    )
    return ContextAutoencoder(vae, adapter).eval()


@pytest.fixture
def model(tiny_kl_path) -> ContextAutoencoder:
    return make_model(tiny_kl_path)


def random_real(contexts, n: int = 7, size: int = 32, uint8: bool = False) -> dict:
    generator = torch.Generator().manual_seed(1)
    out = {}
    for context in contexts:
        if uint8:
            out[context] = torch.randint(
                0, 256, (n, size, size, 3), generator=generator, dtype=torch.uint8
            )
        else:
            out[context] = torch.rand(n, 3, size, size, generator=generator)
    return out


def replay_generate(model, real: dict, calls: list):
    """A ``generate`` that returns the real images of the context, in order, batch by batch."""
    offsets = {name: 0 for name in real}

    def generate(context, num_samples, generator=None, output_type="pt"):
        calls.append((context, num_samples, model.training, model.adapter.training))
        images = real[context]
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float() / 255
        out = images[offsets[context] : offsets[context] + num_samples]
        offsets[context] += num_samples
        return out

    return generate


# ------------------------------------------------------------------------------ evaluate


@pytest.mark.parametrize("uint8", [False, True])
def test_generating_the_real_images_gives_zero_sw(model, monkeypatch, uint8):
    contexts = ["obs", "quad1", "size", "quad1+quad2", "quad2+orientation"]
    real = random_real(contexts, n=7, uint8=uint8)
    calls: list = []
    model.train()  # evaluate must switch to eval mode and restore this afterwards
    monkeypatch.setattr(model, "generate", replay_generate(model, real, calls))
    results = evaluate(model, real, num_projections=20, seed=3, batch_size=3)
    # exactly 0 for float images; uint8 images are projected as integers then divided by 255,
    # the generated floats after the division: equal up to float32 rounding
    tol = 1e-5 if uint8 else 0.0
    for context in contexts:
        assert results["per_context"][context]["sw2"] == pytest.approx(0.0, abs=tol)
        assert results["per_context"][context]["num_images"] == 7
    assert results["concept"] == pytest.approx(0.0, abs=tol)
    assert results["compo"] == pytest.approx(0.0, abs=tol)
    assert results["concept_contexts"] == ["obs", "quad1", "size"]
    assert results["compo_contexts"] == ["quad1+quad2", "quad2+orientation"]
    # as many images as real ones, in batches of at most batch_size, in eval mode
    assert [(c, n) for c, n, *_ in calls] == [(c, n) for c in contexts for n in (3, 3, 1)]
    assert not any(training for *_, m, a in calls for training in (m, a))
    assert model.training and model.adapter.training


def test_max_images_and_counts(model, monkeypatch):
    real = random_real(["obs", "quad1+quad3"], n=9)
    calls: list = []
    monkeypatch.setattr(model, "generate", replay_generate(model, real, calls))
    results = evaluate(model, real, num_projections=5, max_images=4)
    assert sum(n for _, n, *_ in calls) == 8
    assert {c: e["num_images"] for c, e in results["per_context"].items()} == {
        "obs": 4,
        "quad1+quad3": 4,
    }
    assert results["recon_num_images"] == 4
    assert results["num_projections"] == 5 and results["max_images"] == 4


def test_sw_matches_metrics_and_generation_is_seeded(model):
    real = random_real(["obs", "quad4", "quad1+size"], n=6)
    first = evaluate(model, real, num_projections=15, seed=2, recon=False)
    again = evaluate(model, real, num_projections=15, seed=2, recon=False)
    assert first == again
    # the generated images come from a generator seeded by generation_seed(seed, context)
    generator = torch.Generator().manual_seed(generation_seed(2, "quad4"))
    fake = model.generate("quad4", 6, generator=generator)
    expected = sliced_wasserstein(real["quad4"], fake, num_projections=15, seed=2)
    assert math.isclose(first["per_context"]["quad4"]["sw2"], expected.item(), rel_tol=1e-5)
    assert first["concept"] == pytest.approx(
        (first["per_context"]["obs"]["sw2"] + first["per_context"]["quad4"]["sw2"]) / 2
    )
    assert first["compo"] == first["per_context"]["quad1+size"]["sw2"]
    other = evaluate(model, real, num_projections=15, seed=5, recon=False)
    assert other["concept"] != first["concept"]
    assert first["recon_bpp"] is None and first["per_context"]["obs"]["recon_bpp"] is None
    # the projections and the generated images are different streams
    assert generation_seed(2, "quad4") not in (2, generation_seed(2, "obs"))


def test_recon_is_the_negative_elbo_under_the_image_context(model):
    real = random_real(["obs", "quad2", "quad1+quad2"], n=5)
    results = evaluate(model, real, num_projections=5)
    with torch.no_grad():
        for context in ("obs", "quad2"):
            target = real[context]
            mean, logvar = model.adapter.posterior(model.codec.encode(unit_to_signed(target)))
            decoded = model.codec.decode(model.adapter.latents_from_noise(mean, context))
            probs = ((decoded + 1) / 2).clamp(0, 1)
            bits = recon_bits_per_pixel(probs, target, gaussian_kl(mean, logvar), eps=PIXEL_EPS)
            entry = results["per_context"][context]
            assert entry["recon_bpp"] == pytest.approx(bits.item(), rel=1e-5)
            mse = (probs - target).square().flatten(1).mean(1)
            assert entry["recon_mse"] == pytest.approx(mse.mean().item(), rel=1e-5)
            assert entry["recon_psnr_db"] == pytest.approx(
                (-10 * torch.log10(mse)).mean().item(), rel=1e-5
            )
    assert results["per_context"]["quad1+quad2"]["recon_bpp"] is None
    assert results["recon_num_images"] == 10
    assert results["recon_bpp"] == pytest.approx(
        (results["per_context"]["obs"]["recon_bpp"] + results["per_context"]["quad2"]["recon_bpp"])
        / 2,
        rel=1e-6,
    )


def test_context_names_are_canonical_and_errors(model):
    real = random_real(["size+quad1"], n=3)
    results = evaluate(model, real, num_projections=3, recon=False)
    assert list(results["per_context"]) == ["quad1+size"]
    with pytest.raises(ValueError, match="unknown concept"):
        evaluate(model, random_real(["nope"], n=3), num_projections=3)
    with pytest.raises(ValueError, match="twice"):
        evaluate(model, {"quad1+size": real["size+quad1"], "size+quad1": real["size+quad1"]})
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, {})
    # [-1, 1] images are read as the model reads them (ctxadapter.images.prepare_images)
    unit = evaluate(model, {"obs": real["size+quad1"]}, num_projections=3, recon=False)
    signed = {"obs": unit_to_signed(real["size+quad1"])}
    signed = evaluate(model, signed, num_projections=3, recon=False)
    assert signed["concept"] == pytest.approx(unit["concept"], rel=1e-5)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\] \(or \[-1, 1\]\)"):
        evaluate(model, {"obs": real["size+quad1"] * 255})


def test_prepare_images_resizes_like_training(model):
    images = heldout_quad_images(3, seed=0, contexts=["obs"])["obs"]
    assert prepare_images(images, (64, 64)).shape == (3, 3, 64, 64)
    assert torch.equal(prepare_images(images, (64, 64)), images.permute(0, 3, 1, 2))
    small = prepare_images(images, (32, 32))
    from PIL import Image

    expected = model.codec.preprocess(
        [Image.fromarray(im.numpy()) for im in images], 32, 32, resize_mode="crop"
    )
    torch.testing.assert_close(small, ((expected + 1) / 2).clamp(0, 1))


# ------------------------------------------------------------------------------ edits


def test_edit_scores_by_hand(model):
    images = random_real(["obs"], n=7, uint8=True)["obs"]  # (7, 32, 32, 3) uint8
    scores = edit_scores(model, images, contexts=["quad1", "quad2+size"], batch_size=3)
    assert scores["images"] == 7 and list(scores["edits"]) == ["quad1", "quad2+size"]
    x = images.permute(0, 3, 1, 2).float() / 255

    def per_image_psnr(y):
        return (10 * torch.log10(1 / (y - x).square().flatten(1).mean(1))).mean().item()

    with torch.no_grad():
        own = signed_to_unit(model.codec.decode(model.codec.encode(unit_to_signed(x))))
        identity = model.counterfactual(x, "obs")
        edit = model.counterfactual(x, "quad1")
        decoded = model.counterfactual(x, "quad1", mode="decode")
    # The identity edit is the autoencoder's own reconstruction.
    assert scores["identity_psnr"] == pytest.approx(per_image_psnr(own), abs=1e-3)
    adapter_own = model.reconstruct(x, "obs")
    assert scores["reconstruction_psnr"] == pytest.approx(per_image_psnr(adapter_own), abs=1e-3)
    quad1 = scores["edits"]["quad1"]
    assert quad1["psnr"] == pytest.approx(per_image_psnr(edit), abs=1e-3)
    assert quad1["decode_psnr"] == pytest.approx(per_image_psnr(decoded), abs=1e-3)
    change = (edit - identity).abs().flatten(1).mean(1).mean().item()
    assert change > 0 and quad1["mean_abs_change"] == pytest.approx(change, rel=1e-5)
    # strength 0: no edit at all
    none = edit_scores(model, images, contexts=["quad1"], strength=0)["edits"]["quad1"]
    assert none["mean_abs_change"] == 0
    assert none["psnr"] == pytest.approx(scores["identity_psnr"], abs=1e-6)


def test_edit_scores_of_an_adapter_whose_latents_ignore_the_context(model):
    """A latent head that always outputs 0: every residual edit is the identity edit (no
    change, the same PSNR) and every decode edit decodes the zero latent."""

    class Zero(torch.nn.Module):
        def forward(self, concepts):
            return concepts.new_zeros(concepts.shape[0], 4 * 4 * 4)

    model.adapter.latent_head = Zero()
    images = random_real(["obs"], n=4)["obs"]
    scores = edit_scores(model, images)
    assert list(scores["edits"]) == CONCEPTS
    with torch.no_grad():
        zero = ((model.codec.decode(torch.zeros(1, 4, 4, 4)) + 1) / 2).clamp(0, 1)
    zero_psnr = (10 * torch.log10(1 / (zero - images).square().flatten(1).mean(1))).mean()
    for concept in CONCEPTS:
        edit = scores["edits"][concept]
        assert edit["mean_abs_change"] == 0
        assert edit["psnr"] == pytest.approx(scores["identity_psnr"], abs=1e-6)
        assert edit["decode_psnr"] == pytest.approx(zero_psnr.item(), abs=1e-3)


# ------------------------------------------------------------------------------ quad data


def test_heldout_quad_images():
    images = heldout_quad_images(4, dependent=False, seed=1)
    assert list(images) == [*quad.TRAIN_CONTEXTS, *quad.HELDOUT_COMPOSITIONS]
    assert len(images) == 16
    for context, batch in images.items():
        assert batch.dtype == torch.uint8 and batch.shape == (4, 64, 64, 3)
        expected, _ = quad.sample(context, 4, seed=1, dependent=False, split="test")
        assert np.array_equal(batch.numpy(), expected)
    train, _ = quad.sample("obs", 4, seed=1, dependent=False, split="train")
    assert not np.array_equal(images["obs"].numpy(), train)
    validation = heldout_quad_images(4, dependent=False, seed=1, split="validation")
    expected, _ = quad.sample("quad1+size", 4, seed=1, dependent=False, split="validation")
    assert np.array_equal(validation["quad1+size"].numpy(), expected)
    assert not np.array_equal(validation["obs"].numpy(), images["obs"].numpy())
    with pytest.raises(ValueError):
        heldout_quad_images(0)
    with pytest.raises(ValueError, match="split"):
        heldout_quad_images(2, split="train")


# ------------------------------------------------------------------------------ table


def test_format_table_lists_every_context_and_the_means(model):
    real = heldout_quad_images(3, seed=0)
    results = evaluate(model, real, num_projections=7, seed=4)
    table = format_table(results)
    rows = table.splitlines()
    for context in real:
        assert any(row.startswith(f"| {context} |") for row in rows), context
    assert "| **Concept** (mean of 7) | mean | 21 |" in table
    assert "| **Compo** (mean of 9) | mean | 27 |" in table
    assert "| **Recon** (single contexts) | mean | 21 |" in table
    assert "7 random projections (seed 4)" in table
    assert f"{results['concept']:.4f}" in table and f"{results['compo']:.4f}" in table
    # singles first, then compositions, then the means
    names = [row.split("|")[1].strip() for row in rows[2 : 2 + 16]]
    assert names == list(real)
    json.dumps(results)  # serializable as it is


# ------------------------------------------------------------------------------ scripts


def test_evaluate_cli_quad_and_imagefolder(tiny_kl_path, tmp_path, capsys):
    adapter_dir = tmp_path / "adapter"
    make_model(tiny_kl_path).save_pretrained(adapter_dir)
    cli = load_script("evaluate_cli", REPO / "examples" / "evaluate.py")
    output = tmp_path / "out" / "results.json"
    results = cli.main(
        [
            "--adapter",
            str(adapter_dir),
            "--images_per_context",
            "3",
            "--num_projections",
            "5",
            "--quad_variant",
            "independent",
            "--device",
            "cpu",
            "--output",
            str(output),
        ]
    )
    printed = capsys.readouterr().out
    saved = json.loads(output.read_text())
    assert saved["data"] == {"quad_variant": "independent", "quad_seed": 0}
    assert len(saved["per_context"]) == 16 and saved["num_projections"] == 5
    assert saved["concept"] == results["concept"]
    assert "**Concept**" in printed and "quad2+orientation" in printed
    assert "Reference: the real images' split-half SW2" in printed
    assert saved["reference"]["kind"] == "split_half"
    assert saved["reference"]["num_images"]["obs"] == 1  # 3 images: halves of 1 and 2, cut to 1

    # a dataset with a context column: its test split, grouped by context
    data = quad.build_dataset(
        n_per_context=2, heldout_per_context=2, seed=0, cache_dir=str(tmp_path / "hf")
    )
    quad.write_imagefolder(data, tmp_path / "folder")
    output = tmp_path / "folder.json"
    cli.main(
        [
            "--adapter",
            str(adapter_dir),
            "--train_data_dir",
            str(tmp_path / "folder"),
            "--images_per_context",
            "1",
            "--num_projections",
            "3",
            "--device",
            "cpu",
            "--cache_dir",
            str(tmp_path / "hf"),
            "--output",
            str(output),
        ]
    )
    saved = json.loads(output.read_text())
    assert len(saved["per_context"]) == 16
    assert all(e["num_images"] == 1 for e in saved["per_context"].values())
    assert "'test' split" in capsys.readouterr().out


def test_split_half_of_identical_halves_is_zero():
    cli = load_script("evaluate_cli", REPO / "examples" / "evaluate.py")
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    real = {"obs": torch.cat([images, images]), "a": images[:1]}  # "a": one image, left out
    reference = cli.split_half(real, (8, 8), num_projections=4, seed=0)
    assert reference["per_context"] == {"obs": 0.0} and reference["num_images"] == {"obs": 2}
    assert reference["concept"] == 0.0 and reference["compo"] is None


def test_evaluate_cli_writes_into_the_adapter_folder_against_a_reference(
    tiny_kl_path, tmp_path, capsys, monkeypatch
):
    adapter_dir = tmp_path / "adapter"
    make_model(tiny_kl_path).save_pretrained(adapter_dir)
    monkeypatch.chdir(tmp_path)
    cli = load_script("evaluate_cli", REPO / "examples" / "evaluate.py")
    flags = ["--images_per_context", "2", "--num_projections", "3", "--no_recon"]
    cli.main(["--adapter", str(adapter_dir), "--reference", str(adapter_dir), *flags])
    saved = json.loads((adapter_dir / "evaluation.json").read_text())
    assert not (tmp_path / "evaluation.json").exists()
    assert saved["reference"]["kind"] == "adapter"
    assert saved["reference"]["concept"] == saved["concept"]  # the same adapter, same images
    printed = capsys.readouterr().out
    assert f"Reference: the pooled ablation {adapter_dir}." in printed
    assert f"Concept: {saved['concept']:.4f} against {saved['concept']:.4f} (1.00x" in printed


@pytest.mark.parametrize(
    "script, shown",
    [
        ("evaluate", "Real (and generated) images per context. (default: 400)"),
        ("generate", "Samples per context. (default: 8)"),
        ("demo", "Device to run on: cuda if available, else cpu. (default: "),
        ("real_images", "Training images per context. (default: 1000)"),
    ],
)
def test_every_example_help_shows_defaults(script, shown, capsys):
    cli = load_script(f"{script}_cli", REPO / "examples" / f"{script}.py")
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    assert shown in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("old", "names"),
    [
        ("metrics", ["psnr", "concept_compo_scores"]),
        ("wasserstein", ["sliced_wasserstein", "grouped_sliced_wasserstein"]),
        ("edit_scores", ["edit_scores"]),
        ("quad_scores", ["graph_auroc", "counterfactual_shifts", "corner_masks"]),
    ],
)
def test_old_module_paths_warn_and_give_the_same_functions(old, names, monkeypatch):
    monkeypatch.delitem(sys.modules, f"ctxadapter.{old}", raising=False)
    with pytest.warns(DeprecationWarning, match=f"ctxadapter.{old} is deprecated"):
        module = importlib.import_module(f"ctxadapter.{old}")
    for name in names:
        defined = getattr(module, name)
        assert getattr(importlib.import_module(defined.__module__), name) is defined
        assert defined.__module__.startswith("ctxadapter.evaluation.")
