"""Drawing basics shared by the pictures (``ctxadapter.viz``, ``ctxadapter.graph_image``):
colours, the font and the size of a text."""

from __future__ import annotations

from functools import lru_cache

from PIL import ImageFont

__all__ = ["BACKGROUND", "LABEL_SIZE", "MARGIN", "TEXT", "Font", "font", "text_size"]

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
LABEL_SIZE = 12
"""Font size (pixels) of row labels, titles and captions."""
MARGIN = 4
"""Space (pixels) between text and the edges of its box."""

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=None)
def font(size: int = LABEL_SIZE) -> Font:
    """Pillow's built-in font at ``size`` pixels (the fixed-size bitmap font where Pillow was
    built without FreeType, whose ``load_default`` takes no size)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def text_size(text: str, font: Font) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``text`` drawn at the origin (height from the origin
    down to the lowest ink, so vertical centring uses the line's own box)."""
    left, top, right, bottom = font.getbbox(text)
    return int(right - min(left, 0)), int(bottom)
