"""Your own data through the whole pipeline: a directory of IDX files and Kaggle's
digit-recognizer CSV, each in a scratch git + DVC repository; and the CSV reader's checks.

The data is synthetic (test_pipeline's bar images: the bar's place gives the label), small
enough that every `dvc repro` takes a few seconds.
"""

import gzip
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_pipeline import Repo, init_project, isolated_env, synthetic_images

from stages import idx, kaggle
from stages.errors import PipelineError

QUICK = {"preprocess": {"val_size": 100},
         "train": {"hidden": [16], "epochs": 2, "batch_size": 32}}


def set_params(repo: Repo, section: str, **values: object) -> None:
    path = repo.path / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def repro(repo: Repo) -> str:
    result = repo.dvc("repro")
    return result.stdout + result.stderr


def scratch_repo(root: Path, local_dir: str) -> Repo:
    """A git + DVC repository (nothing committed yet) holding this project's pipeline, with
    quick training params and `fetch.verify: false` on `local_dir`."""
    scratch = Repo(root / "repo", isolated_env(root))
    fetch = {"sources": ["local"], "local_dir": local_dir, "verify": False}
    init_project(scratch.path, scratch.env, {"fetch": fetch, **QUICK})
    (scratch.path / "data/local").mkdir(parents=True)
    return scratch


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
    return synthetic_images(labels, rng), labels


def write_idx_dir(directory: Path, seed: int) -> dict[str, bytes]:
    """The four IDX files, the images gzipped and the labels plain; their IDX bytes."""
    (train_x, train_y), (test_x, test_y) = synthetic_digits(500, seed), synthetic_digits(
        150, seed + 1)
    files = {"train-images-idx3-ubyte": idx.encode(train_x),
             "train-labels-idx1-ubyte": idx.encode(train_y),
             "t10k-images-idx3-ubyte": idx.encode(test_x),
             "t10k-labels-idx1-ubyte": idx.encode(test_y)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if "images" in name:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / name).write_bytes(data)
    return files


def csv_text(images: np.ndarray, labels: np.ndarray) -> str:
    rows = np.column_stack([labels, images.reshape(len(images), -1)])
    return "\n".join([",".join(kaggle.COLUMNS), *(",".join(map(str, row)) for row in rows)]) + "\n"


def raw_labels(repo: Path, prefix: str) -> np.ndarray:
    data = (repo / f"data/raw/{prefix}-labels-idx1-ubyte").read_bytes()
    return idx.decode(data, prefix)


def ran(log: str) -> list[str]:
    return [stage for stage in ("fetch", "preprocess", "train", "evaluate")
            if f"Running stage '{stage}'" in log]


# ---------------------------------------------------------------------------- pipelines


def test_an_idx_directory_runs_through_and_dvc_watches_it(tmp_path: Path) -> None:
    scratch = scratch_repo(tmp_path, "data/local/digits")
    files = write_idx_dir(scratch.path / "data/local/digits", seed=1)
    # Versioned with DVC, as the README suggests for data too big for git.
    scratch.dvc("add", "-q", "data/local/digits")
    scratch.git("add", "-A")
    scratch.git("commit", "-q", "-m", "own digits")

    log = repro(scratch)
    assert ran(log) == ["fetch", "preprocess", "train", "evaluate"], log
    assert "not verified (fetch.verify is false)" in log
    for name, data in files.items():
        assert (scratch.path / "data/raw" / name).read_bytes() == data, name
    assert "Data and pipelines are up to date" in repro(scratch)

    # New test labels: DVC sees the directory change and reruns fetch and what follows.
    relabelled = (idx.decode(files["t10k-labels-idx1-ubyte"], "labels") + 1) % 10
    (scratch.path / "data/local/digits/t10k-labels-idx1-ubyte").write_bytes(
        idx.encode(relabelled))
    status = scratch.dvc("status").stdout
    assert "modified:           data/local/digits" in status, status
    log = repro(scratch)
    assert ran(log) == ["fetch", "preprocess", "train", "evaluate"], log
    np.testing.assert_array_equal(raw_labels(scratch.path, "t10k"), relabelled)


def test_a_kaggle_csv_runs_through_with_a_seeded_test_split(tmp_path: Path) -> None:
    scratch = scratch_repo(tmp_path, "data/local/kaggle")
    images, labels = synthetic_digits(700, seed=2)
    (scratch.path / "data/local/kaggle").mkdir()
    (scratch.path / "data/local/kaggle/train.csv").write_text(csv_text(images, labels))
    set_params(scratch, "fetch", test_size=200, split_seed=5)
    scratch.git("add", "-A")
    scratch.git("commit", "-q", "-m", "kaggle digits")

    log = repro(scratch)
    assert ran(log) == ["fetch", "preprocess", "train", "evaluate"], log
    assert "split with fetch.test_size 200 and fetch.split_seed 5" in log
    test_labels, train_labels = raw_labels(scratch.path, "t10k"), raw_labels(scratch.path, "train")
    assert (len(test_labels), len(train_labels)) == (200, 500)
    order = np.random.default_rng(5).permutation(700)
    np.testing.assert_array_equal(test_labels, labels[order[:200]])
    np.testing.assert_array_equal(train_labels, labels[order[200:]])
    prepared = np.load(scratch.path / "data/prepared/x_test.npy", allow_pickle=False)
    pixels = images[order[:200]].reshape(200, 784)
    np.testing.assert_array_equal(prepared, np.multiply(pixels, np.float32(1 / 255),
                                                        dtype=np.float32))
    accuracy = yaml.safe_load((scratch.path / "metrics/metrics.json").read_text())["test"]
    assert accuracy["accuracy"] > 0.5, accuracy  # guessing gives 0.1

    # Another split is another fetch output, which DVC sees as a params change.
    set_params(scratch, "fetch", split_seed=6)
    status = scratch.dvc("status").stdout
    assert "modified:           fetch.split_seed" in status, status


