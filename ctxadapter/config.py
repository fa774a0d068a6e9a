"""The settings of an adapter and of its loss, with their defaults, presets and checks.

``Settings`` is the base of two frozen dataclasses: ``AdapterConfig`` here (the architecture
of a ``CtxAdapter``) and ``ctxadapter.objective.Objective`` (the loss). Each dataclass *is*
the defaults: ``CtxAdapter(concepts, latent_shape)``, ``Objective()`` and
``examples/finetune.py`` without flags build the project's setup; ``--preset paper`` and
``AdapterConfig.paper()`` / ``Objective.paper()`` the paper's. The training flags, the saved
``config.json`` and the JSON files of ``--adapter_config`` / ``--objective_config`` are
derived from the fields, so adding a field to a dataclass is all it takes to make a setting
reachable everywhere.

Every value is checked by its field's type on construction: ``int`` fields hold integers
``>= 1``, ``float`` fields finite numbers ``>= 0``, ``bool`` fields ``True``/``False`` and
``Literal`` fields one of their choices. A bad value is a ``ValueError`` naming the key, the
value and what is expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from .heads import HEADS
from .layers import CAUSAL_EFFECTS, COMPOSITIONS, EXOGENOUS_BIASES, OBSERVATIONAL_MIXINGS

PRESET_NAMES = ("ctxadapter", "paper")
"""The presets: ``"ctxadapter"`` (the defaults) and ``"paper"`` (the paper's exact setup)."""


def expected_value(hint) -> str:
    """What a field of type ``hint`` accepts, in words."""
    if typing.get_origin(hint) is Literal:
        return f"one of {typing.get_args(hint)}"
    return {
        bool: "true or false",
        int: "an integer >= 1",
        float: "a finite number >= 0",
    }[hint]


def accepts(hint, value) -> bool:
    """Whether ``value`` is a valid value of a field of type ``hint`` (see the module)."""
    if typing.get_origin(hint) is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if hint is bool or isinstance(value, bool):
        return hint is bool and isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and value >= 1
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


class Settings:
    """Base of the settings dataclasses: checks on construction, presets, dicts and JSON.

    A subclass is a frozen dataclass whose field defaults are the project's defaults;
    ``PRESETS`` maps each name of ``PRESET_NAMES`` to the fields it changes."""

    PRESETS: ClassVar[dict[str, dict]]

    def __post_init__(self):
        fields = {name: getattr(self, name) for name in self.field_types()}
        self.check(fields, type(self).__name__)

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Field name -> its type, in the dataclass's order."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def check(cls, values: Mapping, source: str) -> None:
        """Refuse ``values`` (field name -> value) holding an unknown key or a bad value with a
        ``ValueError`` naming ``source``, the key and the expected keys or values."""
        if not isinstance(values, Mapping):
            raise ValueError(
                f"{source}: expected an object of {cls.__name__} fields, got {values!r}."
            )
        types = cls.field_types()
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ValueError(
                f"{source}: unknown keys {unknown}; the {cls.__name__} keys are {list(types)}."
            )
        for name, value in values.items():
            if not accepts(types[name], value):
                raise ValueError(
                    f"{source}: key {name!r} holds {value!r}, expected "
                    f"{expected_value(types[name])}."
                )

    @classmethod
    def preset(cls, name: str) -> Settings:
        """The settings of preset ``name`` (one of ``PRESET_NAMES``)."""
        if name not in PRESET_NAMES:
            raise ValueError(f"Unknown preset {name!r}; the presets are {PRESET_NAMES}.")
        return cls(**cls.PRESETS.get(name, {}))

    @classmethod
    def paper(cls) -> Settings:
        """The paper's settings: ``preset("paper")``."""
        return cls.preset("paper")

    def to_dict(self) -> dict:
        """The fields as a dict (keyword arguments of the class, and JSON)."""
        return dataclasses.asdict(self)

    def updated(self, changes: Mapping, source: str | None = None) -> Settings:
        """A copy with the fields in ``changes`` replaced, checked by ``check`` (``source``,
        default: the class, names where they come from)."""
        self.check(changes, source or type(self).__name__)
        return dataclasses.replace(self, **changes)


def read_settings(value: str | Mapping | None, what: str) -> dict:
    """The changes a ``--adapter_config`` / ``--objective_config`` value asks for: a dict as
    given, a JSON object (text starting with ``{``) or the path of a JSON file holding one;
    ``None`` is no change. ``what`` names the flag in errors."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a JSON file, a JSON object or a dict, got {value!r}.")
    text, source = value, f"{what} {value!r}"
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"{what}: no file {value!r} (expected a JSON file or a JSON object).")
        text = path.read_text(encoding="utf-8")
    try:
        changes = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON ({error}).") from None
    if not isinstance(changes, dict):
        raise ValueError(f"{source} holds a JSON {type(changes).__name__}, expected an object.")
    return changes


@dataclass(frozen=True)
class AdapterConfig(Settings):
    """The architecture of a ``CtxAdapter``: the keyword arguments of ``CtxAdapter`` besides
    the concepts, the latent shape and the records of the base autoencoder and decoder LoRA.

    Args:
        exogenous_width: ``w_in``, noise dimensions per concept (``z`` has ``K*w_in``).
        concept_width: ``w_out``, dimensions per concept in the causal layer.
        expressive_depth: number of widths of the per-concept MLPs (1 = no MLP).
        observational_mixing: ``"block"`` (no mixing of concepts' noise in the observational
            context) or ``"dense"`` (the paper's: the observational context may mix noise
            across concepts in the exogenous layer).
        composition: ``"strict"`` (a composition cuts every effect into each of its concepts,
            from each other too, as a joint intervention in an SCM does) or ``"reference"`` (the
            paper's: effects among jointly intervened concepts are kept;
            ``ctxadapter.layers.CausalLayer``).
        causal_effects: ``"shared"`` (an intervention keeps the intervened concepts' effects on
            the others: one effect matrix for every context, as in an SCM) or ``"separate"``
            (the paper's: the effects of intervened concepts have their own weights;
            ``ctxadapter.layers.CausalLayer``).
        pooled: ignore context labels (always observational): the "CM pooled" ablation.
        exogenous_bias: ``"interventional"`` (intervened blocks take their own bias, so edits
            can shift them; see ``ctxadapter.layers.ExogenousLayer``) or ``"shared"`` (the
            paper's: one exogenous bias for every context).
        heads: the posterior and latent heads (``ctxadapter.heads``): ``"auto"``
            (``"additive"`` below 4,096 latent values, ``"conv"`` from 4,096; an adapter
            records the kind chosen), ``"additive"`` (an MLP posterior head; a latent head
            that renders each concept block on its own and sums), ``"mlp"`` (two hidden GELU
            layers of ``head_width`` each way), ``"conv"`` (spatial heads for large latents)
            or ``"linear"`` (the paper's: one linear map each way).
        head_width: hidden width of the MLP heads (and of the MLPs inside ``"conv"`` and
            ``"additive"`` heads).
        posterior_context: the posterior head reads the image's context beside its latent
            (``True``), so that an image's noise is inferred under its own context's causal
            model, as a counterfactual's abduction step is; ``False`` (the paper's) reads the
            latent only. A context-free posterior gives an image the same noise whatever
            context it came from, so wherever an interventional context and ``obs`` can show
            the same image, both must decode that noise to it and an edit leaves such images
            unchanged (``docs/results.md``).
    """

    exogenous_width: int = 32
    concept_width: int = 8
    expressive_depth: int = 2
    observational_mixing: Literal[OBSERVATIONAL_MIXINGS] = "block"
    composition: Literal[COMPOSITIONS] = "strict"
    causal_effects: Literal[CAUSAL_EFFECTS] = "shared"
    pooled: bool = False
    exogenous_bias: Literal[EXOGENOUS_BIASES] = "interventional"
    heads: Literal[HEADS] = "auto"
    head_width: int = 256
    posterior_context: bool = True

    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": dict(
            heads="linear",
            observational_mixing="dense",
            exogenous_bias="shared",
            posterior_context=False,
            causal_effects="separate",
            composition="reference",
        ),
    }

    SAVED_WITHOUT: ClassVar[dict[str, object]] = {
        "posterior_context": False,
        "causal_effects": "separate",
    }
    """What a field missing from a saved ``config.json`` stands for, for the fields added after
    the first release (their value before they existed); any other missing field takes its
    default."""
