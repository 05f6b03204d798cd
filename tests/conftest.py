import os
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With NO_SKIPS set, as CI sets it, a skipped test fails the run: CI has chromium, a
    tmpfs, NumPy's OpenBLAS and the trained model, so a skip there is a test that silently
    stopped testing."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("NO_SKIPS") and skipped:
        reporter.write_line(f"NO_SKIPS is set and {len(skipped)} test(s) skipped", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
