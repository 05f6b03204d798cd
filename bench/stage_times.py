"""Wall time of each pipeline stage, run as dvc.yaml runs it.

    python bench/stage_times.py [--repeats 3]

Run from the repository root after one `dvc repro` (the stages need their inputs). Each stage
command from dvc.yaml runs `--repeats` times in pipeline order; the table shows the median and
the spread. Outputs are rewritten with the same bytes, so the workspace stays as it was.
"""

import argparse
import shlex
import statistics
import subprocess
import time
from pathlib import Path

import yaml


def time_command(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(shlex.split(command), check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    print("| stage | median s | min s | max s | runs |\n|---|---:|---:|---:|---:|")
    total = 0.0
    for name, stage in stages.items():
        seconds = [time_command(" ".join(stage["cmd"].split())) for _ in range(args.repeats)]
        total += statistics.median(seconds)
        print(f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
              f"{max(seconds):.2f} | {args.repeats} |", flush=True)
    print(f"| all four | {total:.2f} | | | |")


if __name__ == "__main__":
    main()
