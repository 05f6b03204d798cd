"""Raw MNIST to arrays: read and check the IDX files, then scale, one-hot and split them."""

from pathlib import Path

import numpy as np

from stages import idx
from stages.errors import PipelineError
from stages.splits import CLASSES, PIXELS, scale_pixels


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28), labels (N,)) from an IDX pair, checked for MNIST's shapes."""
    images = idx.decode(_read(images_path), str(images_path))
    labels = idx.decode(_read(labels_path), str(labels_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise PipelineError(f"{images_path}: images of shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise PipelineError(f"{labels_path}: labels of shape {labels.shape}, expected (N,)")
    if not len(images):
        raise PipelineError(f"{images_path}: holds no images")
    if len(images) != len(labels):
        raise PipelineError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if labels.max() >= CLASSES:
        raise PipelineError(f"{labels_path}: label {labels.max()} found, expected 0-9")
    return images, labels


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) as float32 rows (N, 784) in [0, 1]."""
    return scale_pixels(images.reshape(len(images), PIXELS))


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Labels (N,) as float32 rows (N, 10) with a single 1."""
    return np.eye(CLASSES, dtype=np.float32)[labels]


def prepare(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], val_size: int
) -> dict[str, np.ndarray]:
    """x_/y_ arrays for train, val and test; val is the last `val_size` training images."""
    if not 0 < val_size < len(train[0]):
        raise PipelineError(
            f"params.yaml: preprocess.val_size: must be below the {len(train[0])} training "
            f"images, got {val_size}")
    cut = len(train[0]) - val_size
    (train_x, train_y), (test_x, test_y) = train, test
    return {
        "x_train": normalise(train_x[:cut]), "y_train": one_hot(train_y[:cut]),
        "x_val": normalise(train_x[cut:]), "y_val": one_hot(train_y[cut:]),
        "x_test": normalise(test_x), "y_test": one_hot(test_y),
    }


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: not found (run the fetch stage first)") from err
    except OSError as err:
        raise PipelineError(f"{path}: cannot read: {err.strerror}") from err
