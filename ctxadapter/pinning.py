"""Pinning an adapter's base autoencoder: the Hub commit it was trained on, and a fingerprint of
its weights, so that a base with other weights (a fine-tuned VAE with the same scaling
factors, say) is refused rather than decoding wrong images.

The fingerprint is read from the weights *files*, not from the loaded module, so it does not
depend on the dtype the autoencoder is loaded in: a SHA-256 of every tensor's name, dtype and
shape in the safetensors header and of the first 8 values of 64 evenly spaced rows of each
tensor as stored (read without loading the whole file a second time)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open

from .card import is_hub_id
from .codec import LatentCodec, load_autoencoder

_ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_AUTOENCODERS = {
    "ctxadapter:quad-autoencoder": _ASSETS / "quad-autoencoder",
    "ctxadapter:photo-autoencoder": _ASSETS / "photo-autoencoder",
}
"""Autoencoders that ship inside the package, by the name an adapter records for them (so an
adapter trained on one loads wherever ctxadapter is installed): the quad autoencoder (64 x 64
quad images, the default base) and a general photograph autoencoder (trained on augmented crops
of scikit-image's sample photographs; any size that is a multiple of 4). The name is accepted
wherever a base autoencoder is given (``--pretrained_model_name_or_path``)."""


def loads_anywhere(name: str | None) -> bool:
    """Whether a recorded base autoencoder loads on any machine with ctxadapter installed: a
    Hub id or the name of a shipped autoencoder (``"ctxadapter:quad-autoencoder"``,
    ``"ctxadapter:photo-autoencoder"``)."""
    return name in SHIPPED_AUTOENCODERS or is_hub_id(name)


def local_path(name_or_path: str) -> str:
    """``name_or_path``, with the name of a shipped autoencoder replaced by its folder."""
    return str(SHIPPED_AUTOENCODERS.get(name_or_path, name_or_path))


def portable_name(name_or_path: str) -> str:
    """The name to record for an autoencoder: a shipped one's name, a local folder made
    absolute (so any working directory works), a Hub id as it is."""
    if not os.path.isdir(name_or_path):
        return name_or_path
    folder = Path(name_or_path).resolve()
    for name, path in SHIPPED_AUTOENCODERS.items():
        if folder == path:
            return name
    return str(folder)


WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
SAMPLES_PER_TENSOR = 64
VALUES_PER_ROW = 8


def _file(name_or_path: str, filename: str, revision, subfolder, **hub_kwargs) -> Path | None:
    """The local path of ``filename`` of a folder, or of a Hub repository in the local Hub
    cache (never the network: the autoencoder was just loaded, so its files are cached);
    ``None`` if absent."""
    if os.path.isdir(name_or_path):
        path = Path(name_or_path, subfolder or "", filename)
        return path if path.is_file() else None
    found = try_to_load_from_cache(
        name_or_path,
        f"{subfolder}/{filename}" if subfolder else filename,
        cache_dir=hub_kwargs.get("cache_dir"),
        revision=revision,
    )
    return Path(found) if isinstance(found, str) else None


def resolved_commit(
    name_or_path: str, revision: str | None = None, subfolder: str | None = None, **hub_kwargs
) -> str | None:
    """The commit hash a Hub autoencoder's files come from (``None`` for a local folder)."""
    if os.path.isdir(name_or_path):
        return None
    config = _file(name_or_path, "config.json", revision, subfolder, **hub_kwargs)
    match = re.search(r"snapshots[/\\\\]([0-9a-f]{40})[/\\\\]", str(config)) if config else None
    return match.group(1) if match else None


def _sample(tensor, shape: list[int]) -> torch.Tensor:
    """The first ``VALUES_PER_ROW`` values of ``SAMPLES_PER_TENSOR`` evenly spaced rows (along
    the first dimension) of a tensor of ``shape`` with at least one dimension: a safetensors
    slice (read without reading the rest of it) or a ``torch.Tensor``."""
    rows = shape[0]
    picks = sorted(
        {
            i * (rows - 1) // max(1, SAMPLES_PER_TENSOR - 1)
            for i in range(min(rows, SAMPLES_PER_TENSOR))
        }
    )
    return torch.cat([tensor[i : i + 1].flatten()[:VALUES_PER_ROW] for i in picks])


def _update(digest, name: str, dtype: str, shape: list[int], sample: torch.Tensor) -> None:
    """Add one tensor (its name, stored dtype, shape and sampled values) to ``digest``."""
    digest.update(f"{name}:{dtype}:{shape}".encode())
    digest.update(sample.contiguous().view(torch.uint8).numpy().tobytes())  # bytes as stored


STORED_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
"""safetensors' names of the dtypes of ``torch`` tensors, as its headers write them."""


def weights_fingerprint(
    name_or_path: str, revision: str | None = None, subfolder: str | None = None, **hub_kwargs
) -> str | None:
    """The fingerprint of an autoencoder's safetensors weights (sharded or not); ``None`` when
    it has none (weights in another format are not fingerprinted)."""
    index = _file(name_or_path, WEIGHTS_INDEX, revision, subfolder, **hub_kwargs)
    if index is not None:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = [WEIGHTS_FILE]
    digest = hashlib.sha256()
    for shard in shards:
        path = _file(name_or_path, shard, revision, subfolder, **hub_kwargs)
        if path is None:
            return None
        with safe_open(str(path), "pt") as weights:
            for name in sorted(weights.keys()):
                tensor = weights.get_slice(name)
                shape = tensor.get_shape()
                whole = weights.get_tensor(name).flatten() if not shape else None
                sample = whole if whole is not None else _sample(tensor, shape)
                _update(digest, name, tensor.get_dtype(), shape, sample)
    return digest.hexdigest()[:16]


def module_fingerprint(autoencoder: torch.nn.Module) -> str:
    """The fingerprint ``weights_fingerprint`` gives the files of an unsharded autoencoder,
    computed from the module's own weights as they are now (in its current dtypes)."""
    digest = hashlib.sha256()
    state = autoencoder.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        shape = list(tensor.shape)
        sample = _sample(tensor, shape) if shape else tensor.flatten()
        _update(digest, name, STORED_DTYPES.get(tensor.dtype, str(tensor.dtype)), shape, sample)
    return digest.hexdigest()[:16]


def check_given_autoencoder(record: dict | None, autoencoder) -> None:
    """Refuse an autoencoder given in place of the base an adapter records (``record``) when
    the record has a fingerprint and neither the module's weights (``module_fingerprint``)
    nor the files it was loaded from (its config's ``_name_or_path``, e.g. loaded in another
    dtype) have it, naming both values."""
    recorded = (record or {}).get("fingerprint")
    if not recorded or (found := module_fingerprint(autoencoder)) == recorded:
        return
    source = getattr(autoencoder.config, "_name_or_path", None)
    subfolders = {None, (record or {}).get("subfolder")}
    if source and any(weights_fingerprint(source, subfolder=s) == recorded for s in subfolders):
        return
    raise ValueError(
        f"The autoencoder passed with autoencoder= has other weights than the base this "
        f"adapter was trained on: weights fingerprint {found} where the adapter records "
        f"{recorded}. Pass the right one, or check_base=False to use it anyway."
    )


def base_model_record(
    autoencoder,
    pretrained_model_name_or_path: str,
    revision: str | None = None,
    subfolder: str | None = None,
    **hub_kwargs,
) -> dict:
    """What an adapter's config records about its base autoencoder (see ``CtxAdapter``): where
    it comes from (a Hub id with the commit its files come from as ``revision``, a shipped
    autoencoder's name, or an absolute folder), its class, its latent normalisation and the
    fingerprint of its weights files (``ctxadapter.pinning``). ``hub_kwargs`` (``cache_dir``,
    ``token``...) are those it was loaded with."""
    codec = LatentCodec(autoencoder)
    name = str(pretrained_model_name_or_path)
    where = dict(revision=revision, subfolder=subfolder, **hub_kwargs)
    statistics = codec.latents_mean is not None
    return dict(
        pretrained_model_name_or_path=portable_name(name),
        revision=resolved_commit(local_path(name), **where) or revision,
        subfolder=subfolder,
        class_name=type(autoencoder).__name__,
        scaling_factor=codec.scaling_factor,
        shift_factor=codec.shift_factor,
        latents_mean=codec.latents_mean.tolist() if statistics else None,
        latents_std=codec.latents_std.tolist() if statistics else None,
        latent_patch_size=codec.latent_patch_size,
        fingerprint=weights_fingerprint(local_path(name), **where),
    )


def check_base_record(record: dict | None, codec: LatentCodec) -> None:
    """Refuse an autoencoder (``codec``) whose latent normalisation differs from the one an
    adapter's ``base_model`` ``record`` was trained on, naming both values."""
    record = record or {}
    for key in ("scaling_factor", "shift_factor", "latent_patch_size"):
        value = record.get(key)
        if value is not None and not math.isclose(value, getattr(codec, key)):
            raise ValueError(
                f"The adapter was trained on latents with {key}={value}, but this autoencoder "
                f"has {key}={getattr(codec, key)}."
            )
    for key in ("latents_mean", "latents_std"):
        value, own = record.get(key), getattr(codec, key)
        if value is not None and (
            own is None or not torch.allclose(torch.tensor(value), own, rtol=1e-4, atol=1e-6)
        ):
            raise ValueError(
                f"The adapter was trained on latents normalised with {key}={value}, but this "
                f"autoencoder has {key}={None if own is None else own.tolist()}."
            )


def load_base_model(
    record: dict, torch_dtype: torch.dtype | None = None, check: bool = True, **hub_kwargs
):
    """Load the base autoencoder an adapter's ``base_model`` ``record`` names, at the revision
    and subfolder it records; refuse one of another class, or (``check``) one whose weights
    files lack the recorded fingerprint. ``hub_kwargs`` (``cache_dir``, ``token``...) go to
    its ``from_pretrained``."""
    name = local_path(record["pretrained_model_name_or_path"])
    where = dict(revision=record.get("revision"), subfolder=record.get("subfolder"), **hub_kwargs)
    try:
        autoencoder = load_autoencoder(name, torch_dtype=torch_dtype, **where)
    except OSError as error:
        raise OSError(
            f"Could not load the base autoencoder this adapter records, "
            f"{record['pretrained_model_name_or_path']!r} ({record['class_name']}): {error} "
            f"Load it yourself and pass it with autoencoder=."
        ) from error
    if type(autoencoder).__name__ != record["class_name"]:
        raise ValueError(
            f"The adapter records a base autoencoder of class {record['class_name']!r}, "
            f"but {record['pretrained_model_name_or_path']!r} holds a "
            f"{type(autoencoder).__name__}; pass the right one with autoencoder=."
        )
    recorded = record.get("fingerprint") if check else None
    if recorded and recorded != (found := weights_fingerprint(name, **where)):
        raise ValueError(
            f"The base autoencoder {record['pretrained_model_name_or_path']!r} has other "
            f"weights than the one this adapter was trained on: weights fingerprint "
            f"{found} where the adapter records {recorded}. Load the right one (pass it "
            f"with autoencoder=), or pass check_base=False to use it anyway."
        )
    return autoencoder
