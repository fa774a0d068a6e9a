"""An adapter folder's files, read and checked before any weight is allocated.

- ``read_config``: ``config.json`` must be a JSON object; ``check_config``: its keys are the
  adapter's arguments, of the right types (``ctxadapter.config.AdapterConfig`` checks the
  architecture's), with sizes within ``LIMITS``;
- ``weights_file``: the folder's (or Hub repository's) ``model.safetensors``; pickles never;
- ``check_weights``: the safetensors header (names, shapes, dtypes, read without reading the
  tensors) against the shapes the config describes, and the config against the hash of the
  config the weights were saved with (``config_digest``, in the weights' metadata);
- ``check_finite``: loaded weights hold finite values only.

Every refusal is a ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file and
the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from safetensors import SafetensorError, safe_open

from .config import AdapterConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

VERSION_KEY = "ctxadapter_version"
"""The key of a saved config that records the ctxadapter version that saved it."""

REQUIRED_KEYS = ("concepts", "latent_shape")
RECORD_KEYS = ("base_model", "decoder_lora")
"""The keys of a config besides the architecture (``AdapterConfig``'s fields): the required
ones, and the records of the base autoencoder and of the decoder LoRA (objects or null)."""

CONFIG_DIGEST_KEY = "config_sha256"
"""The key of the weights' metadata that holds ``config_digest`` of the config saved with them."""

LIMITS = {
    "concepts": 512,
    "latent_shape": 16_384,
    "exogenous_width": 4_096,
    "concept_width": 4_096,
    "expressive_depth": 64,
    "head_width": 16_384,
}
"""The largest value of each size of a loaded config (``concepts``: the number of names;
``latent_shape``: each of its three values), far above any trained adapter: a small config
cannot ask for an unbounded model."""

LOCATION_KEYS = ("pretrained_model_name_or_path", "revision", "subfolder")
"""Keys of ``base_model`` that say where the base is, not what it is: left out of
``config_digest``, so that a moved base can be pointed to again by editing them."""

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def describe(model_id: str, filename: str) -> str:
    """How messages name ``filename`` of an adapter: its path for a folder, else the file of
    the Hub repository."""
    if os.path.isdir(model_id):
        return os.path.join(model_id, filename)
    return f"{filename} of Hub repository {model_id!r}"


def check_location(model_id: str) -> None:
    """Refuse, with ``FileNotFoundError``, a ``model_id`` that names no folder here and cannot
    be a Hub repository id: a path (starting with ``/``, ``.`` or ``~``, or whose parent
    folder exists here) or a name that is not ``"org/name"``."""
    if os.path.isdir(model_id):
        return
    parent = os.path.dirname(model_id)
    local = model_id.startswith(("/", ".", "~")) or (parent and os.path.isdir(parent))
    if local or model_id.count("/") != 1:
        raise FileNotFoundError(
            f"No adapter folder {model_id!r}: no such folder here, and it is not a Hub "
            f"repository id ('org/name')."
        )


def read_config(model_id: str, **download_kwargs) -> dict | None:
    """The JSON object in the adapter's ``config.json``; ``None`` when there is none (a
    folder without it, or a Hub repository that could not give it).

    Raises:
        ValueError: for a file that is not JSON, or JSON that is not an object, naming it.
    """
    if os.path.isdir(model_id):
        path = os.path.join(model_id, CONFIG_NAME)
        if not os.path.isfile(path):
            return None
    else:
        try:
            path = hf_hub_download(model_id, CONFIG_NAME, **download_kwargs)
        except HfHubHTTPError:
            return None
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{describe(model_id, CONFIG_NAME)} is not valid JSON ({error}): the file is damaged "
            f"or not an adapter's config."
        ) from error
    if not isinstance(config, dict):
        raise ValueError(
            f"{describe(model_id, CONFIG_NAME)} holds a JSON {type(config).__name__}, expected "
            f"an object of the adapter's settings."
        )
    return config


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(where: str, key: str, value, expected: str) -> ValueError:
    return ValueError(f"{where}: key {key!r} holds {value!r}, expected {expected}.")


