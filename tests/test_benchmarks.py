"""The benchmark scripts run: each one's ``--smoke`` mode, in-process (the latent-cache script
also starts one measuring subprocess). Nothing here is timed or compared against a target; the
checks are that every script finishes, prints its table and writes well-formed JSON."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = [
    "bench_train_step",
    "bench_time_to_adapter",
    "bench_latent_cache",
    "bench_mixed_contexts",
    "bench_scaling_k",
    "bench_profile",
    "bench_heads",
    "bench_gpu",
    "bench_encode_processes",
]


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


@pytest.fixture(autouse=True)
def keep_global_state():
    """The scripts set torch's threads and seed and silence datasets' progress bars."""
    import datasets

    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    bars = datasets.is_progress_bar_enabled()
    yield
    torch.set_num_threads(threads)
    torch.random.set_rng_state(state)
    (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()


def test_every_script_is_listed():
    assert sorted(SCRIPTS) == sorted(p.stem for p in BENCHMARKS.glob("bench_*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke(name, bench_path, tmp_path, capsys):
    module = importlib.import_module(name)
    payload = module.main(["--smoke", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    result_name = name.removeprefix("bench_")
    written = json.loads((tmp_path / f"{result_name}.json").read_text())
    assert written["name"] == payload["name"] == result_name
    assert written["smoke"] is True
    assert written["rows"] and written["machine"]["torch"] == torch.__version__
    assert {"cpu", "cores", "torch_threads", "diffusers"} <= set(written["machine"])
    assert f"# {result_name} (smoke)" in printed and "|" in printed


def test_step_flops_counts_the_paper_adapter(bench_path):
    from ctxadapter import CtxAdapter
    from ctxadapter.config import AdapterConfig

    common = importlib.import_module("common")
    paper = AdapterConfig.paper().to_dict()  # linear heads, dense mixing
    adapter = CtxAdapter([f"c{k}" for k in range(6)], [4, 8, 8], **paper)
    # posterior 256->384 (no input gradient), exogenous 192->192, expressive 192->48,
    # causal 48->48, latent head 48->256; forward 2*in*out, backward twice that.
    products = [(256, 384, 2), (192, 192, 3), (192, 48, 3), (48, 48, 3), (48, 256, 3)]
    observational = torch.zeros(7, 6, dtype=torch.bool)
    obs_flops = common.step_flops(adapter, observational, matching=False)
    assert obs_flops == sum(2 * i * o * m for i, o, m in products)
    # obs and the 6 single interventions: the exogenous layer's dense product runs on 1 row in 7
    # and a batched product over the 6 diagonal blocks of both weights (192 -> 2 * 32) on all;
    # the causal layer runs two masked products.
    mixed = torch.cat([observational[:1], torch.eye(6, dtype=torch.bool)])
    dense = 2 * 192 * 192 * 3
    expected = obs_flops - dense + dense / 7 + 2 * 192 * 64 * 3 + 2 * 48 * 48 * 3
    assert common.step_flops(adapter, mixed, matching=False) == pytest.approx(expected)


def test_step_flops_counts_the_default_adapter(bench_path):
    common = importlib.import_module("common")
    adapter = common.context_model(6, (4, 8, 8)).adapter  # additive heads, width 256
    observational = torch.zeros(7, 6, dtype=torch.bool)
    # the posterior head's first layer reads the 256 latent values and the 6-bit context mask
    posterior = 2 * (256 + 6) * 256 * 2 + 2 * 256 * 256 * 3 + 2 * 256 * 384 * 3
    # block mixing: the batched product over the diagonal blocks even for observational rows
    generator = 2 * 192 * 64 * 3 + 2 * 48 * 48 * 3 + 2 * 192 * 48 * 3
    # the additive latent head: 6 blocks of 8 -> 256 -> 256, then one shared 256 -> 256
    generator += 2 * 6 * 8 * 256 * 3 + 2 * 6 * 256 * 256 * 3 + 2 * 256 * 256 * 3
    plain = common.step_flops(adapter, observational, matching=False)
    assert plain == posterior + generator
    # sample matching: the generator three times more (posterior means, prior draws,
    # counterfactuals), and for each of
    # its two distances 64 projections of both sides of 256 values; prior matching: 64
    # projections of the 192 posterior noise values and of as many draws; covariance matching,
    # for each of its two distances in a batch of 512 observational rows: the real rows' Gram
    # matrix (forward only), the decoded rows' and the cross one (forward and backward)
    matched = common.step_flops(adapter, observational)
    sample = 3 * generator + 2 * (2 * 256 * 64 * 2 + 2 * 256 * 64 * 3)
    covariance = 2 * (2 * 256 * 512 + 2 * (2 * 256 * 512 * 3))
    expected = plain + sample + 2 * 192 * 64 * 2 + 2 * 192 * 64 * 3 + covariance
    assert matched == pytest.approx(expected)
    # seven contexts in equal shares: each row meets a context of 512 / 7 rows, and only the
    # covariance term grows with the batch
    mixed = torch.cat([observational[:1], torch.eye(6, dtype=torch.bool)])
    doubled = common.step_flops(adapter, mixed, batch_size=1024)
    assert doubled - common.step_flops(adapter, mixed) == pytest.approx(covariance / 7)


def test_table_and_measure(bench_path):
    harness = importlib.import_module("harness")
    text = harness.table([dict(a=1, b=2.5), dict(a=10, c="x")])
    assert text.splitlines()[0] == "| a  | b   | c |"
    timing = harness.measure(lambda: None, repeats=3, warmup=0)
    assert timing["min"] <= timing["median"] <= timing["max"] and len(timing["runs"]) == 3
