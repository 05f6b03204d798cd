"""Grids of MNIST digits with a caption under each, as PNG bytes that depend only on the
pixels and the text (Pillow's built-in font, no timestamp or other metadata)."""

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIDE = 28  # MNIST images are SIDE x SIDE pixels
ZOOM = 2  # each pixel drawn as ZOOM x ZOOM, so the digits are readable on a web page
DIGIT = SIDE * ZOOM
PAD = 6
CELL_WIDTH = 76
LINE = 16
MARGIN = 10
FONT_SIZE = 13

BACKGROUND = (255, 255, 255)
INK = (34, 34, 34)
FRAME = (200, 200, 200)
WRONG = (210, 0, 0)


def digit_tile(pixels: np.ndarray) -> Image.Image:
    """One flattened [0, 1] image, dark ink on white, enlarged without smoothing."""
    grey = np.round((1 - pixels.reshape(SIDE, SIDE)) * 255).astype(np.uint8)
    return Image.fromarray(grey, "L").resize((DIGIT, DIGIT), Image.Resampling.NEAREST)


def digit_grid(images: np.ndarray, captions: list[str], wrong: list[bool], title: str,
               columns: int = 10) -> Image.Image:
    """The images in rows of `columns`, each framed with its caption (lines split by "\\n")
    below; wrong ones get a red frame and a red caption. `title` heads the grid."""
    font = ImageFont.load_default(FONT_SIZE)
    lines = max((caption.count("\n") + 1 for caption in captions), default=0)
    cell_height = DIGIT + 3 * PAD + lines * LINE
    rows = math.ceil(len(images) / columns)
    grid_width = min(len(images), columns) * CELL_WIDTH
    width = 2 * MARGIN + max(grid_width, math.ceil(font.getlength(title)))
    top = MARGIN + LINE + PAD
    image = Image.new("RGB", (width, top + rows * cell_height + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), title, fill=INK, font=font)
    for i, (pixels, caption, is_wrong) in enumerate(zip(images, captions, wrong, strict=True)):
        left = MARGIN + (i % columns) * CELL_WIDTH
        y = top + (i // columns) * cell_height
        colour = WRONG if is_wrong else INK
        draw.rectangle((left + 1, y, left + CELL_WIDTH - 2, y + cell_height - PAD),
                       outline=WRONG if is_wrong else FRAME, width=2 if is_wrong else 1)
        image.paste(digit_tile(pixels), (left + (CELL_WIDTH - DIGIT) // 2, y + PAD))
        draw.multiline_text((left + CELL_WIDTH // 2, y + DIGIT + 2 * PAD), caption, fill=colour,
                            font=font, anchor="ma", align="center", spacing=LINE - FONT_SIZE)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # No pnginfo and a fresh image: Pillow writes no tIME or text chunks, only the pixels.
    image.save(buffer, format="PNG")
    return buffer.getvalue()
