"""The panels of ``examples/demo.py`` as plain functions, without Gradio: the context of the
ticked concepts, the grid of samples, the counterfactual edits of one image, the concept
graph, the example images and the page's header. ``demo.py`` wires them into a
``gradio.Blocks`` and re-exports them; they can be called without a browser
(``tests/test_demo.py`` does)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import ctxadapter
from ctxadapter import ContextAutoencoder, context_name, parse_context
from ctxadapter.images import preprocess_images
from ctxadapter.model import eval_mode
from ctxadapter.viz import concept_graph_image, image_grid

GRID_COLUMNS = 8
"""Samples per row of the generated grid."""
MAX_SAMPLES = 64
DISPLAY_SIZE = 128
"""Tiles are enlarged (nearest neighbour, by a whole factor) to at least this many pixels."""
EXAMPLE_COUNT = 4
"""Held-out quad images offered as examples to edit."""
EXAMPLE_CANDIDATES = 64
"""Held-out quad images the examples are chosen from (``example_images``)."""
EDIT_MODES = ("residual", "decode")


def context_of(model: ContextAutoencoder, concepts_ticked: Sequence[str] | None) -> str:
    """The context of the ticked concepts: ``"obs"`` for none, one name, or a composition
    joined by ``+`` in the adapter's concept order (``["size", "quad1"]`` -> ``"quad1+size"``)."""
    return context_name(parse_context(list(concepts_ticked or []), model.adapter.concepts))


def _enlarge(images: torch.Tensor, scale: int) -> torch.Tensor:
    return images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="nearest")


def display_scale(model: ContextAutoencoder, size: int = DISPLAY_SIZE) -> int:
    """The whole factor that enlarges the model's images to at least ``size`` pixels."""
    return max(1, math.ceil(size / min(model.resolution)))


def generate_samples(
    model: ContextAutoencoder,
    concepts_ticked: Sequence[str] | None = (),
    num_samples: int = 8,
    seed: int = 0,
) -> torch.Tensor:
    """``model.generate(context_of(model, concepts_ticked), num_samples, generator)`` with a
    generator seeded with ``seed`` (on the model's device): ``(N, 3, H, W)`` in ``[0, 1]``."""
    context = context_of(model, concepts_ticked)
    num_samples = int(num_samples)
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"num_samples must be between 1 and {MAX_SAMPLES}, got {num_samples}")
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    with eval_mode(model):
        return model.generate(context, num_samples, generator=generator).cpu()


def generate_grid(
    model: ContextAutoencoder,
    concepts_ticked: Sequence[str] | None = (),
    num_samples: int = 8,
    seed: int = 0,
    columns: int = GRID_COLUMNS,
    scale: int = 1,
) -> Image.Image:
    """The samples of ``generate_samples`` as one picture: rows of ``columns`` tiles (the last
    row filled with white), each tile enlarged ``scale`` times, nearest neighbour."""
    samples = _enlarge(generate_samples(model, concepts_ticked, num_samples, seed), scale)
    columns = min(columns, len(samples))
    rows = math.ceil(len(samples) / columns)
    blank = torch.ones(rows * columns - len(samples), *samples.shape[1:])
    return image_grid(torch.cat([samples, blank]), rows)


def edit_contexts(model: ContextAutoencoder, concepts_ticked: Sequence[str] | None = ()):
    """The contexts of the edits: ``obs`` (the image's own), every single concept, then the
    ticked context if it is none of these (a composition)."""
    contexts = ["obs", *model.adapter.concepts]
    ticked = context_of(model, concepts_ticked)
    return contexts if ticked in contexts else [*contexts, ticked]


