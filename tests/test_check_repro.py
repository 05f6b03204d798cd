"""The CI check itself (.ci/check_repro.py): what passes the build and what fails it, on a
scratch repository holding a committed and a reproduced state."""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_pipeline import Repo, isolated_env
from test_reproducible import load_check_repro

MACHINE = {"cpu": "Test CPU", "numpy": "1.0", "simd": "none", "blas": "test", "blas threads": "2"}
RAW = {"images": b"raw images", "labels": b"raw labels"}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def lock(code: str = "c0de", model: str = "0de1", prepared: str = "da7a") -> dict:
    """A dvc.lock with the fields the check reads: code deps, params and outputs."""
    def stage(outs: list[dict]) -> dict:
        return {"deps": [{"path": "stages/x.py", "md5": code}], "params": {"p": 1}, "outs": outs}

    return {"schema": "2.0", "stages": {
        "fetch": stage([{"path": "data/raw", "md5": "fe7c"}]),
        "preprocess": stage([{"path": "data/prepared", "md5": prepared}]),
        "train": stage([{"path": "models/model.npz", "md5": model}]),
        "evaluate": stage([{"path": "metrics/metrics.json", "md5": "e7a1"}]),
    }}


def write_state(root: Path, accuracy: float, dvc_lock: dict, record: str | None = None) -> None:
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/metrics.json").write_text(
        json.dumps({"test": {"accuracy": accuracy, "loss": 0.2}}))
    (root / "dvc.lock").write_text(yaml.safe_dump(dvc_lock, sort_keys=False))
    if record is not None:
        (root / ".ci").mkdir(exist_ok=True)
        (root / ".ci/machine.txt").write_text(record)


def commit(repo: Repo, *paths: str) -> None:
    repo.git("add", *paths)
    repo.git("commit", "-q", "-m", "state")


@pytest.fixture
def check(tmp_path, monkeypatch):
    """(check_repro, repo): a git repository, the working directory, committed with accuracy
    0.9452, and the module pointed at it, its raw files and a fixed machine."""
    check_repro = load_check_repro()
    monkeypatch.setattr(check_repro, "OFFICIAL",
                        {name: SimpleNamespace(md5=md5(data)) for name, data in RAW.items()})
    monkeypatch.setattr(check_repro, "fingerprint", lambda: MACHINE)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw").mkdir(parents=True)
    for name, data in RAW.items():
        (tmp_path / "data/raw" / name).write_bytes(data)
    write_state(tmp_path, 0.9452, lock())
    repo = Repo(tmp_path, isolated_env(tmp_path / "scratch"))
    repo.git("init", "-q")
    commit(repo, "metrics", "dvc.lock")
    return check_repro, repo


def verdict(check_repro, capsys) -> tuple[int, list[str]]:
    status = check_repro.main()
    return status, [line for line in capsys.readouterr().out.splitlines()
                    if line.startswith("FAIL")]


def test_a_faithful_reproduction_passes(check, capsys):
    check_repro, _ = check
    assert verdict(check_repro, capsys) == (0, [])


def test_accuracy_below_the_bar_fails_even_when_committed(check, capsys):
    check_repro, repo = check
    write_state(repo.path, 0.9299, lock())
    commit(repo, "metrics")
    status, failures = verdict(check_repro, capsys)
    assert status == 1
    assert failures == ["FAIL: test accuracy 0.9299 is below the bar 0.93"]


def test_elsewhere_accuracy_must_stay_within_the_tolerance(check, capsys):
    check_repro, repo = check
    write_state(repo.path, 0.9452 - 0.0015, lock(model="other"))  # another machine's model
    assert verdict(check_repro, capsys) == (0, [])
    write_state(repo.path, 0.9452 - 0.0025, lock(model="other"))
    status, failures = verdict(check_repro, capsys)
    assert status == 1
    assert failures == ["FAIL: test accuracy 0.9427 differs from the committed 0.9452 by "
                        "more than 0.002"]


def test_a_stale_lock_or_other_data_fails(check, capsys):
    check_repro, repo = check
    write_state(repo.path, 0.9452, lock(code="new", prepared="other"))
    status, failures = verdict(check_repro, capsys)
    assert status == 1
    assert failures == [
        f"FAIL: dvc.lock: {stage} code or params differ from the committed ones; run dvc "
        "repro and commit dvc.lock" for stage in ("fetch", "preprocess", "train", "evaluate")
    ] + ["FAIL: dvc.lock: preprocess outputs differ from the committed ones"]


def test_raw_files_must_match_the_published_md5s(check, capsys):
    check_repro, repo = check
    (repo.path / "data/raw/labels").write_bytes(b"tampered")
    status, failures = verdict(check_repro, capsys)
    assert status == 1
    assert failures == [f"FAIL: data/raw/labels: MD5 {md5(b'tampered')}, published "
                        f"{md5(RAW['labels'])}"]


def test_on_the_recorded_machine_outputs_must_match_byte_for_byte(check, capsys):
    check_repro, repo = check
    write_state(repo.path, 0.9452, lock(), record=check_repro.machine_record(MACHINE, "0de1"))
    commit(repo, ".ci")
    assert verdict(check_repro, capsys) == (0, [])
    # Within the tolerance, but not the same bits: on this machine that is a failure.
    write_state(repo.path, 0.9451, lock(model="other"))
    status, failures = verdict(check_repro, capsys)
    assert status == 1
    assert failures == [
        "FAIL: dvc.lock: train outputs differ from the committed ones on the machine that "
        "produced them",
        "FAIL: metrics/metrics.json: differs from the committed bytes"]
