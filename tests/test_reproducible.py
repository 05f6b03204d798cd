"""Exact reproducibility: the pipeline run twice, in two repositories built apart from each
other, gives byte-identical data, model, metrics and dvc.lock; another train.seed gives another
model; and no output depends on the clock.

The synthetic data and repository layout come from tests/test_pipeline.py; the data lives
inside each repository (`data/external/mnist`, the default `fetch.local_dir`), so the two
params.yaml files are identical too.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline import PROJECT, Repo, init_project, isolated_env, run, write_synthetic

# Everything DVC or git tracks that a stage writes, plus the lock that records it.
TRACKED_OUTPUTS = ("data/raw", "data/prepared", "models", "metrics", "dvc.lock")
TRAIN_ARGS = ("--data", "data/prepared", "--model", "{out}/model.npz", "--metrics",
              "{out}/train.json", "--history", "{out}/history.csv")


def run_stage(repo: Repo, *args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """A stage module run as `python -m`, after `prelude` (Python) has run."""
    code = f"import runpy, sys\n{prelude}\nrunpy.run_module(sys.argv.pop(1), " \
           f"run_name='__main__', alter_sys=True)"
    return run([sys.executable, "-c", code, *args], repo.path, repo.env)


def build_repo(scratch: Path, epochs: int = 3) -> Repo:
    """A git + DVC repository at scratch/repo with this project's stages, dvc.yaml and
    params.yaml, set to read the synthetic data unverified; committed, not yet reproduced."""
    repo = Repo(scratch / "repo", isolated_env(scratch))
    init_project(repo.path, repo.env, {
        "fetch": {"sources": ["local"], "local_dir": "data/external/mnist", "verify": False},
        "preprocess": {"val_size": 100},
        "train": {"epochs": epochs, "batch_size": 32},
    }, gitignore="__pycache__/\n/data/external/\n")
    write_synthetic(repo.path / "data/external/mnist")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "pipeline on synthetic data")
    return repo


def snapshot(root: Path, paths: tuple[str, ...] = TRACKED_OUTPUTS) -> dict[str, str]:
    """SHA-256 of every file under `paths` (relative to `root`), by relative path."""
    digests = {}
    for name in paths:
        top = root / name
        for path in sorted([top] if top.is_file() else top.rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repo, Repo]:
    # Different depths and names, so a path leaking into an output would show.
    first = build_repo(tmp_path_factory.mktemp("first"))
    second = build_repo(tmp_path_factory.mktemp("second") / "elsewhere" / "deeper")
    first.dvc("repro")
    second.dvc("repro")
    return first, second


def test_two_repositories_give_byte_identical_outputs(two_runs: tuple[Repo, Repo]) -> None:
    first, second = two_runs
    outputs = snapshot(first.path)
    # Every stage wrote something, so the comparison below covers all four.
    for name in ("data/raw/train-images-idx3-ubyte", "data/prepared/x_train.npy",
                 "models/model.npz", "metrics/train.json", "metrics/metrics.json",
                 "metrics/predictions.csv", "dvc.lock"):
        assert name in outputs, sorted(outputs)
    assert snapshot(second.path) == outputs


def test_another_seed_gives_another_model_and_the_same_data(two_runs: tuple[Repo, Repo]) -> None:
    _, repo = two_runs
    before = snapshot(repo.path)
    params_file = repo.path / "params.yaml"
    text = params_file.read_text()
    params = yaml.safe_load(text)
    params["train"]["seed"] += 1
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        repo.dvc("repro")
        after = snapshot(repo.path)
    finally:
        params_file.write_text(text)
        repo.dvc("repro")  # back to the first seed (from the DVC cache)
    changed = {name for name in before if after.get(name) != before[name]}
    assert "models/model.npz" in changed
    assert "metrics/train.json" in changed
    assert not {name for name in changed if name.startswith("data/")}
    assert snapshot(repo.path) == before


def test_tracked_outputs_never_hold_timings(two_runs: tuple[Repo, Repo]) -> None:
    repo, _ = two_runs
    for name in ("metrics/train.json", "metrics/metrics.json"):
        keys = json.dumps(json.loads((repo.path / name).read_text())).lower()
        assert not any(word in keys for word in ("time", "second", "duration", "elapsed")), name
    header = (repo.path / "metrics/history.csv").read_text().splitlines()[0].lower()
    assert not any(word in header for word in ("time", "second", "duration")), header


# A clock that jumps a day ahead on every reading: an output that held any timing or
# timestamp would differ from the one written under the real clock.
WARPED_CLOCK = """
import itertools, time
days = itertools.count(1)
for name in ("time", "perf_counter", "monotonic", "process_time"):
    setattr(time, name, lambda real=getattr(time, name): real() + 86400.0 * next(days))
"""


def test_outputs_do_not_depend_on_the_clock(two_runs: tuple[Repo, Repo]) -> None:
    repo, _ = two_runs
    out = repo.path / "warped"
    try:
        run_stage(repo, "stages.train", *(arg.format(out="warped") for arg in TRAIN_ARGS),
                   prelude=WARPED_CLOCK)
        run_stage(repo, "stages.evaluate", "--data", "data/prepared", "--model", "warped/model.npz",
                   "--out", "warped", prelude=WARPED_CLOCK)
        run_stage(repo, "stages.preprocess", "--raw", "data/raw", "--out", "warped/prepared",
                   prelude=WARPED_CLOCK)
        warped = {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    real = {path.name: path.read_bytes()
            for top in ("models", "metrics", "data/prepared")
            for path in (repo.path / top).iterdir() if path.is_file()}
    assert sorted(warped) == sorted(name for name in real if name != ".gitignore")
    for name, data in warped.items():
        assert data == real[name], name


# ---------------------------------------------------------------------------- CI machine record


def load_check_repro():
    spec = importlib.util.spec_from_file_location("check_repro", PROJECT / ".ci/check_repro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fingerprint_in_subprocess(**env: str) -> dict[str, str]:
    code = ("import json, runpy; print(json.dumps(runpy.run_path('.ci/check_repro.py')"
            "['fingerprint']()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                            text=True, env={**os.environ, **env}, check=True)
    return json.loads(result.stdout)


def test_machine_fingerprint_names_what_decides_the_kernels() -> None:
    check_repro = load_check_repro()
    here = check_repro.fingerprint()
    assert set(here) == {"cpu", "numpy", "simd", "blas", "blas threads"}
    assert here["numpy"] == __import__("numpy").__version__
    assert fingerprint_in_subprocess() == here
    # One BLAS thread splits matrix products differently from two: another machine, as far
    # as exact comparison goes.
    one_thread = fingerprint_in_subprocess(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    assert one_thread["blas threads"] == "1"
    if here["blas threads"] != "1":
        assert one_thread != here


def test_machine_record_applies_only_to_the_lock_it_was_written_with(tmp_path: Path) -> None:
    check_repro = load_check_repro()
    here = check_repro.fingerprint()
    record = check_repro.machine_record(here, "0123abcd")
    assert record.endswith("\n")
    parsed = check_repro.parse_machine_record(record)
    assert check_repro.same_machine(parsed, here, "0123abcd")
    assert not check_repro.same_machine(parsed, here, "ffff0000")  # a newer lock: stale record
    assert not check_repro.same_machine(parsed, {**here, "blas threads": "64"}, "0123abcd")
    assert not check_repro.same_machine({}, here, "0123abcd")  # nothing recorded
