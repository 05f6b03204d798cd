"""Checks a freshly reproduced pipeline against what the repository commits.

    python .ci/check_repro.py            # after `dvc repro`: exit 1 with every failure listed
    python .ci/check_repro.py --record   # write .ci/machine.txt for the committed dvc.lock

fetch and preprocess must reproduce exactly everywhere. train and evaluate must reproduce
exactly on the machine recorded in .ci/machine.txt (same CPU, NumPy, SIMD, BLAS kernels and
thread count), and within TOLERANCE test accuracy anywhere else: BLAS kernels differ between
CPUs and thread counts and round differently, and SGD carries the difference forward.
"""

import argparse
import ctypes
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from stages.mnist import OFFICIAL

# params.yaml's defaults promise this much on the official test set.
ACCURACY_BAR = 0.93
# Training is exact on one machine; another CPU's BLAS kernels round differently.
TOLERANCE = 0.002
MACHINE_FILE = ".ci/machine.txt"
MODEL = "models/model.npz"
RECORD_HEADER = """\
# The machine that produced the committed dvc.lock, written by `python .ci/check_repro.py
# --record`. Where the fingerprint below matches, CI compares the train and evaluate outputs
# byte for byte; elsewhere, test accuracy within a tolerance.
"""


def committed(path: str) -> bytes:
    """The file as HEAD has it; empty if HEAD has no such file."""
    result = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, check=False)
    return result.stdout if result.returncode == 0 else b""


def code_and_params(lock_entry: dict) -> tuple[list, dict]:
    code = [dep for dep in lock_entry.get("deps", []) if dep["path"].startswith("stages/")]
    return code, lock_entry.get("params", {})


def model_md5(lock: dict) -> str:
    return next(out["md5"] for out in lock["train"]["outs"] if out["path"] == MODEL)


# ---------------------------------------------------------------------------- the machine


def fingerprint() -> dict[str, str]:
    """What decides which floating-point kernels this process runs, and so the model's bits."""
    return {
        "cpu": _cpu_model(),
        "numpy": np.__version__,
        "simd": " ".join(np.show_config(mode="dicts")["SIMD Extensions"]["found"]),
        **_blas(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> dict[str, str]:
    """OpenBLAS's build, the kernels it picked for this CPU and its thread count, asked of the
    library NumPy loaded; the build alone where that cannot be asked."""
    build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    libs = Path(np.__file__).parent.parent / "numpy.libs"
    for path in sorted(libs.glob("libscipy_openblas*")):
        lib = ctypes.CDLL(str(path))
        suffix = "64_" if "openblas64" in path.name else ""
        get = {name: getattr(lib, f"scipy_openblas_get_{name}{suffix}", None)
               for name in ("config", "corename", "num_threads")}
        if all(get.values()):
            get["config"].restype = get["corename"].restype = ctypes.c_char_p
            return {"blas": f"{get['config']().decode()} ({get['corename']().decode()} kernels)",
                    "blas threads": str(get["num_threads"]())}
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return {"blas": f"{build['name']} {build['version']}",
            "blas threads": threads or str(os.cpu_count())}


def machine_record(machine: dict[str, str], md5: str) -> str:
    lines = [f"model md5: {md5}", *(f"{key}: {value}" for key, value in machine.items())]
    return RECORD_HEADER + "\n".join(lines) + "\n"


def parse_machine_record(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines()
             if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def same_machine(recorded: dict[str, str], machine: dict[str, str], md5: str) -> bool:
    """True when `recorded` vouches for the model `md5` and describes this machine."""
    return recorded.get("model md5") == md5 and {
        key: value for key, value in recorded.items() if key != "model md5"} == machine


def record() -> int:
    """Retrain with the committed command and params into a scratch directory; write the
    record only if this machine gives the very model dvc.lock holds."""
    lock = yaml.safe_load(Path("dvc.lock").read_text())["stages"]
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            [sys.executable, "-m", "stages.train", "--data", "data/prepared", "--model",
             f"{scratch}/model.npz", "--metrics", f"{scratch}/train.json", "--history",
             f"{scratch}/history.csv"], capture_output=True, text=True, check=False)
        if result.returncode:
            print(f"FAIL: the train stage exited {result.returncode}:\n{result.stderr}")
            return 1
        trained = hashlib.md5(Path(scratch, "model.npz").read_bytes()).hexdigest()
    if trained != model_md5(lock):
        print(f"FAIL: this machine trains model md5 {trained}, dvc.lock holds "
              f"{model_md5(lock)}; run dvc repro first, or record on the machine that did")
        return 1
    Path(MACHINE_FILE).write_text(machine_record(fingerprint(), trained))
    print(f"wrote {MACHINE_FILE}: {fingerprint()}")
    return 0


# ---------------------------------------------------------------------------- the check


def main() -> int:
    failures = []
    reproduced = json.loads(Path("metrics/metrics.json").read_text())
    expected = json.loads(committed("metrics/metrics.json"))
    got, want = reproduced["test"]["accuracy"], expected["test"]["accuracy"]
    print(f"reproduced test accuracy {got:.4f} (committed {want:.4f}), "
          f"loss {reproduced['test']['loss']:.4f}")
    if got < ACCURACY_BAR:
        failures.append(f"test accuracy {got:.4f} is below the bar {ACCURACY_BAR}")

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

    recorded = parse_machine_record(committed(MACHINE_FILE).decode())
    machine = fingerprint()
    if same_machine(recorded, machine, model_md5(lock_then)):
        print(f"same machine as {MACHINE_FILE}: train and evaluate compared exactly")
        failures += exact_differences(lock_now, lock_then)
    else:
        print(f"not the machine in {MACHINE_FILE} ({why_not(recorded, machine, lock_then)}): "
              f"test accuracy compared within {TOLERANCE}")
        if abs(got - want) > TOLERANCE:
            failures.append(f"test accuracy {got:.4f} differs from the committed {want:.4f} "
                            f"by more than {TOLERANCE}")

    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def exact_differences(lock_now: dict, lock_then: dict) -> list[str]:
    failures = [f"dvc.lock: {stage} outputs differ from the committed ones on the machine "
                f"that produced them" for stage in ("train", "evaluate")
                if lock_now[stage]["outs"] != lock_then[stage]["outs"]]
    tracked = subprocess.run(["git", "ls-files", "metrics"], capture_output=True, text=True,
                             check=True).stdout.split()
    failures += [f"{path}: differs from the committed bytes" for path in tracked
                 if Path(path).read_bytes() != committed(path)]
    return failures


def why_not(recorded: dict[str, str], machine: dict[str, str], lock_then: dict) -> str:
    if not recorded:
        return "none recorded"
    if recorded.get("model md5") != model_md5(lock_then):
        return "the record is for another dvc.lock"
    return "; ".join(f"{key} {machine.get(key)!r}, recorded {value!r}"
                     for key, value in recorded.items()
                     if key != "model md5" and machine.get(key) != value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true",
                        help=f"write {MACHINE_FILE} for this machine and the current dvc.lock")
    sys.exit(record() if parser.parse_args().record else main())