# ---------------------------------------------------------------------------- the CSV reader

ROW = [3] + [0] * 784


def write_csv(path: Path, rows: list[list[object]], header: str = ",".join(kaggle.COLUMNS)) -> Path:
    path.write_text("\n".join([header, *(",".join(map(str, row)) for row in rows)]) + "\n")
    return path


def test_read_csv_lays_pixels_out_row_by_row(tmp_path: Path) -> None:
    pixels = np.arange(784) % 256
    path = write_csv(tmp_path / "train.csv", [[7, *pixels], ROW])
    images, labels = kaggle.read_csv(path)
    assert images.dtype == labels.dtype == np.uint8
    assert labels.tolist() == [7, 3]
    assert images.shape == (2, 28, 28)
    # pixel k is at row k // 28, column k % 28
    assert images[0, 1, 0] == 28
    assert images[0, 27, 27] == 783 % 256
    np.testing.assert_array_equal(images[0].ravel(), pixels)


def test_read_csv_takes_whole_numbers_pandas_reads_as_text(tmp_path: Path) -> None:
    # No-break spaces around a number: pandas reads those columns as text, the check
    # takes them.
    rows = [replaced(5, "\u00a07"), replaced(600, "200\u00a0"), ROW]
    images, labels = kaggle.read_csv(write_csv(tmp_path / "train.csv", rows))
    assert labels.tolist() == [3, 3, 3]
    assert images.reshape(3, -1)[[0, 1], [4, 599]].tolist() == [7, 200]
    assert images.sum() == 207


def replaced(column: int, value: object) -> list[object]:
    row = list(ROW)
    row[column] = value
    return row


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([ROW], "label,pixel0", "line 1: header has 2 columns, expected 785: label, pixel0, "
                                "..., pixel783"),
        ([ROW], ",".join(kaggle.COLUMNS).replace("pixel9,", "pixel09,"),
         "line 1: column 11 is 'pixel09', expected 'pixel9'"),
        ([], "", "line 1: no header, expected label, pixel0, ..., pixel783"),
        ([], None, "holds no digits, only a header"),
        ([ROW, [*ROW, 0]], None, "line 3: 786 fields, expected 785"),
        ([[*ROW, 0]], None, "line 2: more fields than the header's 785"),
        ([ROW, ROW[:700]], None, "line 3, column pixel699: empty"),
        ([ROW, replaced(5, "x")], None, "line 3, column pixel4: 'x' is not a whole number"),
        ([ROW, replaced(5, 2.5)], None, "line 3, column pixel4: '2.5' is not a whole number"),
        # Arabic-Indic three: a digit to str.isdigit and to \\d, not to a CSV of pixels.
        ([ROW, replaced(5, "\u0663")], None,
         "line 3, column pixel4: '\u0663' is not a whole number"),
        ([replaced(9, "x"), replaced(5, "y")], None,
         "line 3, column pixel4: 'y' is not a whole number"),  # leftmost column first
        ([ROW, ROW, replaced(784, 256)], None, "line 4, column pixel783: 256 is outside 0-255"),
        ([replaced(1, -1)], None, "line 2, column pixel0: -1 is outside 0-255"),
        ([ROW, replaced(0, 10)], None, "line 3, column label: 10 is outside 0-9"),
        ([replaced(0, 10**30)], None, f"line 2, column label: {10**30} is outside 0-9"),
    ],
)
def test_read_csv_names_the_line_and_column(
    tmp_path: Path, rows: list, header: str | None, message: str
) -> None:
    path = tmp_path / "train.csv"
    if header is None:
        write_csv(path, rows)
    else:
        write_csv(path, rows, header)
    with pytest.raises(PipelineError) as caught:
        kaggle.read_csv(path)
    assert str(caught.value) == f"{path}: {message}"


def test_read_csv_names_a_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(",".join(kaggle.COLUMNS) + "\n" + ",".join(map(str, ROW)) + "\n\n"
                    + ",".join(map(str, ROW)) + "\n")
    with pytest.raises(PipelineError) as caught:
        kaggle.read_csv(path)
    assert str(caught.value) == f"{path}: line 3, column label: empty"


def test_read_csv_refuses_a_missing_or_oversized_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(PipelineError, match=r"nowhere\.csv: not found$"):
        kaggle.read_csv(tmp_path / "nowhere.csv")
    path = write_csv(tmp_path / "train.csv", [ROW])
    monkeypatch.setattr(kaggle, "MAX_CSV_BYTES", 100)
    with pytest.raises(PipelineError) as caught:
        kaggle.read_csv(path)
    assert str(caught.value) == f"{path}: {path.stat().st_size} bytes is over the 100-byte limit"
