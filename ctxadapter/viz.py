"""Pictures of a context adapter: sample grids per context, counterfactual edits, concept graph.

Everything here draws with Pillow only and returns ``PIL.Image.Image`` objects (RGB, white
background); ``write_report`` saves the usual set of PNGs into a folder::

    from ctxadapter import ContextAutoencoder
    from ctxadapter.viz import write_report

    model = ContextAutoencoder.from_pretrained("user/my-adapter")
    write_report(model, "samples")   # contexts.png, compositions.png, concept_graph.png

Images given to these functions are ``(N, 3, H, W)`` float tensors in ``[0, 1]`` (the default
output of ``ContextAutoencoder.generate``) or lists of PIL images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw

from .contexts import OBSERVATIONAL, all_pairs, context_name, parse_context
from .drawing import BACKGROUND, MARGIN, TEXT, font, text_size
from .graph_image import DARK_BLUE, DIAGONAL_GREY, concept_graph_image
from .images import signed_to_unit, unit_to_uint8
from .model import eval_mode

__all__ = [
    "DARK_BLUE",
    "DIAGONAL_GREY",
    "concept_graph_image",
    "context_grid",
    "counterfactual_grid",
    "image_grid",
    "titled",
    "write_report",
]


def _to_pil_list(images: torch.Tensor | Sequence[Image.Image]) -> list[Image.Image]:
    """``(N, 3, H, W)`` (or ``(N, 1, H, W)``) floats in ``[0, 1]``, or PIL images -> RGB PIL
    images, rounding as diffusers' ``VaeImageProcessor.numpy_to_pil`` does."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"Expected images of shape (N, 3, H, W) in [0, 1], got {tuple(images.shape)}."
            )
        array = unit_to_uint8(images.detach().float().cpu())
        array = array.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()
        return [Image.fromarray(a, mode="RGB") for a in array]
    result = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"Expected a float tensor (N, 3, H, W) or a list of PIL images, got an element "
                f"of type {type(image).__name__}."
            )
        result.append(image.convert("RGB"))
    return result


def image_grid(
    images: torch.Tensor | Sequence[Image.Image],
    rows: int,
    row_labels: list[str] | None = None,
    padding: int = 2,
) -> Image.Image:
    """Tile ``N`` images into ``rows`` rows of ``N // rows`` columns, row-major.

    Args:
        images: ``(N, 3, H, W)`` float tensor in ``[0, 1]`` (values outside are clamped) or a
            list of ``N`` PIL images, all ``H x W``.
        rows: number of rows; must divide ``N``.
        row_labels: one label per row, drawn in a left margin as wide as the widest label.
        padding: pixels of white between tiles and around the grid.

    Returns:
        An RGB image of width ``margin + cols * W + (cols + 1) * padding`` and height
        ``rows * H + (rows + 1) * padding``, where ``margin`` is 0 without labels. Tile
        ``(r, c)`` has its top-left corner at ``(margin + padding + c * (W + padding),
        padding + r * (H + padding))``.

    Raises:
        ValueError: if ``rows`` is not positive, does not divide ``N``, the labels are not one per
            row, or the images differ in size.
    """
    tiles = _to_pil_list(images)
    count = len(tiles)
    if not isinstance(rows, int) or rows <= 0 or count == 0 or count % rows:
        raise ValueError(
            f"Cannot arrange N={count} images in rows={rows} rows: N must be a positive multiple "
            f"of rows."
        )
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"Got {len(row_labels)} row labels for rows={rows} rows.")
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}.")
    width, height = tiles[0].size
    sizes = {tile.size for tile in tiles}
    if len(sizes) > 1:
        raise ValueError(f"All images must have the same size, got sizes {sorted(sizes)}.")
    cols = count // rows
    label_font = font()
    margin = 0
    if row_labels:
        margin = max(text_size(label, label_font)[0] for label in row_labels) + 2 * MARGIN
    grid = Image.new(
        "RGB",
        (margin + cols * width + (cols + 1) * padding, rows * height + (rows + 1) * padding),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(grid)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, cols)
        x = margin + padding + col * (width + padding)
        grid.paste(tile, (x, padding + row * (height + padding)))
    for row, label in enumerate(row_labels or []):
        _, text_height = text_size(label, label_font)
        top = padding + row * (height + padding) + (height - text_height) // 2
        draw.text((MARGIN, top), label, fill=TEXT, font=label_font)
    return grid


