"""Checks a freshly reproduced pipeline against what the repository commits.

Run from the root of a clone after `dvc repro`. Exits 1 with every failure listed.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from stages.mnist import OFFICIAL

# params.yaml's defaults promise this much on the official test set.
ACCURACY_BAR = 0.93
# Training is exact on one machine; another CPU's BLAS kernels round differently.
TOLERANCE = 0.002


def committed(path: str) -> str:
    return subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


def code_and_params(lock_entry: dict) -> tuple[list, dict]:
    code = [dep for dep in lock_entry.get("deps", []) if dep["path"].startswith("stages/")]
    return code, lock_entry.get("params", {})


def main() -> int:
    failures = []
    reproduced = json.loads(Path("metrics/metrics.json").read_text())
    expected = json.loads(committed("metrics/metrics.json"))
    got, want = reproduced["test"]["accuracy"], expected["test"]["accuracy"]
    print(f"reproduced test accuracy {got:.4f} (committed {want:.4f}), "
          f"loss {reproduced['test']['loss']:.4f}")
    if got < ACCURACY_BAR:
        failures.append(f"test accuracy {got:.4f} is below the bar {ACCURACY_BAR}")
    if abs(got - want) > TOLERANCE:
        failures.append(f"test accuracy {got:.4f} differs from the committed {want:.4f} "
                        f"by more than {TOLERANCE}")

    md5s = {name: hashlib.md5(Path("data/raw", name).read_bytes()).hexdigest()
            for name in OFFICIAL}
    failures += [f"data/raw/{name}: MD5 {md5}, published {OFFICIAL[name].md5}"
                 for name, md5 in md5s.items() if md5 != OFFICIAL[name].md5]
    print("data/raw MD5s equal the published ones:",
          all(md5 == OFFICIAL[name].md5 for name, md5 in md5s.items()))

    lock_now = yaml.safe_load(Path("dvc.lock").read_text())["stages"]
    lock_then = yaml.safe_load(committed("dvc.lock"))["stages"]
    for stage in lock_now:
        # Code and params hash the same on every machine: a difference means the committed
        # dvc.lock is stale (code or params.yaml changed without a `dvc repro`).
        if code_and_params(lock_now[stage]) != code_and_params(lock_then.get(stage, {})):
            failures.append(f"dvc.lock: {stage} code or params differ from the committed "
                            f"ones; run dvc repro and commit dvc.lock")
    for stage in ("fetch", "preprocess"):
        if lock_now[stage]["outs"] != lock_then[stage]["outs"]:
            failures.append(f"dvc.lock: {stage} outputs differ from the committed ones")
    print("dvc.lock code, params and data outputs equal the committed ones:",
          not any("dvc.lock" in f for f in failures))

    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
