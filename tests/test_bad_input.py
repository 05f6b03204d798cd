"""Bad input through the real stage commands: every case must end in exit 1 and exactly one
`error: ...` line naming the file or key, with no traceback, and leave the working directory
exactly as it was, older outputs included.

Each case runs `python -m stages.<stage>` in a scratch project that holds valid inputs for
every stage and an older output of every stage; the case breaks one thing. The library-level
tests (test_params, test_idx, test_dataset, test_sources, test_download, test_modelfile) cover
the same checks in detail; this matrix shows what a user of the commands sees.
"""

import ast
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import idx, mnist, modelfile, network
from stages.files import save_npy

ROOT = Path(__file__).parents[1]
STAGE_ARGS = {
    "fetch": ("--out", "fetched"),
    "preprocess": ("--raw", "raw", "--out", "prepared"),
    "train": ("--data", "data", "--model", "out/model.npz", "--metrics", "out/train.json",
              "--history", "out/history.csv"),
    "evaluate": ("--data", "data", "--model", "model.npz", "--out", "results"),
}
N_RAW_TRAIN, N_RAW_TEST = 30, 10
N_TRAIN, N_VAL, N_TEST = 20, 5, 6

# Run before a fetch that talks to the test's server: short time-outs and no back-off (the
# defaults would wait minutes on a stalled server), and no name lookup beyond this machine.
FAST_LOOPBACK_NETWORK = """
import socket
from stages import download
download.download.__kwdefaults__.update(timeout=1.0, attempts=2, backoff=0.0)
def loopback_only(host, *args, real=socket.getaddrinfo, **kwargs):
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise OSError(f"refused to look up {host}")
    return real(host, *args, **kwargs)
socket.getaddrinfo = loopback_only
"""
# Run before a stage to make every fsync fail as a full disk does.
FULL_DISK = """
import errno, os
def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = full
"""


# ---------------------------------------------------------------------------- the project


def raw_files(n_train: int = N_RAW_TRAIN, n_test: int = N_RAW_TEST) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files[f"{prefix}-images-idx3-ubyte"] = idx.encode(
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        files[f"{prefix}-labels-idx1-ubyte"] = idx.encode(np.arange(n, dtype=np.uint8) % 10)
    return files


def write_prepared(directory: Path) -> None:
    rng = np.random.default_rng(0)
    for split, rows in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST)):
        save_npy(directory / f"x_{split}.npy", rng.random((rows, 784), np.float32))
        save_npy(directory / f"y_{split}.npy",
                 np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)])


