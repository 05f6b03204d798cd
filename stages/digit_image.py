"""A picture of a handwritten digit, brought into MNIST's form the way MNIST itself was made.

MNIST's digits are light ink on a black background, scaled to fit a 20x20 box with their
aspect ratio kept (anti-aliased, hence the grey edges), then placed in a 28x28 field so that
their centre of mass sits in the middle. A network trained on MNIST expects exactly that, so
a photo or drawing goes through the same steps before it is shown one.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.errors import PipelineError

SIDE = 28  # the MNIST field
BOX = 20  # the box the digit is scaled to fit
CENTRE = 14.0  # where the centre of mass goes, in pixel indices of the field
# Ink weaker than this share of the strongest stroke is noise (paper grain, JPEG ringing).
INK_THRESHOLD = 0.1
MAX_PIXELS = 50_000_000  # far beyond any photo; refuses decompression bombs


def load_grey(path: Path) -> np.ndarray:
    """The image at `path` as uint8 grey levels; transparency is shown over white, as a
    viewer would, and a camera's rotation flag is applied."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise PipelineError(f"{path}: {image.width}x{image.height} pixels is too large")
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                white = Image.new("RGBA", image.size, "white")
                image = Image.alpha_composite(white, image.convert("RGBA"))
            return np.asarray(image.convert("L"))
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: not found") from err
    except UnidentifiedImageError as err:
        raise PipelineError(f"{path}: not an image Pillow can read (PNG or JPEG expected)") from err
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        detail = getattr(err, "strerror", None) or err  # not the path a second time
        raise PipelineError(f"{path}: cannot read the image: {detail}") from err


def to_ink(grey: np.ndarray) -> np.ndarray:
    """Grey levels as MNIST's ink: 0 where the background is, 255 at the strongest stroke.
    The background is the median of the border pixels; a light one means a dark digit on
    paper, so the image is inverted."""
    grey = grey.astype(np.float32)
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    if background > 127:
        grey, background = 255 - grey, 255 - background
    ink = np.clip(grey - background, 0, None)
    strongest = ink.max()
    return ink * (255 / strongest) if strongest > 0 else ink


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The smallest rectangle holding every pixel above INK_THRESHOLD of full ink (255, the
    strongest stroke after to_ink)."""
    rows, cols = np.nonzero(ink > INK_THRESHOLD * 255)
    if not len(rows):
        raise ValueError("no ink in the image")
    return ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """`ink` resized, with anti-aliasing, so that its longer side is `box` pixels and its
    aspect ratio is kept; uint8."""
    height, width = ink.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(np.round(ink).astype(np.uint8), "L")
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


def centre_of_mass(ink: np.ndarray) -> tuple[float, float]:
    """(row, column) of the ink's centre of mass, in pixel indices."""
    total = ink.sum(dtype=np.float64)
    rows, cols = np.indices(ink.shape)
    return float((rows * ink).sum() / total), float((cols * ink).sum() / total)


def place_centred(digit: np.ndarray, side: int = SIDE) -> np.ndarray:
    """`digit` pasted into a black side x side field, shifted by whole pixels so that its
    centre of mass lands on (CENTRE, CENTRE) unless that would push ink off the field."""
    height, width = digit.shape
    row, col = centre_of_mass(digit)
    top = min(max(round(CENTRE - row), 0), side - height)
    left = min(max(round(CENTRE - col), 0), side - width)
    field = np.zeros((side, side), np.uint8)
    field[top : top + height, left : left + width] = digit
    return field


def mnist_digit(grey: np.ndarray) -> np.ndarray:
    """A grey-level picture of one digit as a 28x28 uint8 MNIST image; ValueError if blank."""
    return place_centred(fit_box(crop_to_ink(to_ink(grey))))