def titled(image: Image.Image, title: str) -> Image.Image:
    """``image`` below a line of text ``title`` (a white band ``LABEL_SIZE + 2 * MARGIN``
    pixels high, at least as wide as the title)."""
    label_font = font()
    text_width, text_height = text_size(title, label_font)
    band = text_height + 2 * MARGIN
    canvas = Image.new(
        "RGB", (max(image.width, text_width + 2 * MARGIN), image.height + band), BACKGROUND
    )
    ImageDraw.Draw(canvas).text((MARGIN, MARGIN), title, fill=TEXT, font=label_font)
    canvas.paste(image, (0, band))
    return canvas


def context_grid(
    model,
    contexts: list[str],
    num_samples: int = 8,
    seed: int = 0,
    title: str | None = None,
    real: Mapping[str, torch.Tensor] | None = None,
) -> Image.Image:
    """Samples of ``model`` under each context: one row per context, ``num_samples`` columns.

    Every row is ``model.generate(context, num_samples, generator=...)`` with a generator seeded
    with ``seed``, so all rows start from the same noise ``z`` and column ``n`` shows what the
    interventions do to one sample. Runs in eval mode under ``torch.no_grad``; the model's
    previous mode is restored afterwards.

    Args:
        model: a ``ctxadapter.ContextAutoencoder``.
        contexts: ``"obs"``, concept names or compositions such as ``"a+b"``; each row is
            labelled with the canonical name (``"obs"``, names joined by ``"+"`` in concept
            order).
        num_samples: images per row.
        seed: seed of the noise shared by all rows.
        title: drawn above the grid if given (``titled``).
        real: real images by canonical context name, ``(n, 3, H, W)`` in ``[0, 1]`` at the
            model's resolution. Given, each context with real images gets a row of its first
            ``num_samples`` (white tiles after the last) labelled ``"real <context>"`` above
            its samples, and every row of samples is labelled ``"generated <context>"``.

    Returns:
        An ``image_grid`` of one row per context, plus one per context with real images, and
        ``num_samples`` columns of ``model.resolution`` tiles.
    """
    if not contexts:
        raise ValueError("contexts must name at least one context, e.g. ['obs'].")
    concepts = model.adapter.concepts
    canonical = [parse_context(context, concepts) for context in contexts]
    rows, labels = [], []
    with eval_mode(model):
        for context in canonical:
            name = context_name(context)
            if real is not None and name in real and len(real[name]):
                shown = real[name][:num_samples].float().cpu()
                blank = torch.ones(num_samples - len(shown), *shown.shape[1:])
                rows.append(torch.cat([shown, blank]))
                labels.append(f"real {name}")
            generator = torch.Generator(device=model.device).manual_seed(seed)
            rows.append(model.generate(context, num_samples, generator=generator).cpu())
            labels.append(name if real is None else f"generated {name}")
    grid = image_grid(torch.cat(rows), len(rows), labels)
    return grid if title is None else titled(grid, title)