def check_config(config: Mapping, where: str) -> None:
    """Refuse a config whose keys are not the adapter's arguments, or whose values have the
    wrong type or exceed ``LIMITS``, naming ``where`` (the file) and the key. A missing
    architecture key takes ``AdapterConfig``'s default."""
    architecture = AdapterConfig.field_types()
    known = {*REQUIRED_KEYS, *architecture, *RECORD_KEYS, VERSION_KEY}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"Unknown keys {unknown} in {where}; known keys are {sorted(known)}.")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"Missing keys {missing} in {where}.")
    concepts = config["concepts"]
    if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
        raise _refuse(where, "concepts", concepts, "a list of concept names")
    if not 0 < len(concepts) <= LIMITS["concepts"]:
        raise _refuse(
            where, "concepts", f"{len(concepts)} names", f"1 to {LIMITS['concepts']} names"
        )
    shape = config["latent_shape"]
    limit = LIMITS["latent_shape"]
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(_is_int(v) and 0 < v <= limit for v in shape)
    ):
        raise _refuse(where, "latent_shape", shape, f"3 integers from 1 to {limit}")
    for key in [key for key in architecture if key in LIMITS]:
        value = config.get(key, 1)
        if not (_is_int(value) and 0 < value <= LIMITS[key]):
            raise _refuse(where, key, value, f"an integer from 1 to {LIMITS[key]}")
    AdapterConfig().updated({k: config[k] for k in architecture if k in config}, where)
    for key in RECORD_KEYS:
        if not isinstance(config.get(key), (dict, type(None))):
            raise _refuse(where, key, config[key], "an object or null")
    if not isinstance(config.get(VERSION_KEY, ""), str):
        raise _refuse(where, VERSION_KEY, config[VERSION_KEY], "a string")
    _check_base_model(config.get("base_model") or {}, where)


BASE_MODEL_TYPES = {
    "pretrained_model_name_or_path": (str,),
    "class_name": (str,),
    "revision": (str, type(None)),
    "subfolder": (str, type(None)),
    "fingerprint": (str, type(None)),
    "scaling_factor": (int, float, type(None)),
    "shift_factor": (int, float, type(None)),
    "latent_patch_size": (int, type(None)),
    "latents_mean": (list, type(None)),
    "latents_std": (list, type(None)),
}
"""The types of the values of a config's ``base_model`` (``ctxadapter.pinning``)."""


def _check_base_model(base: Mapping, where: str) -> None:
    """Refuse a ``base_model`` value of the wrong type (numbers in its lists included)."""
    for key, types in BASE_MODEL_TYPES.items():
        if key not in base:
            continue
        value = base[key]
        numbers = not isinstance(value, list) or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not isinstance(value, types) or isinstance(value, bool) or not numbers:
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise _refuse(where, f"base_model.{key}", value, kinds)


def config_digest(config: Mapping) -> str:
    """SHA-256 of what a config says about the weights saved with it: every key but
    ``ctxadapter_version`` and the base's location (``LOCATION_KEYS``)."""
    bound = {k: v for k, v in config.items() if k != VERSION_KEY}
    if bound.get("base_model"):
        base = bound["base_model"]
        bound["base_model"] = {k: v for k, v in base.items() if k not in LOCATION_KEYS}
    return hashlib.sha256(json.dumps(bound, sort_keys=True).encode()).hexdigest()


