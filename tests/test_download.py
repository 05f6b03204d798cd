"""stages/download.py against HTTP servers on 127.0.0.1 that misbehave in scripted ways."""

import contextlib
import http.server
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stages.download import CHUNK, _SafeRedirects, download
from stages.errors import PipelineError
from stages.urls import check_url

CONTENT = bytes(range(256)) * 600 + b"tail"  # 153,604 bytes: several 64 KiB reads
FAST = {"timeout": 5.0, "backoff": 0.0}


# ---------------------------------------------------------------------------- the server

Handler = http.server.BaseHTTPRequestHandler
Respond = Callable[[Handler, int], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, and the body ends where the connection does.
    def do_GET(self) -> None:
        server: Server = self.server.owner  # type: ignore[attr-defined]
        with server.lock:
            number = len(server.requests)
            server.requests.append({k.lower(): v for k, v in self.headers.items()})
        # Some tests make the client give up on a response before the server is done.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            server.respond(self, number)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server:
    """A scripted server: `respond(handler, n)` answers the n-th request (from 0)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, str]] = []  # each request's headers, lower-cased names
        self.respond: Respond = full()
        self.release = threading.Event()  # set at teardown to end any stalled handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self  # type: ignore[attr-defined]

    def url(self, path: str = "/mnist/file.gz") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(
        target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join(5)


def send(handler: Handler, status: int, body: bytes = b"", *, length: int | None = None,
         headers: dict[str, str] | None = None) -> None:
    """Status, headers (Content-Length is len(body) unless `length` says otherwise; -1 leaves
    it out), then the body."""
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    length = len(body) if length is None else length
    if length >= 0:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


def full(content: bytes = CONTENT) -> Respond:
    """Always 200 with the whole body, whatever Range asked for."""
    return lambda h, n: send(h, 200, content)


def ranged(content: bytes = CONTENT) -> Respond:
    """Honours `Range: bytes=K-` with 206, and 416 when K is at or past the end."""

    def respond(h: Handler, n: int) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if not match:
            send(h, 200, content)
            return
        start = int(match[1])
        if start >= len(content):
            send(h, 416, headers={"Content-Range": f"bytes */{len(content)}"})
            return
        send(h, 206, content[start:],
             headers={"Content-Range": f"bytes {start}-{len(content) - 1}/{len(content)}"})

    return respond


def script(*responses: Respond) -> Respond:
    """Answer request n with responses[n]; the last one answers every later request."""
    return lambda h, n: responses[min(n, len(responses) - 1)](h, n)


def status(code: int) -> Respond:
    return lambda h, n: send(h, code, f"status {code}".encode())


def half_then_close(content: bytes = CONTENT) -> Respond:
    """Promise the whole body, send half, then hang up."""
    return lambda h, n: send(h, 200, content[: len(content) // 2], length=len(content))


def hang_up(h: Handler, n: int) -> None:
    """Close the connection without answering at all."""
    h.close_connection = True


def stall(server: Server, before: bytes = b"") -> Respond:
    """Send `before` as the start of a 200 body (nothing at all if empty), then go silent for
    up to 2 s: far past the client's timeout, and ended early at teardown."""

    def respond(h: Handler, n: int) -> None:
        if before:
            h.send_response(200)
            h.send_header("Content-Length", str(len(CONTENT)))
            h.end_headers()
            h.wfile.write(before)
            h.wfile.flush()
        server.release.wait(2.0)

    return respond


# ---------------------------------------------------------------------------- check_url


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/mnist/train.gz",
        "HTTPS://Example.COM/x",
        "http://127.0.0.1:8000/x",
        "http://localhost/x",
        "http://LOCALHOST:1/x",
        "http://[::1]:8080/x",
    ],
)
def test_check_url_allows_https_and_loopback_http(url: str) -> None:
    check_url(url)  # no exception


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/x",
        "ftp://127.0.0.1/x",
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://localhost.example.com/x",
        "http://127.0.0.1.example.com/x",
        "http://127.0.0.1@example.com/x",
        "//example.com/x",
        "example.com/x",
    ],
)
def test_check_url_refuses_everything_else(url: str) -> None:
    with pytest.raises(PipelineError) as caught:
        check_url(url)
    assert str(caught.value) == f"{url}: only https:// URLs are allowed"


def test_download_refuses_plain_http_before_any_lookup(
    tmp_path: Path, loopback_only: list[str]
) -> None:
    with pytest.raises(PipelineError, match="only https"):
        download("http://example.invalid/x", tmp_path / "f", max_bytes=10, **FAST)
    assert loopback_only == []
    assert not (tmp_path / "f").exists()


