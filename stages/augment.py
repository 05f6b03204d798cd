"""On-the-fly augmentation of a batch of flattened square images (background 0)."""

import math

import numpy as np


def shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> None:
    """Move every image, in place, by its own random offset of up to `max_shift` pixels along
    each axis; pixels moved in from outside the frame are 0."""
    count, side = len(images), math.isqrt(images.shape[1])
    padded = np.zeros((count, side + 2 * max_shift, side + 2 * max_shift), images.dtype)
    padded[:, max_shift : max_shift + side, max_shift : max_shift + side] = (
        images.reshape(count, side, side))
    # Reading the window at offset (dy, dx) of the padded frame shifts by (s - dy, s - dx).
    dy, dx = rng.integers(0, 2 * max_shift + 1, (2, count))
    rows = (dy[:, None] + np.arange(side))[:, :, None]
    cols = (dx[:, None] + np.arange(side))[:, None, :]
    images[...] = padded[np.arange(count)[:, None, None], rows, cols].reshape(count, -1)