def weights_file(model_id: str, **download_kwargs) -> str:
    """The local path of the adapter's ``model.safetensors`` (downloaded from the Hub for a
    repository id); a folder or repository with only pickled weights is refused, naming
    them."""
    if os.path.isdir(model_id):
        path = os.path.join(model_id, WEIGHTS_NAME)
        if os.path.isfile(path):
            return path
        pickles = sorted(f for f in os.listdir(model_id) if f.endswith(PICKLE_SUFFIXES))
        found = f"; found only {pickles}, which are pickles and are never loaded" if pickles else ""
        raise FileNotFoundError(
            f"No {WEIGHTS_NAME} in {model_id}{found}. ctxadapter loads weights from "
            f"safetensors only."
        )
    try:
        return hf_hub_download(model_id, WEIGHTS_NAME, **download_kwargs)
    except EntryNotFoundError as error:
        raise FileNotFoundError(
            f"No {WEIGHTS_NAME} in Hub repository {model_id!r}. ctxadapter loads weights from "
            f"safetensors only and never unpickles .bin or .pt files."
        ) from error


def read_header(path: str) -> tuple[dict[str, tuple[list[int], str]], dict[str, str]]:
    """The tensors of a safetensors file (name -> ``(shape, dtype)``) and its metadata, read
    from its header only. A file that cannot be read is refused, naming it."""
    try:
        with safe_open(path, "pt") as weights:
            tensors = {}
            for name in weights.keys():
                tensor = weights.get_slice(name)
                tensors[name] = (list(tensor.get_shape()), tensor.get_dtype())
            return tensors, weights.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"Could not read adapter weights {path}: the file is corrupted or truncated ({error})."
        ) from error


def check_weights(
    path: str, config_where: str, expected: Mapping[str, torch.Tensor], config: Mapping
) -> None:
    """Refuse weights ``path`` that do not fit the model of ``config`` (read from
    ``config_where``; ``expected``: its state dict, on the meta device), from the file's
    header: a latent shape other than the one recorded in the metadata, a missing or
    unexpected tensor, another shape, an integer dtype where the model has floating-point
    weights (or the reverse, for counters), or a config other than the one
    the weights were saved with (``config_digest`` in the metadata; weights saved before it was
    recorded are not checked for it)."""
    tensors, metadata = read_header(path)
    saved_shape = json.loads(metadata.get("latent_shape", "null"))
    if saved_shape is not None and saved_shape != list(config["latent_shape"]):
        raise ValueError(
            f"{config_where} says latent_shape {list(config['latent_shape'])}, but its weights "
            f"{path} were saved for {saved_shape}: the config was edited."
        )
    mismatches = [f"{name} is missing" for name in expected if name not in tensors]
    mismatches += [f"unexpected {name}" for name in tensors if name not in expected]
    mismatches += [
        f"{name} has shape {tensors[name][0]} where the config gives {list(tensor.shape)}"
        for name, tensor in expected.items()
        if name in tensors and tensors[name][0] != list(tensor.shape)
    ]
    if mismatches:
        raise ValueError(
            f"The weights in {path} do not match the adapter described by {config_where}: "
            f"{'; '.join(mismatches[:5])}."
        )
    for name, (_, dtype) in tensors.items():
        if expected[name].is_floating_point() != (dtype in FLOAT_DTYPES):
            kind = "floating point" if expected[name].is_floating_point() else "integers"
            raise ValueError(
                f"The weights in {path} hold {name} of dtype {dtype}; the adapter's {name} is "
                f"{kind} ({', '.join(FLOAT_DTYPES)} are floating point)."
            )
    recorded = metadata.get(CONFIG_DIGEST_KEY)
    if recorded is not None and recorded != config_digest(config):
        raise ValueError(
            f"{config_where} is not the config the weights {path} were saved with (its "
            f"{CONFIG_DIGEST_KEY} {config_digest(config)[:16]}... differs from the "
            f"{recorded[:16]}... recorded in the weights): the folder mixes two saves (one "
            f"interrupted?) or the config was edited. Save the adapter again."
        )


def check_finite(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Refuse loaded weights holding NaN or infinite values, naming the file and the tensor."""
    for name, tensor in state_dict.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"The weights in {path} hold non-finite values (NaN or inf) in {name}: the "
                f"adapter diverged or the file is damaged."
            )
