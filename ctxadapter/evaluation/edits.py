"""``edit_scores``: how counterfactual edits keep and change held-out images of any data (no
ground truth needed; for quad's, see ``ctxadapter.evaluation.quad.counterfactual_shifts``)::

    from ctxadapter import ContextAutoencoder
    from ctxadapter.evaluation import edit_scores

    model = ContextAutoencoder.from_pretrained("my-adapter")
    scores = edit_scores(model, images)  # (N, 3, H, W) floats in [0, 1], or uint8
    print(scores["identity_psnr"], scores["edits"]["quad1"]["mean_abs_change"])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..images import DEFAULT_BATCH_SIZE, model_input, unit_to_signed
from ..model import eval_mode
from .metrics import psnr

__all__ = ["edit_scores"]


def edit_scores(
    model,
    images,
    contexts: Sequence[str] | None = None,
    source_context: str = "obs",
    strength: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """How counterfactual edits keep and change held-out images of any data.

    Every image (from ``source_context``) is edited under ``source_context`` itself (the
    identity edit) and under each of ``contexts`` (default: every concept, one intervention
    each), in both modes of ``ContextAutoencoder.counterfactual``.

    Args:
        model: a ``ContextAutoencoder``.
        images: ``(N, H, W, 3)`` / ``(N, 3, H, W)`` ``uint8`` or ``(N, 3, H, W)`` floats in
            ``[0, 1]`` (``ctxadapter.images.model_input``).
        contexts: the edits to score.
        source_context: the context the images come from.
        strength: the edits' ``strength`` (``ContextAutoencoder.counterfactual``).
        batch_size: images edited at once.

    Returns:
        ``{"images": N, "identity_psnr": dB, "reconstruction_psnr": dB, "edits": {context:
        {"psnr", "decode_psnr", "mean_abs_change"}}}``: ``identity_psnr`` is the PSNR of the
        residual identity edit against the input (the base autoencoder's own reconstruction),
        ``reconstruction_psnr`` that of the adapter's reconstruction (``reconstruct`` under
        ``source_context``, through the adapter's heads); per context, ``psnr``
        and ``decode_psnr`` are the residual and the decode-mode edit against the input, and
        ``mean_abs_change`` the mean absolute difference, on ``[0, 1]``, between the residual
        edit and the identity edit: how much the intervention changes the picture. PSNRs are
        per-image means.
    """
    images = model_input(images, model.resolution)
    contexts = list(model.adapter.concepts if contexts is None else contexts)
    keys = ("psnr", "decode_psnr", "mean_abs_change")
    totals: dict = {}  # sums over the images

    def add(key, batch_mean: Tensor, count: int) -> None:
        totals[key] = totals.get(key, 0.0) + batch_mean.item() * count

    def decode(latents: Tensor) -> Tensor:
        return model.codec.postprocess(model.codec.decode(latents), "pt")

    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            target = images[start : start + batch_size].to(model.device)
            count = len(target)
            # Encode once; every edit below starts from these latents.
            latents = model.codec.encode(unit_to_signed(target)).to(model.device, model.dtype)
            identity = decode(model.edit_latents(latents, source_context, source_context))
            add("identity", psnr(identity, target), count)
            own = decode(model.edit_latents(latents, source_context, source_context, "decode"))
            add("reconstruction", psnr(own, target), count)
            for context in contexts:
                edit = decode(
                    model.edit_latents(latents, context, source_context, "residual", strength)
                )
                decoded = decode(
                    model.edit_latents(latents, context, source_context, "decode", strength)
                )
                add((context, "psnr"), psnr(edit, target), count)
                add((context, "decode_psnr"), psnr(decoded, target), count)
                add(
                    (context, "mean_abs_change"),
                    (edit - identity).abs().flatten(1).mean(1).mean(),
                    count,
                )
    n = len(images)
    return {
        "images": n,
        "identity_psnr": totals["identity"] / n,
        "reconstruction_psnr": totals["reconstruction"] / n,
        "edits": {c: {key: totals[(c, key)] / n for key in keys} for c in contexts},
    }
