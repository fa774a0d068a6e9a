"""One source of defaults (``ctxadapter.config``): ``CtxAdapter`` and ``Objective`` without
arguments are what ``examples/finetune.py`` trains, the paper preset is the paper's setup, the
settings are checked by their fields' types, and adapters saved by ctxadapter 0.1.0 load
unchanged."""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from ctxadapter import CtxAdapter
from ctxadapter.adapter_files import RECORD_KEYS, REQUIRED_KEYS
from ctxadapter.config import AdapterConfig, accepts, read_settings
from ctxadapter.objective import Objective
from ctxadapter.training import FinetuneArguments, parse_finetune_arguments

FIXTURES = Path(__file__).parent / "fixtures"


def test_the_python_defaults_are_what_finetune_trains():
    args = parse_finetune_arguments([])
    assert args.adapter_settings() == AdapterConfig() and args.objective() == Objective()
    config = CtxAdapter(["a", "b"], [4, 2, 2]).config
    assert list(config) == [*REQUIRED_KEYS, *AdapterConfig.field_types(), *RECORD_KEYS]
    assert {k: config[k] for k in AdapterConfig.field_types()} == dict(
        exogenous_width=32,
        concept_width=8,
        expressive_depth=2,
        observational_mixing="block",
        composition="strict",
        causal_effects="shared",
        pooled=False,
        exogenous_bias="interventional",
        heads="additive",  # "auto" for 16 latent values
        head_width=256,
        posterior_context=True,
    )


def test_the_paper_preset_is_the_papers_setup():
    """The values ``PRESETS["paper"]`` listed before the settings had one home."""
    args = parse_finetune_arguments(["--preset", "paper"])
    assert (
        args.adapter_settings()
        == AdapterConfig.paper()
        == AdapterConfig(
            heads="linear",
            observational_mixing="dense",
            exogenous_bias="shared",
            posterior_context=False,
            causal_effects="separate",
            composition="reference",
        )
    )
    assert (
        args.objective()
        == Objective.paper()
        == Objective(
            reconstruction="pixel",
            beta=1.0,
            sample_matching=0.0,
            prior_matching=0.0,
            covariance_matching=0.0,
            edit_order=0.0,
            group_sparsity=0.0,
        )
    )
    assert (args.sampler, args.learning_rate) == ("context_pure", 1e-3)
    with pytest.raises(ValueError, match="Unknown preset 'best'; the presets are"):
        AdapterConfig.preset("best")


@pytest.mark.parametrize(
    "hint, good, bad",
    [
        (int, [1, 7], [0, -1, 2.0, True, "3"]),
        (float, [0, 0.5, 3], [-0.1, float("nan"), float("inf"), False, "1"]),
        (bool, [True, False], [0, 1, "true", None]),
        (AdapterConfig.field_types()["heads"], ["linear", "auto"], ["Linear", 3, None]),
    ],
)
def test_values_are_checked_by_their_fields_type(hint, good, bad):
    assert all(accepts(hint, value) for value in good)
    assert not any(accepts(hint, value) for value in bad)


def test_a_config_file_gives_changes_and_names_what_is_wrong(tmp_path):
    good = tmp_path / "adapter.json"
    good.write_text('{"heads": "additive", "pooled": true}')
    args = parse_finetune_arguments(["--adapter_config", str(good)])
    assert args.adapter_config == {"heads": "additive", "pooled": True}
    assert args.adapter_settings() == AdapterConfig(heads="additive", pooled=True)
    cases = {
        '{"head": "mlp"}': "--adapter_config: unknown keys ['head']; the AdapterConfig keys are",
        '{"concept_width": 0}': "key 'concept_width' holds 0, expected an integer >= 1",
        '["heads"]': "holds a JSON list, expected an object",
        "{heads": "is not valid JSON",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(ValueError) as error:
            FinetuneArguments(adapter_config=str(path))
        assert message in str(error.value)
    with pytest.raises(ValueError, match="--objective_config: no file 'missing.json'"):
        FinetuneArguments(objective_config="missing.json")
    assert read_settings('{"beta": 2}', "--objective_config") == {"beta": 2}
    assert read_settings(None, "--objective_config") == {}


@pytest.mark.parametrize("name", ["adapter-0.1.0-defaults", "adapter-0.1.0-cli"])
def test_adapters_saved_by_the_first_release_load_unchanged(name):
    """Folders written by ctxadapter 0.1.0 (whose ``CtxAdapter`` defaults were the paper's),
    with the outputs it gave on fixed inputs."""
    folder = FIXTURES / name
    saved = json.loads((folder / "config.json").read_text())
    adapter = CtxAdapter.from_pretrained(folder)
    assert adapter.config == {
        **AdapterConfig.SAVED_WITHOUT,
        **{k: v for k, v in saved.items() if k != "ctxadapter_version"},
    }
    assert adapter.posterior_context is False  # saved before the field: the posterior it had
    assert adapter.causal.effects == "separate"  # and the interventional effects it had
    expected = safetensors.torch.load_file(str(folder / "expected.safetensors"))
    with torch.no_grad():
        mean, logvar = adapter.posterior(expected["latents"])
        decoded = adapter.latents_from_noise(expected["noise"], ["obs", "a", "b", "a+b"])
    for key, value in (("mean", mean), ("logvar", logvar), ("decoded", decoded)):
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
