"""Sharing an adapter on the Hub: the login and repository checked before any work
(``reach_repo``), the files a training run adds to an adapter folder (``run_files``), the config
a pushed adapter records (``hub_config``) and the push of a whole adapter folder
(``push_adapter``, behind ``ContextAutoencoder.push_to_hub``), uploaded by
``huggingface_hub.ModelHubMixin.push_to_hub``. ``finetune.py --push_to_hub`` pushes the folder
it wrote through ``push_to_hub``, so a push from Python and from the command line upload the
same files."""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import HfApi, ModelHubMixin

from .card import card_kwargs, is_hub_id
from .pinning import loads_anywhere

METRICS_FILE = "metrics.json"
"""What a training run measured; its ``"pictures"`` lists the run's pictures in the folder."""


def reach_repo(repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Check the Hub login (``whoami``) and create the model repository ``repo_id`` or reach it
    if it exists. Returns its full id (``user/name`` for a bare ``name``).

    Raises:
        PermissionError: naming the repository, when there is no usable login (no token, a
            token the Hub refuses, or no connection to the Hub) or the repository can be
            neither created nor reached with it.
    """
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except Exception as error:  # any failure (HTTP, transport, no token) is the same answer
        raise PermissionError(
            f"Cannot push to the Hub repository {repo_id!r}: the Hub login could not be checked "
            f"({error}). Log in with `hf auth login`, set HF_TOKEN or pass token=, "
            f"and check the connection to the Hub."
        ) from error
    try:
        return api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    except Exception as error:
        raise PermissionError(
            f"Cannot create or reach the Hub repository {repo_id!r} as {user!r}: {error}"
        ) from error


def run_files(folder: str | os.PathLike) -> list[Path]:
    """The files a training run wrote beside the adapter in ``folder``: ``metrics.json`` and
    the pictures it lists (none for a folder without ``metrics.json``)."""
    metrics = Path(folder) / METRICS_FILE
    if not metrics.is_file():
        return []
    pictures = json.loads(metrics.read_text()).get("pictures", [])
    return [metrics] + [Path(folder, name) for name in pictures if Path(folder, name).is_file()]


def hub_config(config: Mapping, base_model_id: str | None = None) -> dict:
    """A copy of an adapter's ``config`` as a pushed adapter records it: with
    ``base_model_id`` as the base autoencoder's location when one is given.

    Raises:
        ValueError: for a ``base_model_id`` that is not a Hub id, or, without one, for a base
            recorded as a local folder (the pushed adapter would load nowhere else); an
            autoencoder shipped with ctxadapter (``ctxadapter:quad-autoencoder``,
            ``ctxadapter:photo-autoencoder``) loads wherever ctxadapter is installed.
    """
    config = copy.deepcopy(dict(config))
    base = config["base_model"]
    if base_model_id:
        if not is_hub_id(base_model_id):
            raise ValueError(
                f"base_model_id must be a Hub repository id 'org/name', got {base_model_id!r}"
            )
        config["base_model"] = {**(base or {}), "pretrained_model_name_or_path": base_model_id}
    elif base and not loads_anywhere(base["pretrained_model_name_or_path"]):
        raise ValueError(
            f"This adapter's base autoencoder is the local folder "
            f"{base['pretrained_model_name_or_path']!r}, which does not exist on the Hub: "
            f"the pushed adapter would load nowhere else. Upload the autoencoder and pass "
            f"its Hub id with base_model_id= (--hub_base_model_id in finetune.py)."
        )
    return config


class _AdapterFolder(ModelHubMixin):
    """A model's adapter folder with more files beside it, for ``ModelHubMixin.push_to_hub``
    (which saves it into a temporary folder and uploads that in one commit)."""

    def __init__(self, model, files: Sequence[Path]):
        self.model, self.files = model, list(files)

    def save_pretrained(self, save_directory, *, config=None, model_card_kwargs=None) -> None:
        self.model.save_pretrained(
            save_directory, config=config, model_card_kwargs=model_card_kwargs
        )
        for file in self.files:
            shutil.copy(file, save_directory)


def push_adapter(
    model,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload ctxadapter adapter",
    base_model_id: str | None = None,
    extra_files: Sequence[str | os.PathLike] = (),
    model_card_kwargs: dict | None = None,
) -> str:
    """``ContextAutoencoder.push_to_hub``: save the adapter folder of ``model``, with a copy of
    its config (``hub_config``; the model is left unchanged), and upload it to the Hub
    repository ``repo_id`` (created if needed, after checking the login) in one commit, by
    ``huggingface_hub.ModelHubMixin.push_to_hub``. Returns the commit's URL.

    An adapter loaded from a training run's folder (``from_pretrained(folder)``, or the
    model ``finetune.py --push_to_hub`` just saved) uploads that run's ``metrics.json`` and
    pictures too, and its model card shows them with the training command and the results
    (``ctxadapter.hub.run_files``): the same files either way.

    Args:
        repo_id: the Hub repository; the card's usage snippet names it.
        token, private, commit_message: as for ``huggingface_hub``'s uploads.
        base_model_id: the Hub id of the base autoencoder. Required when the adapter
            records a local folder as its base (an adapter that names a folder of this
            machine would load nowhere else); the pushed config records it. An
            autoencoder that ships with ctxadapter (``ctxadapter:quad-autoencoder``,
            ``ctxadapter:photo-autoencoder``) loads wherever ctxadapter is installed and needs
            none.
        extra_files: more files uploaded beside the adapter.
        model_card_kwargs: arguments of ``ctxadapter.card.model_card``, over those read
            from the run's ``metrics.json``.

    Raises:
        ValueError: for a local base without ``base_model_id``, before anything is sent.
        PermissionError: without a usable Hub login or write access to ``repo_id``.
    """
    config = hub_config(model.adapter.config, base_model_id)
    missing = [str(f) for f in extra_files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"extra_files not found: {missing}")
    repo_id = reach_repo(repo_id, token, private)
    source = model.name_or_path
    run = run_files(source) if source and os.path.isdir(source) else []
    card = card_kwargs(json.loads(run[0].read_text())) if run else {}
    return _AdapterFolder(model, [*run, *map(Path, extra_files)]).push_to_hub(
        repo_id,
        config=config,
        commit_message=commit_message,
        private=private,
        token=token,
        model_card_kwargs=card | (model_card_kwargs or {}) | {"repo_id": repo_id},
    )
