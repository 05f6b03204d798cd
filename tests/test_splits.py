import numpy as np
import pytest

from stages import splits
from stages.errors import PipelineError
from stages.files import save_npy


def write_split(directory, x, y, split="val"):
    save_npy(directory / f"x_{split}.npy", x)
    save_npy(directory / f"y_{split}.npy", y)


def one_hot(rows):
    return np.eye(10, dtype=np.float32)[np.arange(rows) % 10]


def test_load_split_returns_the_arrays(tmp_path):
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    write_split(tmp_path, x, one_hot(3))
    got_x, got_y = splits.load_split(tmp_path, "val")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y.argmax(axis=1), [0, 1, 2])


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 784), np.float64), one_hot(3), r"x_val.npy: float64\(3, 784\), expected"),
        (np.zeros((3, 783), np.float32), one_hot(3), r"x_val.npy: float32\(3, 783\)"),
        (np.zeros((3, 784), np.float32), one_hot(4), r"y_val.npy: float32\(4, 10\), expected"),
        (np.zeros((3, 784), np.float32), one_hot(3)[:, :9], r"y_val.npy: float32\(3, 9\)"),
        (np.zeros((0, 784), np.float32), one_hot(0), "x_val.npy: holds no examples"),
        (np.zeros((3, 784), np.float32), np.zeros((3, 10), np.float32), "rows are not one-hot"),
        (np.zeros((3, 784), np.float32), one_hot(3) * 0.5 + 0.05, "rows are not one-hot"),
        (np.full((3, 784), np.nan, np.float32), one_hot(3), r"pixels outside \[0, 1\]"),
        (np.full((3, 784), 255, np.float32), one_hot(3), r"x_val.npy: pixels outside \[0, 1\]"),
        (np.full((3, 784), -0.5, np.float32), one_hot(3), r"pixels outside \[0, 1\]"),
    ],
)
def test_load_split_refuses_what_preprocess_does_not_write(tmp_path, x, y, message):
    write_split(tmp_path, x, y)
    with pytest.raises(PipelineError, match=message):
        splits.load_split(tmp_path, "val")


def test_empty_file_is_a_one_line_error(tmp_path):
    write_split(tmp_path, np.zeros((3, 784), np.float32), one_hot(3))
    (tmp_path / "x_val.npy").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"x_val\.npy: not a \.npy file \(it starts empty\)"):
        splits.load_split(tmp_path, "val")