def counterfactual_grid(
    model,
    images: torch.Tensor | Sequence[Image.Image],
    contexts: list[str] | None = None,
    strength: float = 1.0,
    truths: dict[str, torch.Tensor] | None = None,
) -> Image.Image:
    """Counterfactual edits of real images: one column per image.

    Rows, top to bottom: the input images (label ``"input"``, after resizing to the model's
    resolution), their unedited ``ContextAutoencoder.counterfactual`` under the observational
    context (label ``"obs"``: the autoencoder's reconstruction, for the default residual edit),
    then the edits under each of ``contexts``: the same noise (the posterior mean of each
    image), another context. Runs in eval mode under ``torch.no_grad``;
    the model's previous mode is restored afterwards.

    Args:
        model: a ``ctxadapter.ContextAutoencoder``.
        images: ``N`` images in any form ``model.reconstruct`` takes: ``(N, 3, H, W)`` tensor in
            ``[0, 1]``, list of PIL images... resized to ``model.resolution``.
        contexts: the contexts of the edit rows; default: every single concept.
        strength: the edits' ``strength`` (``ContextAutoencoder.counterfactual``); other
            than 1, the edit rows' labels say it (``"hue x3"``).
        truths: where the data's true counterfactuals are known (quad: ``quad.
            counterfactual_latents``), context name -> the ``N`` true counterfactual images
            ``(N, 3, H, W)`` in ``[0, 1]`` at the model's resolution; each is drawn in a row
            ``"true <context>"`` right below that context's edits.

    Returns:
        An ``image_grid`` of ``2 + len(contexts)`` rows (and one per entry of ``truths``) and
        ``N`` columns.
    """
    concepts = model.adapter.concepts
    canonical = [parse_context(c, concepts) for c in (concepts if contexts is None else contexts)]
    # Preprocess once; hand the model [0, 1] tensors, which diffusers' preprocessing reads
    # unambiguously (a [-1, 1] tensor with no negative value would be normalised twice).
    pixels = signed_to_unit(model.codec.preprocess(images, *model.resolution))
    suffix = "" if strength == 1 else f" x{strength:g}"
    rows, labels = [pixels], ["input"]
    with eval_mode(model):
        for context in [(), *canonical]:
            rows.append(model.counterfactual(pixels, context, strength=strength).cpu())
            labels.append(context_name(context) + (suffix if context else ""))
            truth = (truths or {}).get(context_name(context))
            if context and truth is not None:
                rows.append(truth.float().cpu())
                labels.append(f"true {context_name(context)}")
    return image_grid(torch.cat(rows), len(rows), labels)


def write_report(
    model,
    output_dir: str | os.PathLike,
    num_samples: int = 8,
    seed: int = 0,
    compositions: list[str] | None = None,
    images: torch.Tensor | Sequence[Image.Image] | None = None,
    truths: dict[str, torch.Tensor] | None = None,
    true_graph: torch.Tensor | None = None,
    real: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, str]:
    """Write the standard pictures of an adapter into ``output_dir`` (created if missing).

    Files:
        - ``contexts.png``: ``context_grid`` over ``"obs"`` and every single concept, with
          the ``real`` images of each context (see ``context_grid``) if given;
        - ``compositions.png``: ``context_grid`` over ``compositions`` (default
          ``ctxadapter.contexts.all_pairs``; not written when there is none, e.g. with one concept);
        - ``concept_graph.png``: ``concept_graph_image`` of the concept graph (with the
          true relations ``true_graph`` framed, where the data knows them);
        - ``counterfactuals.png``: ``counterfactual_grid`` of ``images`` (with the true
          counterfactuals ``truths`` below the edits, where known), if given.

    Returns:
        ``{name: path}`` of the files written, ``name`` being the file name without ``.png``
        (``"contexts"``, ``"compositions"``, ``"concept_graph"``, ``"counterfactuals"``).
    """
    os.makedirs(output_dir, exist_ok=True)
    concepts = model.adapter.concepts
    pictures: dict[str, Image.Image] = {
        "contexts": context_grid(model, [OBSERVATIONAL, *concepts], num_samples, seed, real=real)
    }
    compositions = all_pairs(concepts) if compositions is None else list(compositions)
    if compositions:
        pictures["compositions"] = context_grid(model, compositions, num_samples, seed)
    pictures["concept_graph"] = concept_graph_image(
        model.adapter.concept_graph(OBSERVATIONAL),
        concepts,
        title="Learned concept graph (total effects)",
        truth=true_graph,
    )
    if images is not None:
        pictures["counterfactuals"] = counterfactual_grid(model, images, truths=truths)
    paths = {}
    for name, picture in pictures.items():
        path = os.path.join(os.fspath(output_dir), f"{name}.png")
        picture.save(path)
        paths[name] = path
    return paths
