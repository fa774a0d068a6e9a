"""The picture of a learned concept graph: a heatmap on a fixed scale, edges below the
threshold in grey, the data's true relations framed where it knows them."""

from __future__ import annotations

import itertools

import torch
from PIL import Image, ImageDraw

from .drawing import BACKGROUND, LABEL_SIZE, MARGIN, TEXT, Font, font, text_size
from .readouts import EDGE_THRESHOLD

__all__ = ["DARK_BLUE", "DIAGONAL_GREY", "GRAPH_SCALE", "concept_graph_image"]

DARK_BLUE = (8, 48, 107)
DIAGONAL_GREY = (220, 220, 220)
FAINT = (150, 150, 150)
GRAPH_SCALE = 0.5
"""``concept_graph_image`` draws entries from white (0) to dark blue (this and above): an
intervention that moves a concept by half of its own variation is full colour."""


def _blend(low: tuple[int, int, int], high: tuple[int, int, int], t: float) -> tuple[int, ...]:
    return tuple(round(a + (b - a) * t) for a, b in zip(low, high, strict=True))


def _rotated_text(text: str, font: Font) -> Image.Image:
    """``text`` drawn black on white and rotated 90 degrees counter-clockwise (reads upwards)."""
    width, height = text_size(text, font)
    canvas = Image.new("RGB", (width + 1, height + 1), BACKGROUND)
    ImageDraw.Draw(canvas).text((0, 0), text, fill=TEXT, font=font)
    return canvas.rotate(90, expand=True)


def concept_graph_image(
    graph: torch.Tensor,
    concepts: list[str],
    title: str | None = None,
    cell: int = 48,
    *,
    scale: float = GRAPH_SCALE,
    threshold: float = EDGE_THRESHOLD,
    truth: torch.Tensor | None = None,
) -> Image.Image:
    """Heatmap of a learned concept graph, on a fixed colour scale.

    Args:
        graph: ``(K, K)``; entry ``(i, j)`` is the effect of concept ``j`` on concept ``i``
            (e.g. ``model.adapter.concept_graph()``: how far an intervention on ``j`` moves
            ``i``, over how far ``i`` varies).
        concepts: the ``K`` concept names (row ``i`` = target, column ``j`` = source).
        title: drawn above the heatmap if given.
        cell: side of one cell in pixels.
        scale: the value drawn darkest: white for 0 to dark blue for ``|value| >= scale``, the
            same in every picture.
        threshold: off-diagonal entries whose magnitude is below it (no edge) are written in
            grey.
        truth: ``(K, K)`` bool, the true relations where the data knows them (for quad,
            ``quad.ancestral_relation``): their cells get a thick black frame.

    Returns:
        An RGB image: optional title; column labels (source concepts, rotated to read upwards
        when wider than a cell); row labels (target concepts) in a left margin; ``K x K`` cells
        of ``cell`` pixels coloured by ``scale``, the diagonal (a concept on itself) in light
        grey, each cell showing its value to two significant digits; and a caption with the
        reading direction, the scale, the threshold and (with ``truth``) the frames.
        Width and height grow by ``cell`` per concept.

    Raises:
        ValueError: if ``graph`` (or ``truth``) is not ``(K, K)`` with ``K = len(concepts)``,
            or ``scale`` is not positive.
    """
    values = torch.as_tensor(graph).detach().float().cpu()
    k = len(concepts)
    if values.ndim != 2 or tuple(values.shape) != (k, k) or k == 0:
        raise ValueError(
            f"graph must have shape (K, K) with K = len(concepts) = {k}, got {tuple(values.shape)}."
        )
    if cell <= 0:
        raise ValueError(f"cell must be positive, got {cell}.")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    if truth is not None:
        truth = torch.as_tensor(truth).bool().cpu()
        if tuple(truth.shape) != (k, k):
            raise ValueError(f"truth must have shape ({k}, {k}), got {tuple(truth.shape)}.")
    label_font = font()
    value_font = font(max(6, min(LABEL_SIZE, cell // 4)))

    row_width = max(text_size(name, label_font)[0] for name in concepts)
    rotate = row_width > cell - 2
    if rotate:
        column_labels = [_rotated_text(name, label_font) for name in concepts]
    else:
        column_labels = [None] * k
    header = (
        max(label.size[1] for label in column_labels if label is not None)
        if rotate
        else max(text_size(name, label_font)[1] for name in concepts)
    ) + 2 * MARGIN
    caption = [
        "row i <- column j: effect of j on i",
        f"white = 0, dark blue >= {scale:.2g}, grey cells: the diagonal",
        f"grey numbers: below {threshold:.2g} (no edge)",
    ]
    if truth is not None:
        caption.append("black frame: a true relation of the data")
    line_height = text_size("Hg", label_font)[1] + MARGIN
    title_height = line_height + MARGIN if title else 0

    left = row_width + 2 * MARGIN
    top = title_height + header
    heatmap_width = left + k * cell + MARGIN
    longest = max(text_size(line, label_font)[0] for line in caption + ([title] if title else []))
    width = max(heatmap_width, longest + 2 * MARGIN)
    height = top + k * cell + MARGIN + len(caption) * line_height + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    if title:
        draw.text((MARGIN, MARGIN), title, fill=TEXT, font=label_font)
    for j, name in enumerate(concepts):
        x = left + j * cell
        if rotate:
            label = column_labels[j]
            image.paste(label, (x + (cell - label.size[0]) // 2, top - MARGIN - label.size[1]))
        else:
            text_width, text_height = text_size(name, label_font)
            draw.text(
                (x + (cell - text_width) // 2, top - MARGIN - text_height),
                name,
                fill=TEXT,
                font=label_font,
            )
    for i, name in enumerate(concepts):
        text_height = text_size(name, label_font)[1]
        y = top + i * cell + (cell - text_height) // 2
        draw.text((MARGIN, y), name, fill=TEXT, font=label_font)

    for i, j in itertools.product(range(k), range(k)):
        value = float(values[i, j])
        if i == j:
            fill, ink = DIAGONAL_GREY, TEXT
        else:
            strength = min(abs(value) / scale, 1.0)
            fill = _blend(BACKGROUND, DARK_BLUE, strength)
            ink = BACKGROUND if strength > 0.5 else TEXT
            if abs(value) < threshold:
                ink = FAINT
        x0, y0 = left + j * cell, top + i * cell
        draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=fill, outline=DIAGONAL_GREY)
        if truth is not None and bool(truth[i, j]):
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), outline=TEXT, width=3)
        text = f"{value:.2g}"
        text_width, text_height = text_size(text, value_font)
        draw.text(
            (x0 + (cell - text_width) // 2, y0 + (cell - text_height) // 2),
            text,
            fill=ink,
            font=value_font,
        )

    y = top + k * cell + MARGIN
    for line in caption:
        draw.text((MARGIN, y), line, fill=TEXT, font=label_font)
        y += line_height
    return image
