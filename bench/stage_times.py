"""Wall time and peak memory of each pipeline stage, run as dvc.yaml runs it.

    python bench/stage_times.py [--repeats 3]

Run from the repository root after one `dvc repro` (the stages need their inputs). Each stage
command from dvc.yaml runs `--repeats` times in pipeline order; the table shows the median and
the spread, and the largest peak resident memory (max RSS) of any run. Outputs are rewritten
with the same bytes, so the workspace stays as it was.
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def run_command(command: str) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one run of `command`."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: it cannot fill and block
        started = time.perf_counter()
        # dvc.yaml says `python`: this interpreter, whether or not its venv is activated.
        args = [sys.executable if arg == "python" else arg for arg in shlex.split(command)]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)  # this child's rusage alone
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            errors.seek(0)
            raise SystemExit(f"{command} failed:\n{errors.read().decode()}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    print("| stage | median s | min s | max s | peak MB | runs |\n"
          "|---|---:|---:|---:|---:|---:|")
    total = 0.0
    for name, stage in stages.items():
        runs = [run_command(" ".join(stage["cmd"].split())) for _ in range(args.repeats)]
        seconds = [wall for wall, _ in runs]
        total += statistics.median(seconds)
        print(f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
              f"{max(seconds):.2f} | {max(peak for _, peak in runs):.0f} | {args.repeats} |",
              flush=True)
    print(f"| all four | {total:.2f} | | | | |")


if __name__ == "__main__":
    main()
