"""A sweep as the README runs it: two experiments queued with `dvc exp run --queue`, run by
two workers with `dvc queue start -j 2` (BLAS limited to one thread each), and both found in
`dvc exp show --json` with their params and metrics. The data is synthetic, added with
`dvc add` and committed: a worker runs the whole pipeline in a clean copy of the commit."""

import json
import time
from pathlib import Path

from test_own_data import scratch_repo, write_idx_dir
from test_pipeline import Repo

HIDDEN = ([4], [12])
QUEUE_TIMEOUT = 180  # seconds; the whole test takes about 20 on a 2-core machine


def wait_for_queue(scratch: Repo) -> str:
    """`dvc queue status` once nothing is queued or running any more."""
    deadline = time.monotonic() + QUEUE_TIMEOUT
    while time.monotonic() < deadline:
        status = scratch.dvc("queue", "status").stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(1)
    raise AssertionError(f"the queue did not finish in {QUEUE_TIMEOUT} s:\n{status}")


def experiments(shown: list[dict]) -> dict[str, dict]:
    """{experiment name: its data} from `dvc exp show --json`."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def test_a_queued_sweep_runs_in_two_workers_and_shows_both(tmp_path: Path) -> None:
    scratch = scratch_repo(tmp_path, "data/local/digits")
    write_idx_dir(scratch.path / "data/local/digits", seed=3)
    scratch.dvc("add", "-q", "data/local/digits")
    scratch.git("add", "-A")
    scratch.git("commit", "-q", "-m", "own digits")

    sweep = ",".join(json.dumps(hidden) for hidden in HIDDEN)
    queued = scratch.dvc("exp", "run", "--queue", "-S", f"train.hidden={sweep}").stdout
    assert queued.count("Queued experiment") == len(HIDDEN), queued
    scratch.env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    try:
        scratch.dvc("queue", "start", "-j", "2")
        status = wait_for_queue(scratch)
    finally:
        scratch.dvc("queue", "stop")
    assert status.count("Success") == len(HIDDEN), status

    found = experiments(json.loads(scratch.dvc("exp", "show", "--json").stdout))
    assert len(found) == len(HIDDEN), found.keys()
    by_hidden = {}
    for data in found.values():
        params = data["params"]["params.yaml"]["data"]
        metrics = data["metrics"]["metrics/metrics.json"]["data"]["test"]
        assert 0.1 < metrics["accuracy"] <= 1, metrics
        assert metrics["loss"] > 0, metrics
        by_hidden[tuple(params["train"]["hidden"])] = metrics
    assert sorted(by_hidden) == sorted(tuple(hidden) for hidden in HIDDEN)
    assert by_hidden[tuple(HIDDEN[0])] != by_hidden[tuple(HIDDEN[1])]
