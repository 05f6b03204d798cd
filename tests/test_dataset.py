import numpy as np
import pytest

from stages import dataset, idx
from stages.errors import PipelineError


def write_pair(tmp_path, images, labels):
    (tmp_path / "images").write_bytes(idx.encode(images))
    (tmp_path / "labels").write_bytes(idx.encode(labels))
    return tmp_path / "images", tmp_path / "labels"


def test_read_pair_returns_the_arrays(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 4], np.uint8)
    got_images, got_labels = dataset.read_pair(*write_pair(tmp_path, images, labels))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 28, 27), np.uint8), np.zeros(2, np.uint8), r"images of shape \(2, 28, 27\)"),
        (np.zeros((2, 784), np.uint8), np.zeros(2, np.uint8), "expected \\(N, 28, 28\\)"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros((2, 1), np.uint8), "labels of shape"),
        (np.zeros((2, 28, 28), np.uint8), np.zeros(3, np.uint8), "3 labels for the 2 images in "),
        (np.zeros((2, 28, 28), np.uint8), np.array([3, 10], np.uint8),
         "label 10 at index 1, expected 0-9"),
    ],
)
def test_read_pair_rejects_what_is_not_mnist(tmp_path, images, labels, message):
    with pytest.raises(PipelineError, match=message):
        dataset.read_pair(*write_pair(tmp_path, images, labels))


def test_read_pair_refuses_an_empty_set(tmp_path):
    images, labels = np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8)
    with pytest.raises(PipelineError, match="images: holds no images"):
        dataset.read_pair(*write_pair(tmp_path, images, labels))


def test_read_pair_names_a_missing_file(tmp_path):
    with pytest.raises(PipelineError, match=r"nothing-here: not found \(run the fetch stage"):
        dataset.read_pair(tmp_path / "nothing-here", tmp_path / "labels")
    with pytest.raises(PipelineError, match="cannot read: Is a directory"):
        dataset.read_pair(tmp_path, tmp_path / "labels")


def test_normalise_scales_bytes_into_unit_interval():
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 0, 0], images[0, 0, 1], images[1, 27, 27] = 255, 51, 128
    x = dataset.normalise(images)
    assert x.dtype == np.float32
    assert x.shape == (2, 784)
    assert (x[0, 0], x[1, 783]) == (1.0, np.float32(128) * np.float32(1 / 255))
    assert x.min() == 0.0
    # A multiply by 1/255 rather than a divide: within one unit in the last place of k / 255.
    every = dataset.normalise(np.arange(256, dtype=np.uint8).repeat(784).reshape(256, 28, 28))
    np.testing.assert_array_max_ulp(every[:, 0], np.arange(256, dtype=np.float32) / 255, 1)
    assert x[0, 1] == every[51, 0] == np.float32(0.20000002)


def test_one_hot_rows():
    y = dataset.one_hot(np.array([0, 9, 3], np.uint8))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.argmax(axis=1), [0, 9, 3])
    np.testing.assert_array_equal(y.sum(axis=1), [1, 1, 1])
    assert y.shape == (3, 10)


def test_prepare_holds_out_the_last_training_images():
    images = np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((5, 28, 28), np.uint8)
    labels = np.array([1, 2, 3, 4, 5], np.uint8)
    arrays = dataset.prepare((images, labels), (images[:2], labels[:2]), val_size=2)
    assert sorted(arrays) == ["x_test", "x_train", "x_val", "y_test", "y_train", "y_val"]
    np.testing.assert_array_equal(arrays["y_train"].argmax(axis=1), [1, 2, 3])
    np.testing.assert_array_equal(arrays["y_val"].argmax(axis=1), [4, 5])
    np.testing.assert_array_equal(np.rint(arrays["x_val"][:, 0] * 255), [3, 4])
    assert arrays["x_test"].shape == (2, 784)


@pytest.mark.parametrize("val_size", [5, 6])
def test_prepare_rejects_a_validation_set_as_large_as_the_training_set(val_size):
    images, labels = np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8)
    with pytest.raises(PipelineError, match=f"val_size: must be below the 5 training images, "
                                            f"got {val_size}"):
        dataset.prepare((images, labels), (images, labels), val_size)
