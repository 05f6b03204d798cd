"""Kaggle's digit-recognizer train.csv as the four MNIST IDX files.

The CSV has a header `label,pixel0,...,pixel783`, then one digit per line: its label 0-9 and
its 28x28 pixels 0-255, row by row. It has no labelled test set (Kaggle keeps those labels),
so a seeded shuffle sets `test_size` digits aside as one and the rest become the training
set; preprocess then takes its validation set from the end of that, as it does for MNIST.
"""

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from stages import idx
from stages.errors import PipelineError

CSV_NAME = "train.csv"
SIDE = 28
COLUMNS = ["label", *(f"pixel{i}" for i in range(SIDE * SIDE))]
MAX_CSV_BYTES = 512 << 20  # Kaggle's train.csv is 76 MB
WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")  # not \d, which takes any script's digits
RAGGED_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")  # pandas' words


def from_csv(path: Path, test_size: int, seed: int) -> dict[str, bytes]:
    """{official file name: IDX bytes} for the digits in a Kaggle CSV, split by `seed`."""
    images, labels = read_csv(path)
    return split(images, labels, test_size, seed, path)


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28), labels (N,)) as uint8, with every cell checked; errors name the
    line and column of the first bad cell."""
    _check_header(path)
    try:
        with warnings.catch_warnings():
            # pandas only warns, and drops the extra fields, when the first row is too long.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, header=0, names=COLUMNS, index_col=False,
                                skip_blank_lines=False)
    except pd.errors.ParserWarning as err:
        raise PipelineError(f"{path}: line 2: more fields than the header's "
                            f"{len(COLUMNS)}") from err
    except pd.errors.ParserError as err:
        if ragged := RAGGED_LINE.search(str(err)):
            expected, line, seen = ragged.groups()
            raise PipelineError(f"{path}: line {line}: {seen} fields, expected {expected}") from err
        raise PipelineError(f"{path}: {' '.join(str(err).split())}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: cannot read: {err}") from err
    if table.empty:
        raise PipelineError(f"{path}: holds no digits, only a header")
    if text := [str(column) for column, dtype in table.dtypes.items()
                if not pd.api.types.is_integer_dtype(dtype)]:
        table[text] = _whole_numbers(path, text)
    values = table.to_numpy()
    highest = np.array([_highest(column) for column in COLUMNS])
    bad = np.argwhere((values < 0) | (values > highest))
    if len(bad):
        row, col = bad[0]
        raise PipelineError(f"{path}: line {row + 2}, column {COLUMNS[col]}: "
                            f"{values[row, col]} is outside 0-{highest[col]}")
    values = values.astype(np.uint8)
    return values[:, 1:].reshape(-1, SIDE, SIDE), values[:, 0]


def split(images: np.ndarray, labels: np.ndarray, test_size: int, seed: int,
          path: Path) -> dict[str, bytes]:
    """The digits shuffled by `seed`: the first `test_size` are the test set, the others the
    training set, both kept in shuffled order so any slice of them is a random sample."""
    if len(labels) <= test_size:
        raise PipelineError(f"{path}: {len(labels)} digits, but fetch.test_size takes "
                            f"{test_size} for the test set and leaves none to train on")
    order = np.random.default_rng(seed).permutation(len(labels))
    test, train = order[:test_size], order[test_size:]
    return {
        "train-images-idx3-ubyte": idx.encode(images[train]),
        "train-labels-idx1-ubyte": idx.encode(labels[train]),
        "t10k-images-idx3-ubyte": idx.encode(images[test]),
        "t10k-labels-idx1-ubyte": idx.encode(labels[test]),
    }


def _check_header(path: Path) -> None:
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise PipelineError(f"{path}: {size} bytes is over the {MAX_CSV_BYTES}-byte limit")
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = handle.readline().rstrip("\r\n")
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: cannot read: {err}") from err
    names = [name.strip().strip('"') for name in header.split(",")]
    if names == COLUMNS:
        return
    if not header.strip():
        raise PipelineError(f"{path}: line 1: no header, expected label, pixel0, ..., "
                            f"pixel{len(COLUMNS) - 2}")
    if len(names) != len(COLUMNS):
        raise PipelineError(f"{path}: line 1: header has {len(names)} columns, expected "
                            f"{len(COLUMNS)}: label, pixel0, ..., pixel{len(COLUMNS) - 2}")
    at = next(i for i, (got, want) in enumerate(zip(names, COLUMNS, strict=True)) if got != want)
    raise PipelineError(f"{path}: line 1: column {at + 1} is {names[at]!r}, "
                        f"expected {COLUMNS[at]!r}")


def _highest(column: str) -> int:
    return 9 if column == "label" else 255


def _whole_numbers(path: Path, columns: list[str]) -> pd.DataFrame:
    """The columns pandas could not read as integers, read again as text in one pass and
    checked cell by cell, column by column: the error names the first cell that is empty (or
    on a short line), not a whole number, or out of range."""
    table = pd.read_csv(path, header=0, names=COLUMNS, index_col=False, usecols=columns,
                        dtype=str, keep_default_na=False, skip_blank_lines=False)
    for column in columns:
        for row, cell in enumerate(table[column]):
            where = f"{path}: line {row + 2}, column {column}"
            if not cell.strip():
                raise PipelineError(f"{where}: empty")
            if not WHOLE_NUMBER.fullmatch(cell):
                raise PipelineError(f"{where}: {cell!r} is not a whole number")
            if not 0 <= int(cell) <= _highest(column):
                raise PipelineError(f"{where}: {cell.strip()} is outside 0-{_highest(column)}")
    return table[columns].astype(np.int64)
