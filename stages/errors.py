"""The one error type a stage reports to its user, and the guard that reports it."""

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """Bad input or an unusable source: the message is the whole story, no traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; turn a PipelineError into one line on stderr and exit 1."""
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except MemoryError as err:
        print(f"error: out of memory ({err}); a smaller train.hidden or batch needs less",
              file=sys.stderr)
        sys.exit(1)
