"""The prepared train/val/test arrays as the train and evaluate stages load them."""

from pathlib import Path

import numpy as np

from stages.errors import PipelineError
from stages.files import load_npy

CLASSES = 10
PIXELS = 28 * 28
PIXEL_SCALE = np.float32(1 / 255)


def scale_pixels(codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixel codes 0-255 as float32 in [0, 1], into `out` if given. Preprocess and the
    trainer's batches both come through here, so a batch gets the very bits preprocess wrote.
    A multiply rather than a divide, and a plain cast first, then the multiply in place:
    faster than one multiply that casts, with the same bits."""
    out = np.empty(codes.shape, np.float32) if out is None else out
    np.copyto(out, codes)
    out *= PIXEL_SCALE
    return out


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one prepared split, checked for shape and dtype."""
    x = load_npy(Path(directory) / f"x_{split}.npy")
    y = load_npy(Path(directory) / f"y_{split}.npy")
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != PIXELS:
        raise PipelineError(f"{directory}/x_{split}.npy: {x.dtype}{x.shape}, "
                            f"expected float32 (N, {PIXELS})")
    if y.dtype != np.float32 or y.shape != (len(x), CLASSES):
        raise PipelineError(f"{directory}/y_{split}.npy: {y.dtype}{y.shape}, "
                            f"expected float32 ({len(x)}, {CLASSES})")
    if not len(x):
        raise PipelineError(f"{directory}/x_{split}.npy: holds no examples")
    # min/max also catch NaN: any comparison with it is false.
    if not (x.min() >= 0 and x.max() <= 1):
        raise PipelineError(f"{directory}/x_{split}.npy: pixels outside [0, 1] or not numbers")
    if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
        raise PipelineError(f"{directory}/y_{split}.npy: rows are not one-hot")
    return x, y
