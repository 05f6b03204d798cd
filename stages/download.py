"""HTTPS downloads that stream to disk, time out, retry, resume, and refuse to grow unbounded."""

import http.client
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from stages.errors import PipelineError
from stages.progress import Bar
from stages.urls import check_url

CHUNK = 1 << 16


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl)
        # Plain HTTP is allowed only to this machine, and only where the download began so:
        # an HTTPS mirror must not send requests to local services.
        if urlsplit(req.full_url).scheme == "https" and urlsplit(newurl).scheme != "https":
            raise PipelineError(f"{req.full_url}: refused a redirect to plain {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_SafeRedirects)


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    timeout: float = 30.0,
    deadline: float = 600.0,
    attempts: int = 4,
    backoff: float = 1.0,
) -> None:
    """Fetch `url` into `dest`, resuming a partial `dest` with a Range request when the
    server allows it and restarting from zero when it does not. `timeout` bounds each wait
    for the server, `deadline` each attempt's body: a server that trickles a byte at a time
    never trips the first."""
    check_url(url)
    last_error = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _transfer(url, dest, max_bytes, timeout, deadline)
            return
        except _RetryableError as err:
            last_error = str(err)
    raise PipelineError(f"{url}: gave up after {attempts} attempts: {last_error}")


class _RetryableError(Exception):
    pass


def _transfer(url: str, dest: Path, max_bytes: int, timeout: float, deadline: float) -> None:
    ends = time.monotonic() + deadline
    have = dest.stat().st_size if dest.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = _opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is complete or bogus: start over
            dest.unlink()
            raise _RetryableError("HTTP 416, restarting") from err
        if err.code >= 500 or err.code in (408, 429):
            raise _RetryableError(f"HTTP {err.code} {err.reason}") from err
        raise PipelineError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise _RetryableError(f"cannot connect: {reason}") from err
    except ValueError as err:  # a header urllib cannot parse, such as a malformed Location
        raise PipelineError(f"{url}: malformed response: {err}") from err
    with response:
        start = _range_start(response) if response.status == 206 else 0
        if start not in (0, have):
            # A range we did not ask for: its bytes cannot be placed, so start clean.
            dest.unlink(missing_ok=True)
            raise _RetryableError(f"server sent bytes from {start}, not from {have}")
        mode, done = ("ab", have) if start else ("wb", 0)
        total = _total_size(response, done)
        if total is not None and total > max_bytes:
            raise PipelineError(f"{url}: {total} bytes is over the {max_bytes}-byte limit")
        label = urlsplit(url).path.rsplit("/", 1)[-1]
        progress = Bar(label, total or 0, show=lambda n: f"{n / 1e6:.1f} MB")
        try:
            with open(dest, mode) as out:
                # read1 returns what has arrived, so the deadline is checked however slowly
                # the bytes come.
                while chunk := response.read1(CHUNK):
                    done += len(chunk)
                    if done > max_bytes:
                        raise PipelineError(f"{url}: response exceeds the {max_bytes}-byte limit")
                    if time.monotonic() > ends:
                        raise PipelineError(f"{url}: still downloading after {deadline:g} s "
                                            f"({done} bytes so far)")
                    out.write(chunk)
                    progress.update(done)
        except (OSError, http.client.HTTPException) as err:
            raise _RetryableError(f"interrupted after {done} bytes: {err}") from err
        finally:
            progress.close()
    if total is not None and done != total:
        raise _RetryableError(f"connection closed after {done} of {total} bytes")
    print(f"  {label}: {done} bytes", file=sys.stderr)


def _range_start(response) -> int:
    # "bytes 100-199/200" -> 100
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _total_size(response, already: int) -> int | None:
    length = response.headers.get("Content-Length")
    # isdigit() alone takes "²" too, which int() refuses.
    return already + int(length) if length and length.isascii() and length.isdigit() else None