def save_model(path: Path, sizes: list[int]) -> None:
    weights, biases = network.init_layers(sizes, np.random.default_rng(0))
    path.write_bytes(modelfile.encode(weights, biases, "relu"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Valid inputs for every stage (local/ for fetch, raw/ for preprocess, data/ for train
    and evaluate, model.npz for evaluate) and an older output of every stage."""
    proj = tmp_path / "project"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fetch"].update(sources=["local"], local_dir="local", verify=False)
    params["preprocess"]["val_size"] = 5
    params["train"].update(epochs=2, batch_size=8)
    params["evaluate"].update({key: 3 for key in ("samples", "mistakes")
                               if key in params["evaluate"]})
    proj.mkdir()
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, data in raw_files().items():
        for directory in ("local", "raw"):
            (proj / directory).mkdir(exist_ok=True)
            (proj / directory / name).write_bytes(data)
    write_prepared(proj / "data")
    save_model(proj / "model.npz", [784, 10, 10])
    for older in ("fetched/train-images-idx3-ubyte", "prepared/x_train.npy", "out/model.npz",
                  "out/train.json", "out/history.csv", "results/metrics.json"):
        (proj / older).parent.mkdir(exist_ok=True)
        (proj / older).write_bytes(b"an older output\n")
    return proj


def set_param(proj: Path, section: str, key: str, value: object) -> None:
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw[section][key] = value
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def tree(root: Path) -> dict[str, str]:
    """Every file's SHA-256 and every directory, by path relative to `root`."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            if path.is_file() else "dir" for path in sorted(root.rglob("*"))}


def run_stage(proj: Path, stage: str, *args: str, prelude: str = "",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m stages.<stage>` in `proj`; with a prelude, the same module run by runpy
    after the prelude's Python has run."""
    command = [sys.executable, "-m", f"stages.{stage}"]
    if prelude:
        command = [sys.executable, "-c", f"{prelude}\nimport runpy\n"
                   f"runpy.run_module('stages.{stage}', run_name='__main__', alter_sys=True)"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*command, *(args or STAGE_ARGS[stage])], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def check_refused(result: subprocess.CompletedProcess, *expected: str) -> str:
    """The one error line, after checking it is the only output on stderr and says every
    part of `expected`."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- a loopback server


class MisbehavingServer:
    """A server on 127.0.0.1 whose first path segment says how to fail: /404/, /500/,
    /stall/ (answers nothing for 5 s), /redirect/ (to plain http elsewhere), /huge/
    (announces 40 MB)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.answer(self, self.path.split("/")[1])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, handler: http.server.BaseHTTPRequestHandler, how: str) -> None:
        if how == "stall":
            self.release.wait(5)
            return
        status, headers = {
            "404": (404, {"Content-Length": "0"}),
            "500": (500, {"Content-Length": "0"}),
            "redirect": (302, {"Location": "http://example.invalid/mnist/file.gz",
                               "Content-Length": "0"}),
            "huge": (200, {"Content-Length": str(40_000_000)}),
        }[how]
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[MisbehavingServer]:
    srv = MisbehavingServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    expected: str  # part of the one error line, naming the file or key
    setup: Callable[[Path, MisbehavingServer], None]
    prelude: str = ""
    also: tuple[str, ...] = ()  # further parts the line must hold


def param(section: str, key: str, value: object) -> Callable[[Path, MisbehavingServer], None]:
    return lambda proj, _: set_param(proj, section, key, value)


def write(name: str, data: bytes) -> Callable[[Path, MisbehavingServer], None]:
    def setup(proj: Path, _: MisbehavingServer) -> None:
        (proj / name).write_bytes(data)
    return setup


def rename_key(section: str, old: str, new: str) -> Callable[[Path, MisbehavingServer], None]:
    def setup(proj: Path, _: MisbehavingServer) -> None:
        raw = yaml.safe_load((proj / "params.yaml").read_text())
        raw[section][new] = raw[section].pop(old)
        (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return setup


def truncate(name: str, size: int) -> Callable[[Path, MisbehavingServer], None]:
    return lambda proj, _: (proj / name).write_bytes((proj / name).read_bytes()[:size])


def remove(name: str) -> Callable[[Path, MisbehavingServer], None]:
    return lambda proj, _: (proj / name).unlink()


def params_text(text: str) -> Callable[[Path, MisbehavingServer], None]:
    return write("params.yaml", text.encode())


def edited_params(edit: Callable[[str], str]) -> Callable[[Path, MisbehavingServer], None]:
    def setup(proj: Path, _: MisbehavingServer) -> None:
        path = proj / "params.yaml"
        path.write_text(edit(path.read_text()))
    return setup


def mirrors(*paths: str, local: str = "") -> Callable[[Path, MisbehavingServer], None]:
    """fetch from the server's `paths` (":refused" is a closed port), then `local` if given."""
    def setup(proj: Path, srv: MisbehavingServer) -> None:
        urls = [f"http://127.0.0.1:{closed_port()}/" if path == ":refused" else
                f"{srv.base}/{path}/" for path in paths]
        set_param(proj, "fetch", "mirrors", urls)
        set_param(proj, "fetch", "sources", ["mirror", "local"] if local else ["mirror"])
        set_param(proj, "fetch", "verify", True)
        if local:
            set_param(proj, "fetch", "local_dir", local)
    return setup


def labels(values: list[int]) -> bytes:
    return idx.encode(np.array(values, dtype=np.uint8))


def images(*shape: int) -> bytes:
    return idx.encode(np.zeros(shape, dtype=np.uint8))


def pickled_model(proj: Path, _: MisbehavingServer) -> None:
    arrays = {"activation": np.array("relu"), "W0": np.array([{"not": "numbers"}], dtype=object),
              "b0": np.zeros(10, np.float32)}
    with open(proj / "model.npz", "wb") as handle:
        np.savez(handle, allow_pickle=True, **arrays)


def both(*setups: Callable[[Path, MisbehavingServer], None]
         ) -> Callable[[Path, MisbehavingServer], None]:
    def setup(proj: Path, srv: MisbehavingServer) -> None:
        for one in setups:
            one(proj, srv)
    return setup


TRAIN_IMAGES, TRAIN_LABELS = "raw/train-images-idx3-ubyte", "raw/train-labels-idx1-ubyte"
GOOD_IMAGES = raw_files()["train-images-idx3-ubyte"]
GOOD_LABELS = raw_files()["train-labels-idx1-ubyte"]
GZ = "local/train-labels-idx1-ubyte"

CASES = [
    # params.yaml
    Case("params: unknown key", "train", "params.yaml: unknown key train.epoch "
         "(did you mean train.epochs?)", rename_key("train", "epochs", "epoch")),
    Case("params: wrong type", "train", "params.yaml: train.epochs: expected an integer, "
         "got str 'ten'", param("train", "epochs", "ten")),
    Case("params: lr = 0", "train", "params.yaml: train.lr: must be > 0",
         param("train", "lr", 0)),
    Case("params: lr < 0", "train", "params.yaml: train.lr: must be > 0",
         param("train", "lr", -0.1)),
    Case("params: lr not a number", "train", "params.yaml: train.lr: expected a number",
         param("train", "lr", "fast")),
    Case("params: batch_size 0", "train", "params.yaml: train.batch_size: must be >= 1",
         param("train", "batch_size", 0)),
    Case("params: batch_size > training set", "train",
         f"train.batch_size: must be at most the {N_TRAIN} training images",
         param("train", "batch_size", N_TRAIN + 1)),
    Case("params: hidden width 0", "train", "params.yaml: train.hidden: must be >= 1",
         param("train", "hidden", [10, 0])),
    Case("params: epochs 0", "train", "params.yaml: train.epochs: must be >= 1",
         param("train", "epochs", 0)),
    Case("params: unknown activation", "train", "params.yaml: train.activation: must be one of",
         param("train", "activation", "swish")),
    Case("params: unknown optimizer", "train", "params.yaml: train.optimizer: must be one of",
         param("train", "optimizer", "rmsprop")),
    Case("params: val_size = training size", "preprocess",
         f"preprocess.val_size: must be below the {N_RAW_TRAIN} training images",
         param("preprocess", "val_size", N_RAW_TRAIN)),
    Case("params: val_size 0", "preprocess", "params.yaml: preprocess.val_size: must be >= 1",
         param("preprocess", "val_size", 0)),
    Case("params: http mirror", "fetch", "params.yaml: fetch.mirrors: http://example.com/mnist/: "
         "only https:// URLs are allowed", param("fetch", "mirrors", ["http://example.com/mnist/"])),
    Case("params: key given twice", "train", "params.yaml: key train.epochs given twice",
         edited_params(lambda t: t.replace("train:\n", "train:\n  epochs: 3\n", 1))),
    Case("params: invalid YAML", "evaluate", "params.yaml: invalid YAML",
         params_text("train: [\n")),
    Case("params: empty file", "evaluate", "params.yaml: top level: expected a mapping",
         params_text("")),
    Case("params: missing file", "evaluate", "params.yaml: not found", remove("params.yaml")),
    # raw IDX data, read by preprocess
    Case("data: truncated IDX", "preprocess", f"{TRAIN_IMAGES}: IDX shape (30, 28, 28) needs",
         write(TRAIN_IMAGES, GOOD_IMAGES[:-100])),
    Case("data: wrong magic", "preprocess", f"{TRAIN_IMAGES}: not an IDX file: magic",
         write(TRAIN_IMAGES, b"\x1f\x8b" + GOOD_IMAGES[2:])),
    Case("data: IDX type not ubyte", "preprocess", f"{TRAIN_LABELS}: IDX data type 0x0d",
         write(TRAIN_LABELS, b"\x00\x00\x0d" + GOOD_LABELS[3:])),
    Case("data: images 28x27", "preprocess", f"{TRAIN_IMAGES}: images of shape (30, 28, 27), "
         "expected (N, 28, 28)", write(TRAIN_IMAGES, images(30, 28, 27))),
    Case("data: labels 2-D", "preprocess", f"{TRAIN_LABELS}: labels of shape (30, 1)",
         write(TRAIN_LABELS, idx.encode(np.zeros((30, 1), np.uint8)))),
    Case("data: image/label count mismatch", "preprocess",
         f"{TRAIN_LABELS}: 29 labels for the 30 images in {TRAIN_IMAGES}",
         write(TRAIN_LABELS, labels([1] * 29))),
    Case("data: label > 9", "preprocess", f"{TRAIN_LABELS}: label 10 at index 29, expected 0-9",
         write(TRAIN_LABELS, labels([1] * 29 + [10]))),
    Case("data: empty labels file", "preprocess", f"{TRAIN_LABELS}: not an IDX file: 0 bytes",
         write(TRAIN_LABELS, b"")),
    Case("data: no images", "preprocess", f"{TRAIN_IMAGES}: holds no images",
         both(write(TRAIN_IMAGES, images(0, 28, 28)), write(TRAIN_LABELS, labels([])))),
    Case("data: missing raw file", "preprocess", f"{TRAIN_LABELS}: not found",
         remove(TRAIN_LABELS)),
    # fetch, local source
    Case("data: corrupt gzip", "fetch", f"{GZ}.gz: corrupt gzip data",
         both(remove(GZ), write(f"{GZ}.gz", b"\x1f\x8b\x08\x00" + b"garbage" * 20))),
    Case("data: truncated gzip", "fetch", f"{GZ}.gz: gzip stream is truncated",
         both(remove(GZ), write(f"{GZ}.gz", gzip.compress(GOOD_LABELS)[:-20]))),
    Case("data: empty gzip", "fetch", f"{GZ}.gz: gzip stream is truncated",
         both(remove(GZ), write(f"{GZ}.gz", b""))),
    Case("data: checksum mismatch", "fetch", "train-images-idx3-ubyte: MD5 mismatch: expected "
         f"{mnist.OFFICIAL['train-images-idx3-ubyte'].md5}, got "
         f"{hashlib.md5(GOOD_IMAGES).hexdigest()}", param("fetch", "verify", True)),
    Case("data: local file missing", "fetch", "local: has neither train-labels-idx1-ubyte nor "
         "train-labels-idx1-ubyte.gz", remove(GZ)),
    # fetch, mirror source, against the loopback server
    Case("source: HTTP 404", "fetch", "/404/train-images-idx3-ubyte.gz: HTTP 404",
         mirrors("404"), FAST_LOOPBACK_NETWORK),
    Case("source: HTTP 500", "fetch", "/500/train-images-idx3-ubyte.gz: gave up after 2 "
         "attempts: HTTP 500", mirrors("500"), FAST_LOOPBACK_NETWORK),
    Case("source: connection refused", "fetch", "gave up after 2 attempts: cannot connect: "
         "[Errno 111] Connection refused", mirrors(":refused"), FAST_LOOPBACK_NETWORK),
    Case("source: stalled server", "fetch", "/stall/train-images-idx3-ubyte.gz: gave up after 2 "
         "attempts: cannot connect: timed out", mirrors("stall"), FAST_LOOPBACK_NETWORK),
    Case("source: redirect to plain http", "fetch", "http://example.invalid/mnist/file.gz: only "
         "https:// URLs are allowed", mirrors("redirect"), FAST_LOOPBACK_NETWORK),
    Case("source: oversize response", "fetch", "/huge/train-images-idx3-ubyte.gz: 40000000 "
         f"bytes is over the {32 << 20}-byte limit", mirrors("huge"), FAST_LOOPBACK_NETWORK),
    Case("source: every source fails", "fetch", "no source gave verified MNIST files; ",
         mirrors("404", ":refused", "stall", local="nowhere"), FAST_LOOPBACK_NETWORK,
         also=("/404/train-images-idx3-ubyte.gz: HTTP 404", "Connection refused",
               "/stall/train-images-idx3-ubyte.gz: gave up after 2 attempts",
               "local nowhere: nowhere: no such directory")),
    # prepared data, read by train and evaluate
    Case("prepared: not .npy", "train", "data/x_train.npy: not a .npy file",
         write("data/x_train.npy", b"PK\x03\x04 a zip, not an array")),
    Case("prepared: empty .npy", "train", "data/y_val.npy: not a .npy file (it starts empty)",
         write("data/y_val.npy", b"")),
    Case("prepared: NaN pixels", "train", "data/x_train.npy: pixels outside [0, 1] or not "
         "numbers", lambda proj, _: save_npy(proj / "data/x_train.npy",
                                             np.full((N_TRAIN, 784), np.nan, np.float32))),
    Case("prepared: missing", "evaluate", "data/x_test.npy: not found", remove("data/x_test.npy")),
    # the model, read by evaluate
    Case("model: garbage", "evaluate", "model.npz: not a model (.npz) file (it starts 676172",
         write("model.npz", b"garbage" * 10)),
    Case("model: truncated", "evaluate", "model.npz: not a readable model file",
         truncate("model.npz", 5000)),
    Case("model: empty", "evaluate", "model.npz: not a model (.npz) file (it starts empty)",
         write("model.npz", b"")),
    Case("model: pickled object array", "evaluate", "model.npz: not a readable model file: "
         "Object arrays cannot be loaded when allow_pickle=False", pickled_model),
    Case("model: architecture for other data", "evaluate", "model.npz: maps 100 inputs to 10 "
         "classes, data has 784", lambda proj, _: save_model(proj / "model.npz", [100, 10, 10])),
    Case("model: missing", "evaluate", "model.npz: not found", remove("model.npz")),
    # training
    Case("train: diverges to NaN", "train", "training diverged in epoch 1 (train loss nan)",
         param("train", "lr", 1e20), also=("try a train.lr below 1e+20",)),
    # where outputs go
    Case("output: a file where a directory goes", "train",
         "out/model.npz/model.npz: cannot write: out/model.npz is not a directory",
         lambda proj, _: None),
    Case("output: disk full (injected ENOSPC)", "train",
         "out/model.npz: cannot write: No space left on device", lambda proj, _: None,
         FULL_DISK),
]
ARGS = {"output: a file where a directory goes": (
    "--data", "data", "--model", "out/model.npz/model.npz", "--metrics", "out/train.json",
    "--history", "out/history.csv")}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(
    case: Case, project: Path, server: MisbehavingServer, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    record_property("expected", f"exit 1, one line: {' ... '.join((case.expected, *case.also))}")
    case.setup(project, server)
    before = tree(project)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_stage(project, case.stage, *ARGS.get(case.id, ()), prelude=case.prelude,
                       env={"TMPDIR": str(scratch)})
    record_property("got", f"exit {result.returncode}: {result.stderr.strip()[:1000]}")
    check_refused(result, case.expected, *case.also)
    assert tree(project) == before
    assert list(scratch.iterdir()) == []  # no temporary left behind either


def test_yaml_1_2_float_is_accepted(project: Path, record_property) -> None:
    record_property("expected", "exit 0, new model written")
    (project / "params.yaml").write_text(
        (project / "params.yaml").read_text().replace("lr: 0.1", "lr: 1e-3"))
    assert "lr: 1e-3" in (project / "params.yaml").read_text()
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lr"] == "1e-3"
    result = run_stage(project, "train")
    record_property("got", f"exit {result.returncode}")
    assert result.returncode == 0, result.stderr
    assert (project / "out/model.npz").read_bytes() != b"an older output\n"
    modelfile.load(project / "out/model.npz")


# ---------------------------------------------------------------------------- real file systems


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mounts small tmpfs file systems (root only); skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                 str(point)], capture_output=True, text=True, check=False)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


@pytest.fixture
def read_only(tmp_path: Path, tmpfs) -> Iterator[Callable[[Path], None]]:
    """Makes a directory read-only: by permissions, or for root (whom permissions do not stop)
    by remounting a tmpfs read-only. Writable again at teardown, so it can be cleaned up."""
    changed: list[Path] = []

    def make(point: Path) -> None:
        if os.geteuid() == 0:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        else:
            point.chmod(0o555)
            changed.append(point)

    yield make
    for point in changed:
        point.chmod(0o755)


def test_read_only_output_directory(project: Path, tmpfs, read_only, record_property) -> None:
    place = tmpfs("ro", "1m") if os.geteuid() == 0 else project / "ro"
    place.mkdir(exist_ok=True)
    shutil.copytree(project / "prepared", place / "prepared")
    read_only(place)
    expected = "ro/prepared: cannot write: "
    record_property("expected", f"exit 1, one line: {expected}...")
    before = tree(place)
    result = run_stage(project, "preprocess", "--raw", "raw", "--out", str(place / "prepared"))
    record_property("got", f"exit {result.returncode}: {result.stderr.strip()}")
    line = check_refused(result, expected)
    assert line.endswith(("Read-only file system", "Permission denied")), line
    assert tree(place) == before


def test_disk_full_output_directory(project: Path, tmpfs, record_property) -> None:
    """preprocess's arrays (about 100 KB) onto a 64 KB file system: ENOSPC part-way through,
    and the older output must survive whole."""
    place = tmpfs("full", "64k")
    shutil.copytree(project / "prepared", place / "prepared")
    expected = "cannot write: No space left on device"
    record_property("expected", f"exit 1, one line: ...npy: {expected}")
    before = tree(place)
    result = run_stage(project, "preprocess", "--raw", "raw", "--out", str(place / "prepared"))
    record_property("got", f"exit {result.returncode}: {result.stderr.strip()}")
    check_refused(result, expected)
    assert tree(place) == before


# ---------------------------------------------------------------------------- the product's code


def unsafe_calls(source: str) -> list[str]:
    """Calls that could run code from a file: pickle's loaders (a restricted Unpickler
    subclass is the one allowed use), any allow_pickle but a literal False and np.load
    without one, yaml's unsafe loaders, archive extraction that writes member paths
    unchecked, and eval/exec."""
    banned = {"pickle.load", "pickle.loads", "yaml.unsafe_load", "yaml.full_load",
              "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = f"{getattr(node.value, 'id', '')}.{node.attr}"
            if name in banned or node.attr in ("extractall", "extract"):
                found.append(f"line {node.lineno}: {name}")
        if not isinstance(node, ast.Call):
            continue
        flags = {keyword.arg: keyword.value for keyword in node.keywords}
        if "allow_pickle" in flags and not (isinstance(flags["allow_pickle"], ast.Constant)
                                            and flags["allow_pickle"].value is False):
            found.append(f"line {node.lineno}: allow_pickle is not False")
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "load"
                and getattr(func.value, "id", "") in ("np", "numpy")
                and "allow_pickle" not in flags):
            found.append(f"line {node.lineno}: np.load without allow_pickle=False")
        if getattr(func, "id", "") in ("eval", "exec"):
            found.append(f"line {node.lineno}: {func.id}")
    return found


@pytest.mark.parametrize("snippet", [
    "import numpy as np\nnp.load(path)",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
    "np.lib.format.read_array(handle, allow_pickle=flag)",
    "import pickle\npickle.loads(data)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "archive.extractall(directory)",
    "eval(text)",
])
def test_the_scanner_finds_unsafe_loading(snippet: str) -> None:
    assert unsafe_calls(snippet), snippet


def test_the_product_never_loads_unsafely() -> None:
    found = {path.name: unsafe_calls(path.read_text())
             for path in sorted((ROOT / "stages").glob("*.py"))}
    assert {name: calls for name, calls in found.items() if calls} == {}
    # The one unpickler is the restricted one, and it refuses everything but NumPy arrays.
    safe = (ROOT / "stages/safe_pickle.py").read_text()
    assert "def find_class" in safe
    users = [path.name for path in (ROOT / "stages").glob("*.py")
             if "pickle.Unpickler" in path.read_text()]
    assert users == ["safe_pickle.py"]


def test_committed_mirrors_are_https() -> None:
    mirror_urls = yaml.safe_load((ROOT / "params.yaml").read_text())["fetch"]["mirrors"]
    assert mirror_urls
    assert all(url.startswith("https://") for url in mirror_urls), mirror_urls


def test_full_disk_prelude_really_fails_writes(tmp_path: Path) -> None:
    # The injected ENOSPC must hit the write path the stages use, or the case above proves
    # nothing.
    code = (f"{FULL_DISK}\nfrom pathlib import Path\nfrom stages import files\n"
            f"files.write_all({{Path({str(tmp_path / 'x')!r}): b'y'}})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "No space left on device" in result.stderr
    assert list(tmp_path.iterdir()) == []
