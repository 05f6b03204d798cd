"""The prepared train/val/test arrays as the train and evaluate stages load them."""

from pathlib import Path

import numpy as np

from stages.errors import PipelineError
from stages.files import load_npy

CLASSES = 10
PIXELS = 28 * 28
# Pixel codes 0-255 become floats by a multiply, not a divide: the trainer scales its uint8
# batches the same way and so gets the very bits that preprocess wrote.
PIXEL_SCALE = np.float32(1 / 255)


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