def edit_images(
    model: ContextAutoencoder,
    image: Image.Image,
    concepts_ticked: Sequence[str] | None = (),
    mode: str = "residual",
    strength: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Counterfactual edits of one image, treated as observational: ``"input"`` (the image
    centre-cropped and resized to the model's resolution, ``(1, 3, H, W)`` in ``[0, 1]``),
    then ``model.counterfactual(input, context, mode=mode, strength=strength)`` for each of
    ``edit_contexts`` (under ``obs`` with ``mode="residual"``: the autoencoder's own
    reconstruction)."""
    if image is None:
        raise ValueError("Upload an image (or pick an example) to edit.")
    if mode not in EDIT_MODES:
        raise ValueError(f"mode must be one of {EDIT_MODES}, got {mode!r}")
    pixels = preprocess_images(image.convert("RGB"), model.resolution, output="unit")
    edits = {"input": pixels}
    with eval_mode(model):
        for context in edit_contexts(model, concepts_ticked):
            edits[context] = model.counterfactual(
                pixels, context, mode=mode, strength=strength
            ).cpu()
    return edits


def _to_pil(image: torch.Tensor) -> Image.Image:
    return image_grid(image, 1, padding=0)


def edit_image(
    model: ContextAutoencoder,
    image: Image.Image,
    concepts_ticked: Sequence[str] | None = (),
    mode: str = "residual",
    strength: float = 1.0,
    scale: int = 1,
) -> list[tuple[Image.Image, str]]:
    """``edit_images`` as ``(picture, caption)`` pairs for a gallery, each picture enlarged
    ``scale`` times (nearest neighbour); the captions are the keys of ``edit_images``."""
    edits = edit_images(model, image, concepts_ticked, mode, strength)
    return [(_to_pil(_enlarge(pixels, scale)), name) for name, pixels in edits.items()]


def graph_picture(
    model: ContextAutoencoder, concepts_ticked: Sequence[str] | None = ()
) -> Image.Image:
    """``concept_graph_image`` of ``model.adapter.concept_graph(context)`` for the ticked
    context (``obs`` by default; under an intervention, column ``j`` is what adding ``j`` to
    it changes)."""
    context = context_of(model, concepts_ticked)
    graph = model.adapter.concept_graph(context)
    return concept_graph_image(
        graph, model.adapter.concepts, title=f"Learned concept graph ({context})"
    )


def is_quad_adapter(model: ContextAutoencoder) -> bool:
    """Whether the adapter's concepts are those of the built-in quad data."""
    from ctxadapter.data import quad

    return set(model.adapter.concepts) == set(quad.CONCEPTS)


def example_images(model: ContextAutoencoder, count: int = EXAMPLE_COUNT) -> list[Image.Image]:
    """Images to offer for editing: for a quad adapter, ``count`` held-out observational quad
    images (the ``test`` split of ``ctxadapter.data.quad``, made here, offline; never a
    training image); for any other adapter, none.

    They are the ``count`` of the first ``EXAMPLE_CANDIDATES`` images whose true
    counterfactuals move the most: for each image, the change of the intervened quadrant's
    corner colour in its true counterfactual (``quad.counterfactual_examples``, the SCM's own)
    is taken under each of the four quadrant interventions, and the images are ranked by the
    smallest of the four, largest first. An image that already sits where an intervention
    sends its quadrant has no visible edit to show, whatever the adapter; the first example
    has one under every quadrant. The choice depends on the data only, never on the adapter.
    """
    if not is_quad_adapter(model):
        return []
    from ctxadapter.data import quad
    from ctxadapter.evaluation import QUADRANTS, corner_masks

    images, truths = quad.counterfactual_examples(EXAMPLE_CANDIDATES, QUADRANTS)
    masks = corner_masks(images.shape[1:3])
    moves = [
        np.abs(truths[q].astype(np.float64) - images)[:, masks[q].numpy()].mean(axis=(1, 2))
        for q in QUADRANTS
    ]
    order = np.argsort(-np.min(moves, axis=0), kind="stable")[:count]
    return [Image.fromarray(images[i]) for i in order]


def opening_image(model: ContextAutoencoder, examples: Sequence[Image.Image]) -> Image.Image:
    """The image the page opens with, already edited: the first example, else the first
    ``obs`` sample of seed 0."""
    return examples[0] if examples else _to_pil(generate_samples(model, (), 1, 0))


def describe(model: ContextAutoencoder, name: str | None = None) -> str:
    """A Markdown header: the adapter, its base autoencoder, concepts and resolution."""
    base = (model.adapter.config.get("base_model") or {}).get("pretrained_model_name_or_path")
    package = os.path.dirname(os.path.abspath(ctxadapter.__file__))
    if base and os.path.isabs(base) and os.path.commonpath([base, package]) == package:
        base = "ctxadapter/" + os.path.relpath(base, package).replace(os.sep, "/")  # built in
    concepts = ", ".join(f"`{c}`" for c in model.adapter.concepts)
    height, width = model.resolution
    return (
        f"# ctxadapter demo{f': `{name}`' if name else ''}\n\n"
        f"Concepts: {concepts}. Images: {height} x {width}. "
        f"Base autoencoder: `{base or 'unknown'}`."
    )
