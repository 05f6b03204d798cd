"""The one error type a stage reports to its user, and the guard that reports it."""

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """Bad input or an unusable source: the message is the whole story, no traceback."""


def run_stage(main: Callable[[], None], memory_hint: str = "") -> None:
    """Run a stage's main; turn a PipelineError, or running out of memory (followed by
    `memory_hint`, what the user can change), into one line on stderr and exit 1."""
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except MemoryError as err:
        hint = f"; {memory_hint}" if memory_hint else ""
        print(f"error: out of memory ({err}){hint}", file=sys.stderr)
        sys.exit(1)