# ---------------------------------------------------------------------------- success


def test_download_writes_the_exact_bytes(
    tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "file.gz"
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=1, **FAST)
    assert dest.read_bytes() == CONTENT
    assert len(server.requests) == 1
    assert "range" not in server.requests[0]  # nothing to resume
    assert f"  file.gz: {len(CONTENT)} bytes" in capsys.readouterr().err


def test_download_follows_a_loopback_redirect(tmp_path: Path, server: Server) -> None:
    target = server.url("/real/file.gz")
    server.respond = script(lambda h, n: send(h, 302, headers={"Location": target}), full())
    dest = tmp_path / "file.gz"
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=1, **FAST)
    assert dest.read_bytes() == CONTENT
    assert len(server.requests) == 2


@pytest.mark.parametrize("target", ["http://example.invalid/x", "ftp://127.0.0.1/x"])
def test_download_refuses_a_redirect_off_https(
    tmp_path: Path, server: Server, loopback_only: list[str], target: str
) -> None:
    server.respond = script(lambda h, n: send(h, 302, headers={"Location": target}), full())
    with pytest.raises(PipelineError) as caught:
        download(server.url(), tmp_path / "f", max_bytes=len(CONTENT), attempts=3, **FAST)
    assert str(caught.value) == f"{target}: only https:// URLs are allowed"
    # refused at once, never retried, and the other host was never even looked up
    assert len(server.requests) == 1
    assert set(loopback_only) == {"127.0.0.1"}


def test_an_https_download_is_never_redirected_to_plain_http() -> None:
    # No TLS server here: the redirect rule is asked directly, as urllib asks it.
    request = urllib.request.Request("https://mirror.example/mnist/file.gz")
    with pytest.raises(PipelineError) as caught:
        _SafeRedirects().redirect_request(request, None, 302, "Found", {},
                                          "http://127.0.0.1:8080/admin?x=1")
    assert str(caught.value) == ("https://mirror.example/mnist/file.gz: refused a redirect to "
                                 "plain http://127.0.0.1:8080/admin?x=1")
    followed = _SafeRedirects().redirect_request(request, None, 302, "Found", {},
                                                 "https://other.example/file.gz")
    assert followed.full_url == "https://other.example/file.gz"


def test_a_malformed_location_fails_at_once_in_one_line(tmp_path: Path, server: Server) -> None:
    server.respond = lambda h, n: send(h, 302, headers={"Location": "http://[::1"})
    with pytest.raises(PipelineError) as caught:
        download(server.url(), tmp_path / "f", max_bytes=len(CONTENT), attempts=3, **FAST)
    assert str(caught.value).startswith(f"{server.url()}: malformed response: ")
    assert len(server.requests) == 1


def test_a_content_length_that_is_not_ascii_digits_counts_as_unknown(
    tmp_path: Path, server: Server
) -> None:
    # "\u00b2" (superscript two) passes str.isdigit() but not int().
    server.respond = lambda h, n: send(h, 200, CONTENT, length=-1,
                                       headers={"Content-Length": "\u00b2"})
    dest = tmp_path / "f"
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=1, **FAST)
    assert dest.read_bytes() == CONTENT


def test_a_trickling_body_hits_the_deadline(
    tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    def trickle(h: Handler, n: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(CONTENT)))
        h.end_headers()
        for byte in CONTENT:
            if server.release.wait(0.02):
                return
            h.wfile.write(bytes([byte]))
            h.wfile.flush()

    server.respond = trickle
    started = time.monotonic()
    with pytest.raises(PipelineError) as caught:
        download(server.url(), tmp_path / "f", max_bytes=len(CONTENT), attempts=3,
                 timeout=1.0, deadline=0.3, backoff=0)
    assert time.monotonic() - started < 1.5  # each byte comes well within the timeout
    assert re.fullmatch(rf"{re.escape(server.url())}: still downloading after 0.3 s "
                        r"\(\d+ bytes so far\)", str(caught.value))
    assert len(server.requests) == 1  # not retried
    assert "bytes" not in capsys.readouterr().err  # the byte count is logged for success only


# ---------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("code", [400, 403, 404, 410])
def test_download_gives_up_at_once_on_client_errors(
    tmp_path: Path, server: Server, code: int
) -> None:
    server.respond = status(code)
    with pytest.raises(PipelineError) as caught:
        download(server.url(), tmp_path / "f", max_bytes=10**6, attempts=4, **FAST)
    assert str(caught.value).startswith(f"{server.url()}: HTTP {code} ")
    assert len(server.requests) == 1


