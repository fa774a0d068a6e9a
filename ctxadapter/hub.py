"""Sharing an adapter on the Hub: the login and repository checked before any work
(``reach_repo``), the files a training run adds to an adapter folder (``run_files``) and the
upload (``upload_folder``). ``ContextAutoencoder.push_to_hub`` uses them, and ``finetune.py
--push_to_hub`` pushes through it, so both upload the same files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

METRICS_FILE = "metrics.json"
"""What a training run measured; its ``"pictures"`` lists the run's pictures in the folder."""


def reach_repo(repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Check the Hub login (``whoami``) and create the model repository ``repo_id`` or reach it
    if it exists. Returns its full id (``user/name`` for a bare ``name``).

    Raises:
        PermissionError: naming the repository, when there is no usable login or the
            repository can be neither created nor reached with it.
    """
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except (HfHubHTTPError, LocalTokenNotFoundError, OSError) as error:
        raise PermissionError(
            f"Cannot push to the Hub repository {repo_id!r}: no usable Hub login ({error}). "
            f"Log in with `hf auth login`, or pass a token (--hub_token / token=)."
        ) from error
    try:
        return api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    except (HfHubHTTPError, OSError) as error:
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


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    commit_message: str = "Upload ctxadapter adapter",
) -> str:
    """Upload every file of ``folder`` to the model repository ``repo_id`` in one commit;
    returns the commit's URL."""
    return HfApi(token=token).upload_folder(
        repo_id=repo_id, folder_path=os.fspath(folder), commit_message=commit_message
    )
