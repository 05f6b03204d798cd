"""Raw MNIST to arrays: read and check the IDX files, then scale, one-hot and split them."""

from pathlib import Path

import numpy as np

from stages import idx, mnist
from stages.errors import PipelineError
from stages.splits import CLASSES, PIXELS, scale_pixels


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28), labels (N,)) from an IDX pair, checked for MNIST's shapes."""
    images = idx.decode(_read(images_path), str(images_path))
    labels = idx.decode(_read(labels_path), str(labels_path))
    mnist.check_pair(images, labels, str(images_path), str(labels_path))
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
