"""Writes that are all or nothing: a temporary file in the same directory, then a rename.

A killed stage leaves a stray temporary file at worst, never a truncated output that looks
finished; the next write of that output deletes the stray. Zip and .npy bytes depend only on
the arrays, so same inputs give same bytes.
"""

import errno
import glob
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import numpy as np

from stages.errors import PipelineError

# zip timestamps are otherwise the time of writing, which would change the bytes on every run.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose contents appear at `path` only if the block succeeds."""
    path = Path(path)
    with _synced_temporary(path) as (handle, tmp):
        yield handle
    _publish(tmp, path)


@contextmanager
def _synced_temporary(path: Path) -> Iterator[tuple[IO[bytes], str]]:
    """(handle, name) of a temporary file beside `path`, on disk when the block ends (fsync);
    deleted if the block fails."""
    try:
        _make_parent(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _cannot_write(path, err) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, tmp
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _cannot_write(path, err) from err
        raise


def _publish(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, err) from err


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A temporary directory that replaces `path` as a whole if the block succeeds."""
    path = Path(path)
    try:
        _make_parent(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as err:
        raise _cannot_write(path, err) from err
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        tmp.chmod(0o755)
        # Two renames, so `path` is missing only between them, never half-filled.
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except PipelineError as err:
        # A write inside failed: name the file where the user will look for it.
        raise PipelineError(str(err).replace(str(tmp), str(path))) from err
    except OSError as err:
        if old.exists() and not path.exists():
            old.rename(path)
        raise _cannot_write(path, err) from err
    finally:
        _remove(tmp)
        _remove(old)


def _make_parent(path: Path) -> None:
    """Create the directory `path` goes in, and delete what a killed earlier write of `path`
    left there: its temporary file or directory, and a replaced directory not yet removed.
    One process writes a given output at a time (DVC locks the workspace), so none of it is
    still in use."""
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".tmp", ".old"):
        for stray in path.parent.glob(f".{glob.escape(path.name)}.*{suffix}"):
            _remove(stray)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree, if there; what was replaced may have been either."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _cannot_write(path: Path, err: OSError) -> PipelineError:
    # numpy's own file writes raise OSError without an errno, hence the fallback.
    return PipelineError(f"{path}: cannot write: {err.strerror or err}")


def write_all(outputs: dict[Path, bytes]) -> None:
    """Write several outputs, all or none: every temporary file is written and on disk before
    the first rename, so a failed write (a full disk, say) changes no output."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in outputs.items():
            with _synced_temporary(Path(path)) as (handle, tmp):
                handle.write(data)
            staged.append((tmp, Path(path)))
        for tmp, path in staged:
            _publish(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def json_bytes(obj: Any) -> bytes:
    # NaN is not JSON; refusing it here keeps a broken run from writing a broken metrics file.
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        # Given a bare write(), numpy streams through Python's file object, whose OSError on a
        # full disk says so; numpy's tofile() on a real file raises one with no reason.
        np.lib.format.write_array(SimpleNamespace(write=handle.write), array, allow_pickle=False)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Like np.savez, but with fixed timestamps so the bytes depend on the arrays alone."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", ZIP_EPOCH), "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def load_npy(path: Path) -> np.ndarray:
    check_magic(path, NPY_MAGIC, ".npy")
    try:
        _check_length(path)
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise PipelineError(f"{path}: not a readable .npy file: {err}") from err


def _check_length(path: Path) -> None:
    """Refuse a file shorter than its header says: np.load would first allocate what the
    header promises, and a damaged header can promise any size."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version}, expected 1.0 or 2.0")
        shape, _, dtype = read_header(handle)
        promised = handle.tell() + math.prod(shape) * dtype.itemsize
    if (size := path.stat().st_size) < promised:
        raise ValueError(f"the header promises {promised} bytes, the file holds {size}")


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
