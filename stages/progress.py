"""A progress bar redrawn in place on a terminal, and silent elsewhere so logs stay plain."""

import sys
import time
from collections.abc import Callable

WIDTH = 30
REDRAW_SECONDS = 0.1  # a redraw per step would cost more than a small step itself


class Bar:
    def __init__(self, label: str, total: int, show: Callable[[int], str] = str) -> None:
        self.label, self.total, self.show = label, total, show
        self.live = sys.stderr.isatty() and total > 0
        self.drawn_at = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.live and (now - self.drawn_at >= REDRAW_SECONDS or done == self.total):
            self.drawn_at = now
            filled = WIDTH * done // self.total
            print(f"\r  {self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                  f"{self.show(done)}/{self.show(self.total)}", end="", file=sys.stderr)

    def close(self) -> None:
        """Clear the bar, so the line logged next starts on a clean line."""
        if self.live:
            print("\r\033[K", end="", file=sys.stderr)