@pytest.mark.parametrize("code", [500, 502, 503, 408, 429])
def test_download_retries_server_errors_then_gives_up(
    tmp_path: Path, server: Server, code: int
) -> None:
    server.respond = status(code)
    with pytest.raises(PipelineError) as caught:
        download(server.url(), tmp_path / "f", max_bytes=10**6, attempts=3, **FAST)
    assert str(caught.value).startswith(f"{server.url()}: gave up after 3 attempts: HTTP {code} ")
    assert len(server.requests) == 3


def test_download_recovers_after_server_errors(tmp_path: Path, server: Server) -> None:
    server.respond = script(status(503), status(500), full())
    dest = tmp_path / "f"
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=3, **FAST)
    assert dest.read_bytes() == CONTENT
    assert len(server.requests) == 3


def test_download_backs_off_exponentially(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    server.respond = status(500)
    with pytest.raises(PipelineError, match="gave up after 4 attempts"):
        download(server.url(), tmp_path / "f", max_bytes=10, attempts=4, timeout=5, backoff=0.5)
    assert slept == [0.5, 1.0, 2.0]


# ---------------------------------------------------------------------------- network trouble


def test_download_reports_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f"
    with pytest.raises(PipelineError) as caught:
        download(url, tmp_path / "f", max_bytes=10, attempts=2, **FAST)
    message = str(caught.value)
    assert message.startswith(f"{url}: gave up after 2 attempts: cannot connect: ")
    assert "refused" in message.lower()


def test_download_times_out_on_a_silent_server(tmp_path: Path, server: Server) -> None:
    server.respond = stall(server)
    started = time.monotonic()
    with pytest.raises(PipelineError) as caught:
        download(server.url(), tmp_path / "f", max_bytes=10**6, attempts=2, timeout=0.3,
                 backoff=0)
    elapsed = time.monotonic() - started
    assert str(caught.value) == (
        f"{server.url()}: gave up after 2 attempts: cannot connect: timed out"
    )
    assert len(server.requests) == 2
    assert 0.5 < elapsed < 1.9  # two 0.3 s timeouts, not the server's 2 s stall


# The client writes whatever has arrived, up to CHUNK bytes at a time; a stall keeps every
# byte that came before it on disk, so a retry resumes right after them.
HEAD = CONTENT[: CHUNK + CHUNK // 2]


def test_download_times_out_mid_body_then_resumes(tmp_path: Path, server: Server) -> None:
    server.respond = script(stall(server, before=HEAD), ranged())
    dest = tmp_path / "f"
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=2, timeout=0.3, backoff=0)
    assert dest.read_bytes() == CONTENT
    assert server.requests[1]["range"] == f"bytes={len(HEAD)}-"


def test_download_gives_up_when_every_body_stalls(tmp_path: Path, server: Server) -> None:
    server.respond = stall(server, before=HEAD)
    dest = tmp_path / "f"
    with pytest.raises(PipelineError) as caught:
        download(server.url(), dest, max_bytes=len(CONTENT), attempts=2, timeout=0.3, backoff=0)
    # the second attempt sent Range but got a 200 again, so it restarted from zero
    assert str(caught.value) == (
        f"{server.url()}: gave up after 2 attempts: interrupted after {len(HEAD)} bytes: "
        "timed out")
    assert server.requests[1]["range"] == f"bytes={len(HEAD)}-"
    assert dest.read_bytes() == HEAD


@pytest.mark.parametrize("first", [half_then_close(), hang_up], ids=["half-body", "no-answer"])
@pytest.mark.parametrize("second", [full(), ranged()], ids=["full", "ranged"])
def test_download_retries_a_dropped_connection(
    tmp_path: Path, server: Server, first: Respond, second: Respond
) -> None:
    server.respond = script(first, second)
    dest = tmp_path / "f"
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=2, **FAST)
    assert dest.read_bytes() == CONTENT
    assert len(server.requests) == 2
    if first is hang_up:
        assert "range" not in server.requests[1]
    else:  # half the body was kept, so the retry asks for the rest
        assert server.requests[1]["range"] == f"bytes={len(CONTENT) // 2}-"


def test_download_reports_a_body_cut_short_every_time(tmp_path: Path, server: Server) -> None:
    server.respond = half_then_close()
    with pytest.raises(PipelineError) as caught:
        download(server.url(), tmp_path / "f", max_bytes=len(CONTENT), attempts=1, **FAST)
    half = len(CONTENT) // 2
    assert str(caught.value) == (
        f"{server.url()}: gave up after 1 attempts: connection closed after {half} of "
        f"{len(CONTENT)} bytes"
    )


