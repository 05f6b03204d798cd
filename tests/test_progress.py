import io

import pytest

from stages import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_bar_redrawn_then_cleared(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(progress.sys, "stderr", screen)
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    bar = progress.Bar("epoch 1/3", 200, show=lambda n: f"{n} rows")
    bar.update(50)
    bar.update(200)
    bar.close()
    frames = screen.getvalue().split("\r")
    assert frames[1] == f"  epoch 1/3 [{'#' * 7}{'.' * 23}] 50 rows/200 rows"
    assert frames[2] == f"  epoch 1/3 [{'#' * 30}] 200 rows/200 rows"
    assert frames[3] == "\033[K"


def test_redraws_are_rate_limited_but_the_last_always_shows(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(progress.sys, "stderr", screen)
    bar = progress.Bar("x", 1000)
    for done in range(1, 1001):
        bar.update(done)
    drawn = screen.getvalue().split("\r")[1:]
    assert 1 <= len(drawn) < 10
    assert drawn[-1].endswith("1000/1000")


@pytest.mark.parametrize(("stream", "total"), [(Terminal, 0), (io.StringIO, 100)])
def test_logs_and_unknown_totals_get_no_bar(monkeypatch, stream, total):
    log = stream()
    monkeypatch.setattr(progress.sys, "stderr", log)
    bar = progress.Bar("x", total)
    bar.update(total)
    bar.close()
    assert log.getvalue() == ""
