"""Scores of a trained adapter against the known causal structure of the ``quad`` dataset,
read from its images' colours, and the held-out quad images they are measured on.

- ``heldout_quad_images``: the ``test`` (or ``validation``) images of quad's contexts.
- ``corner_masks``: each quadrant's corner region, which no shape reaches.
- ``counterfactual_shifts``: how far a counterfactual edit moves the colour of each quadrant
  from the observational reconstruction towards the real interventional images, and how much
  it disturbs the quadrants that the intervention should leave alone.

Per-image counterfactual accuracy on quad is in ``ctxadapter.evaluation.quad_counterfactuals``.

    from ctxadapter import ContextAutoencoder
    from ctxadapter.data import quad
    from ctxadapter.evaluation import counterfactual_shifts, heldout_quad_images

    model = ContextAutoencoder.from_pretrained("my-adapter")
    real = heldout_quad_images(400, dependent=True)
    print(counterfactual_shifts(model, real["obs"], real, dependent=True)["summary"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..contexts import OBSERVATIONAL
from ..data import quad, quad_render
from ..images import DEFAULT_BATCH_SIZE, model_input
from ..model import eval_mode

__all__ = [
    "CORNER_RADIUS",
    "MIN_TARGET_DISTANCE",
    "QUADRANTS",
    "corner_masks",
    "counterfactual_shifts",
    "heldout_quad_images",
]

# Where quad_render.render paints each quadrant: (bottom half?, right half?).
_QUADRANT_HALVES = {
    "quad1": (True, False),
    "quad2": (True, True),
    "quad3": (False, False),
    "quad4": (False, True),
}
QUADRANTS: tuple[str, ...] = tuple(_QUADRANT_HALVES)
"""The concepts that colour a quadrant; also the regions of ``counterfactual_shifts``."""
CORNER_RADIUS = 34.0
"""A quadrant's corner region: its pixels whose centre lies farther than this from the image
centre, in pixels of the 64 x 64 quad image (scaled to the model's resolution). The largest
shape reaches ``24 * sqrt(2) ~ 33.94`` pixels (a square's corner), so no shape covers it."""
MIN_TARGET_DISTANCE = 1e-3
"""``moved`` is None when the real interventional mean colour lies closer than this (RGB
distance, channels in ``[0, 1]``: a quarter of an 8-bit level) to the reconstruction's."""


def heldout_quad_images(
    n_per_context: int = 400,
    dependent: bool = True,
    seed: int = 0,
    contexts: Sequence[str] | None = None,
    split: str = "test",
) -> dict[str, Tensor]:
    """Held-out quad images: the ``test`` split of the 7 training contexts and 9 compositions.

    Drawn with ``ctxadapter.data.quad.sample`` (``split="test"``), whose random stream is
    separate from every training and validation stream, so no image equals a training sample.
    ``n`` images are a prefix of ``m > n`` images with the same arguments, and the same as the
    first rows of the ``test`` split of ``quad.build_dataset(seed=seed, dependent=dependent)``.
    Pass ``split="validation"`` to choose settings without touching the test images (the
    compositions are then drawn from their own validation streams, which no split of
    ``build_dataset`` holds).

    Args:
        n_per_context: images per context (the paper used 10,000; its scores up to 1,280).
        dependent: the dependent (default) or independent quad variant.
        seed: the data seed.
        contexts: the contexts to draw (default: ``quad.TRAIN_CONTEXTS`` then
            ``quad.HELDOUT_COMPOSITIONS``).
        split: ``"test"`` (default) or ``"validation"``; never ``"train"``.

    Returns:
        Context name -> ``uint8`` tensor ``(n, 64, 64, 3)``, in the order of ``contexts``.
    """
    if int(n_per_context) != n_per_context or n_per_context < 1:
        raise ValueError(f"n_per_context must be a positive integer, got {n_per_context!r}")
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    names = (
        list(contexts)
        if contexts is not None
        else [*quad.TRAIN_CONTEXTS, *quad.HELDOUT_COMPOSITIONS]
    )
    out = {}
    for name in names:
        images, _ = quad.sample(
            name, int(n_per_context), seed=seed, dependent=dependent, split=split
        )
        out[name] = torch.from_numpy(images)
    return out


def corner_masks(resolution: tuple[int, int]) -> dict[str, Tensor]:
    """Quadrant name -> bool ``(H, W)``: its corner region at ``resolution`` (see
    :data:`CORNER_RADIUS`), where ``counterfactual_shifts`` measures colours.

    Raises:
        ValueError: if the resolution is too small to leave a quadrant any corner pixel.
    """
    height, width = resolution
    # Pixel-centre offsets from the image centre, in pixels of the 64 x 64 quad image.
    dy = (torch.arange(height) + 0.5 - height / 2) * (quad_render.IMAGE_SIZE / height)
    dx = (torch.arange(width) + 0.5 - width / 2) * (quad_render.IMAGE_SIZE / width)
    far = dy[:, None] ** 2 + dx[None, :] ** 2 > CORNER_RADIUS**2
    masks = {
        name: far & ((dy > 0) == bottom)[:, None] & ((dx > 0) == right)[None, :]
        for name, (bottom, right) in _QUADRANT_HALVES.items()
    }
    if not all(mask.any() for mask in masks.values()):
        raise ValueError(f"resolution {tuple(resolution)} leaves a quadrant's corner region empty")
    return masks


def _add_region_sums(sums: dict[str, Tensor], images: Tensor, masks: Mapping[str, Tensor]) -> None:
    """Add to ``sums[region]`` the float64 RGB sum of its pixels over images ``(N, 3, H, W)``."""
    for name, mask in masks.items():
        sums[name] = sums[name] + images[:, :, mask].double().sum(dim=(0, 2))


def counterfactual_shifts(
    model,
    obs_images: Tensor,
    real_images: Mapping[str, Tensor],
    concepts: Sequence[str] = QUADRANTS,
    *,
    dependent: bool = True,
    batch_size: int | None = None,
) -> dict:
    """Mean colour shifts of the quadrants' corners under counterfactual edits of quad images.

    Each observational image is edited with ``model.counterfactual(images, q)`` for each ``q``
    of ``concepts`` and, as the reference (``recon``), with ``model.counterfactual(images,
    "obs")``: the autoencoder's own reconstruction for the default residual edit, the adapter's
    reconstruction for ``mode="decode"``. All in eval mode. In each
    quadrant's corner region (away from every shape, see :data:`CORNER_RADIUS`) the mean RGB
    colour is taken over the reconstructions (``recon``), the edits (``edit``), the real
    observational images (``real_obs``) and the real images of context ``q`` (``real_do``).
    Then ``moved = (edit - recon) . (real_do - recon) / |real_do - recon|^2``, the fraction of
    the way from the reconstruction to the real interventional mean that the edit went (1: all
    of it; None when ``|real_do - recon| < MIN_TARGET_DISTANCE``), and
    ``drift = |edit - recon|``. Quadrants that are no descendants of ``q`` (nor ``q`` itself;
    ``quad.ancestral_relation``) should not drift.

    Args:
        model: a ``ctxadapter.ContextAutoencoder`` over the quad concepts (its modes are
            restored afterwards).
        obs_images: held-out observational quad images, ``uint8`` ``(N, 64, 64, 3)`` as from
            ``evaluation.heldout_quad_images`` or float ``(N, 3, H, W)`` in ``[0, 1]``; resized
            to the model's resolution if needed (``ctxadapter.images.model_input``).
        real_images: context name -> held-out images of that context, in the same forms; needs
            every ``q`` of ``concepts`` (other keys are ignored).
        concepts: the intervened concepts, names of ``quad.CONCEPTS``.
        dependent: the quad variant the images come from (decides which quadrants are
            descendants of ``q``).
        batch_size: images per encoder and decoder pass (default
            ``ctxadapter.images.DEFAULT_BATCH_SIZE``).

    Returns:
        A JSON-serializable dict::

            shifts: {q: {region: {recon, edit, real_obs, real_do (RGB lists in [0, 1]),
                                  moved (float or None), drift}}}
            summary: {q: {moved (of q's own region; None if q is no quadrant),
                          non_descendants (regions), max_drift (over them, or None)}}
            num_obs_images, num_do_images: {q: n}, resolution, corner_radius, dependent
    """
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    concepts = list(concepts)
    if not concepts:
        raise ValueError("concepts is empty: pass at least one concept to intervene on")
    for q in concepts:
        if q not in quad.CONCEPTS:
            raise ValueError(f"unknown concept {q!r}; valid: {', '.join(quad.CONCEPTS)}")
        if q not in real_images or len(real_images[q]) == 0:
            raise ValueError(
                f"real_images has no images of context {q!r}; it has {sorted(real_images)}"
            )
    if len(obs_images) == 0:
        raise ValueError("obs_images is empty: pass at least one observational image")
    resolution = tuple(model.resolution)
    masks = corner_masks(resolution)

    def batches(images: Tensor):
        for start in range(0, len(images), batch_size):
            yield model_input(images[start : start + batch_size], resolution)

    def zeros() -> dict[str, Tensor]:
        return {r: torch.zeros(3, dtype=torch.float64) for r in masks}

    def means(sums: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
        return {r: total / (n * int(masks[r].sum())) for r, total in sums.items()}

    def mean_colours(images: Tensor) -> dict[str, Tensor]:
        sums = zeros()
        for chunk in batches(images):
            _add_region_sums(sums, chunk, masks)
        return means(sums, len(images))

    n_obs = len(obs_images)
    recon_sums, edit_sums = zeros(), {q: zeros() for q in concepts}
    with eval_mode(model):
        for pixels in batches(obs_images):
            unedited = model.counterfactual(pixels, OBSERVATIONAL)
            _add_region_sums(recon_sums, unedited.cpu(), masks)
            for q in concepts:
                _add_region_sums(edit_sums[q], model.counterfactual(pixels, q).cpu(), masks)
    recon, real_obs = means(recon_sums, n_obs), mean_colours(obs_images)
    related = quad.ancestral_relation(quad.CONCEPTS, dependent)

    shifts, summary = {}, {}
    for q in concepts:
        edit, real_do = means(edit_sums[q], n_obs), mean_colours(real_images[q])
        shifts[q] = {}
        for r in masks:
            target = real_do[r] - recon[r]
            moved = None
            if target.norm().item() >= MIN_TARGET_DISTANCE:
                moved = torch.dot(edit[r] - recon[r], target).item() / target.square().sum().item()
            shifts[q][r] = {
                "recon": recon[r].tolist(),
                "edit": edit[r].tolist(),
                "real_obs": real_obs[r].tolist(),
                "real_do": real_do[r].tolist(),
                "moved": moved,
                "drift": (edit[r] - recon[r]).norm().item(),
            }
        column = quad.CONCEPTS.index(q)
        others = [r for r in masks if r != q and not bool(related[quad.CONCEPTS.index(r), column])]
        drifts = [shifts[q][r]["drift"] for r in others]
        summary[q] = {
            "moved": shifts[q][q]["moved"] if q in masks else None,
            "non_descendants": others,
            "max_drift": max(drifts) if drifts else None,
        }
    return {
        "shifts": shifts,
        "summary": summary,
        "num_obs_images": n_obs,
        "num_do_images": {q: len(real_images[q]) for q in concepts},
        "resolution": list(resolution),
        "corner_radius": CORNER_RADIUS,
        "dependent": bool(dependent),
    }
