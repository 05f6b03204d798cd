"""Which URLs the project will fetch from."""

from urllib.parse import urlsplit

from stages.errors import PipelineError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_url(url: str) -> None:
    """Only HTTPS, except plain HTTP to this machine (which is how tests serve files)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as err:
        raise PipelineError(f"{url}: not a valid URL: {err}") from err
    if not host or not (parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK)):
        raise PipelineError(f"{url}: only https:// URLs are allowed")
