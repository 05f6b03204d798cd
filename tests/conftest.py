import socket

import pytest

from stages.urls import LOOPBACK


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail any name lookup that is not for this machine, so no test can reach the network.
    Returns the hosts looked up, for tests that assert nothing else was."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def guarded(host: str, *args: object, **kwargs: object) -> object:
        looked_up.append(host)
        if host not in LOOPBACK:
            raise OSError(f"test refused to look up {host}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return looked_up
