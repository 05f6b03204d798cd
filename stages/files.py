"""Writes that are all or nothing: a temporary file in the same directory, then a rename.

A killed stage leaves a stray temporary file at worst, never a truncated output that looks
finished. Zip and .npy bytes depend only on the arrays, so same inputs give same bytes.
"""

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from stages.errors import PipelineError

# zip timestamps are otherwise the time of writing, which would change the bytes on every run.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose contents appear at `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise PipelineError(f"{path}: cannot write: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise PipelineError(f"{path}: cannot write: {err.strerror}") from err
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary directory that replaces `path` as a whole if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as err:
        raise PipelineError(f"{path}: cannot write: {err.strerror}") from err
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        tmp.chmod(0o755)
        # Two renames, so `path` is missing only between them, never half-filled.
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except OSError as err:
        if old.exists() and not path.exists():
            old.rename(path)
        raise PipelineError(f"{path}: cannot write: {err.strerror}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    # NaN is not JSON; refusing it here keeps a broken run from writing a broken metrics file.
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.lib.format.write_array(handle, array, allow_pickle=False)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed timestamps so the bytes depend on the arrays alone."""
    with atomic_file(path) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", ZIP_EPOCH), "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def load_npy(path: Path) -> np.ndarray:
    check_magic(path, NPY_MAGIC, ".npy")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise PipelineError(f"{path}: not a readable .npy file: {err}") from err


def check_magic(path: Path, magic: bytes, kind: str) -> None:
    """Refuse a file that does not start like `kind` before np.load guesses at it (np.load
    takes anything else for a pickle and suggests loading it unsafely)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(magic))
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: not found (run the earlier stages first)") from err
    except OSError as err:
        raise PipelineError(f"{path}: cannot read: {err.strerror}") from err
    if head != magic:
        raise PipelineError(f"{path}: not a {kind} file (it starts {head.hex() or 'empty'})")