# ---------------------------------------------------------------------------- size limits


def test_download_refuses_a_content_length_over_the_limit(tmp_path: Path, server: Server) -> None:
    server.respond = full()
    dest = tmp_path / "f"
    with pytest.raises(PipelineError) as caught:
        download(server.url(), dest, max_bytes=len(CONTENT) - 1, attempts=3, **FAST)
    assert str(caught.value) == (
        f"{server.url()}: {len(CONTENT)} bytes is over the {len(CONTENT) - 1}-byte limit"
    )
    assert len(server.requests) == 1
    assert not dest.exists()  # refused before a byte was written


def test_download_stops_a_stream_without_length_at_the_limit(
    tmp_path: Path, server: Server
) -> None:
    server.respond = lambda h, n: send(h, 200, CONTENT, length=-1)
    dest = tmp_path / "f"
    with pytest.raises(PipelineError) as caught:
        download(server.url(), dest, max_bytes=100_000, attempts=3, **FAST)
    assert str(caught.value) == f"{server.url()}: response exceeds the 100000-byte limit"
    assert len(server.requests) == 1
    assert dest.stat().st_size <= 100_000


def test_download_accepts_a_stream_without_length_of_exactly_the_limit(
    tmp_path: Path, server: Server
) -> None:
    server.respond = lambda h, n: send(h, 200, CONTENT, length=-1)
    dest = tmp_path / "f"
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=1, **FAST)
    assert dest.read_bytes() == CONTENT


def test_download_counts_the_resumed_part_against_the_limit(
    tmp_path: Path, server: Server
) -> None:
    server.respond = ranged()
    dest = tmp_path / "f"
    dest.write_bytes(CONTENT[:1000])
    with pytest.raises(PipelineError) as caught:
        download(server.url(), dest, max_bytes=len(CONTENT) - 1, attempts=1, **FAST)
    assert f"{len(CONTENT)} bytes is over the {len(CONTENT) - 1}-byte limit" in str(caught.value)


# ---------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("have", [1, 1000, len(CONTENT) - 1])
def test_download_resumes_a_partial_file_with_range(
    tmp_path: Path, server: Server, have: int
) -> None:
    server.respond = ranged()
    dest = tmp_path / "f"
    dest.write_bytes(CONTENT[:have])
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=1, **FAST)
    assert dest.read_bytes() == CONTENT
    assert [r.get("range") for r in server.requests] == [f"bytes={have}-"]


def test_download_restarts_when_the_server_ignores_range(tmp_path: Path, server: Server) -> None:
    server.respond = full()
    dest = tmp_path / "f"
    dest.write_bytes(b"stale bytes, not a prefix of the content")
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=1, **FAST)
    assert dest.read_bytes() == CONTENT  # replaced, not appended to
    assert server.requests[0]["range"] == "bytes=40-"


def test_download_restarts_when_the_range_starts_elsewhere(
    tmp_path: Path, server: Server
) -> None:
    # 206 but from byte 0: appending it would duplicate the first 1000 bytes.
    server.respond = lambda h, n: send(
        h, 206, CONTENT, headers={"Content-Range": f"bytes 0-{len(CONTENT) - 1}/{len(CONTENT)}"}
    )
    dest = tmp_path / "f"
    dest.write_bytes(CONTENT[:1000])
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=1, **FAST)
    assert dest.read_bytes() == CONTENT


def test_download_discards_a_range_it_did_not_ask_for(tmp_path: Path, server: Server) -> None:
    def wrong_range_then_whole(h: Handler, n: int) -> None:
        if n == 0:  # asked for bytes=1000-, answers from byte 500
            send(h, 206, CONTENT[500:],
                 headers={"Content-Range": f"bytes 500-{len(CONTENT) - 1}/{len(CONTENT)}"})
        else:
            send(h, 200, CONTENT)

    server.respond = wrong_range_then_whole
    dest = tmp_path / "f"
    dest.write_bytes(CONTENT[:1000])
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=2, **FAST)
    assert dest.read_bytes() == CONTENT
    assert [r.get("range") for r in server.requests] == ["bytes=1000-", None]


def test_download_starts_over_after_416(tmp_path: Path, server: Server) -> None:
    server.respond = ranged()
    dest = tmp_path / "f"
    dest.write_bytes(CONTENT + b"extra")  # longer than the file: the range is unsatisfiable
    download(server.url(), dest, max_bytes=len(CONTENT), attempts=2, **FAST)
    assert dest.read_bytes() == CONTENT
    assert [r.get("range") for r in server.requests] == [f"bytes={len(CONTENT) + 5}-", None]
