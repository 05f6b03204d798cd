"""End to end: the real DVC pipeline on small synthetic MNIST-like data in a scratch git repo.

Nothing here touches the network: params set `fetch.sources: [local]` and `fetch.verify: false`,
so fetch reads the synthetic IDX files this module writes. The repository is built and the
pipeline run once per module; the tests then check the outputs, re-runs, an experiment,
`dvc params diff` / `dvc metrics show`, and that a forced re-run gives the same bytes.
"""

import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import idx
from stages.mnist import FILE_NAMES

PROJECT = Path(__file__).resolve().parent.parent
STAGES = ("fetch", "preprocess", "train", "evaluate")
N_TRAIN, N_TEST, VAL_SIZE, EPOCHS = 600, 200, 100, 3
GZIPPED = {"train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}  # the rest are written plain
HISTORY_HEADER = "epoch,lr,train_loss,train_acc,val_loss,val_acc"
# Outputs whose bytes must depend on the data and params alone.
RESULT_FILES = ("models/model.npz", "metrics/metrics.json", "metrics/train.json",
                "metrics/history.csv", "metrics/predictions.csv", "metrics/samples.json",
                "metrics/samples.md", "metrics/samples.png", "metrics/mistakes.png")
PREPARED = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
EXP_NAME = "lr-0-05"
EXP_LR = 0.05


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images: faint noise plus a bright 10x4 bar whose place encodes the label,
    except that about one image in ten shows the bar of a random class (so accuracy < 1)."""
    images = rng.integers(0, 50, size=(len(labels), 28, 28), dtype=np.uint8)
    shown = np.where(rng.random(len(labels)) < 0.1, rng.integers(0, 10, len(labels)), labels)
    for image, label in zip(images, shown, strict=True):
        band, slot = divmod(int(label), 5)
        top = 2 + 13 * band + int(rng.integers(-1, 2))
        left = 1 + 5 * slot + int(rng.integers(0, 2))
        image[top : top + 10, left : left + 4] = rng.integers(180, 256, size=(10, 4))
    return images


def write_synthetic(directory: Path) -> dict[str, bytes]:
    """Write the four IDX files (some gzipped) and return their uncompressed bytes by name."""
    rng = np.random.default_rng(20240601)
    train_labels = rng.permutation(np.arange(N_TRAIN) % 10).astype(np.uint8)
    test_labels = rng.permutation(np.arange(N_TEST) % 10).astype(np.uint8)
    files = {
        "train-images-idx3-ubyte": idx.encode(synthetic_images(train_labels, rng)),
        "train-labels-idx1-ubyte": idx.encode(train_labels),
        "t10k-images-idx3-ubyte": idx.encode(synthetic_images(test_labels, rng)),
        "t10k-labels-idx1-ubyte": idx.encode(test_labels),
    }
    directory.mkdir(parents=True)
    for name, data in files.items():
        if name in GZIPPED:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / name).write_bytes(data)
    return files


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a command; fail with its exit code, stdout and stderr unless it exits 0."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    return result


def isolated_env(scratch: Path) -> dict[str, str]:
    """The environment for git and dvc: venv python first, no analytics, no user config."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DVC_", "GIT_"))}
    env.update({
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "DVC_NO_ANALYTICS": "1",
        "DVC_STUDIO_OFFLINE": "true",
        "DVC_GLOBAL_CONFIG_DIR": str(scratch / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(scratch / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(scratch / "dvc-site-cache"),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Pipeline Test",
        "GIT_AUTHOR_EMAIL": "pipeline-test@example.invalid",
        "GIT_COMMITTER_NAME": "Pipeline Test",
        "GIT_COMMITTER_EMAIL": "pipeline-test@example.invalid",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


@dataclass
class Repo:
    """A scratch git + DVC repository and the environment its commands run in."""

    path: Path
    env: dict[str, str]

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return run(["git", *args], self.path, self.env)

    def dvc(self, *args: str) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "dvc", *args], self.path, self.env)


def init_project(repo: Path, env: dict[str, str], changes: dict[str, dict],
                 gitignore: str = "__pycache__/\n") -> dict:
    """Make `repo` a git + DVC repository holding this project's stages and dvc.yaml, with
    its params.yaml updated by `changes` ({section: {key: value}}); nothing is committed.
    Returns the params written."""
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT / "stages", repo / "stages",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(PROJECT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text(gitignore)
    commands = Repo(repo, env)
    commands.git("-c", "init.defaultBranch=main", "init", "-q")
    commands.dvc("init", "-q")
    commands.dvc("config", "core.analytics", "false")
    commands.dvc("config", "core.check_update", "false")
    return params


@dataclass
class Pipeline:
    repo: Path
    env: dict[str, str]
    raw: dict[str, bytes]  # uncompressed synthetic files by name
    params: dict  # params.yaml as committed
    params_text: str
    first_run: subprocess.CompletedProcess
    results: dict[str, bytes]  # RESULT_FILES after the first run

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return Repo(self.repo, self.env).git(*args)

    def dvc(self, *args: str) -> subprocess.CompletedProcess:
        return Repo(self.repo, self.env).dvc(*args)

    def read_results(self) -> dict[str, bytes]:
        return {name: (self.repo / name).read_bytes() for name in RESULT_FILES}

    def metrics(self) -> dict:
        return json.loads((self.repo / "metrics/metrics.json").read_text())


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    scratch = tmp_path_factory.mktemp("pipeline")
    raw = write_synthetic(scratch / "synthetic")
    repo = scratch / "repo"
    env = isolated_env(scratch)
    params = init_project(repo, env, {
        "fetch": {"sources": ["local"], "local_dir": str(scratch / "synthetic"), "verify": False},
        "preprocess": {"val_size": VAL_SIZE},
        "train": {"epochs": EPOCHS, "batch_size": 32},
    })
    params_text = (repo / "params.yaml").read_text()
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "pipeline on synthetic data"], repo, env)

    first_run = run([sys.executable, "-m", "dvc", "repro"], repo, env)
    pipe = Pipeline(repo, env, raw, params, params_text, first_run, {})
    pipe.results = pipe.read_results()
    # The baseline the experiment and `dvc params diff` compare against.
    pipe.git("add", "dvc.lock", "metrics", "data/.gitignore", "models/.gitignore")
    pipe.git("commit", "-q", "-m", "first run")
    return pipe


def test_repro_runs_every_stage_and_writes_every_output(pipeline: Pipeline) -> None:
    repo, log = pipeline.repo, output(pipeline.first_run)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    assert "not verified (fetch.verify is false)" in log

    # fetch: the four files, uncompressed, byte for byte.
    assert sorted(p.name for p in (repo / "data/raw").iterdir()) == sorted(FILE_NAMES)
    for name, data in pipeline.raw.items():
        assert (repo / "data/raw" / name).read_bytes() == data, name

    # preprocess: six float32 arrays split 500 / 100 / 200.
    assert sorted(p.name for p in (repo / "data/prepared").iterdir()) == sorted(
        f"{name}.npy" for name in PREPARED)
    arrays = {name: np.load(repo / f"data/prepared/{name}.npy", allow_pickle=False)
              for name in PREPARED}
    rows = {"train": N_TRAIN - VAL_SIZE, "val": VAL_SIZE, "test": N_TEST}
    for split, n in rows.items():
        assert arrays[f"x_{split}"].shape == (n, 784)
        assert arrays[f"y_{split}"].shape == (n, 10)
        assert arrays[f"x_{split}"].dtype == arrays[f"y_{split}"].dtype == np.float32
    test_labels = np.frombuffer(pipeline.raw["t10k-labels-idx1-ubyte"], np.uint8, offset=8)
    np.testing.assert_array_equal(arrays["y_test"].argmax(axis=1), test_labels)

    # train: a model np.load reads without pickle, scores and a 3-epoch history.
    with np.load(repo / "models/model.npz", allow_pickle=False) as model:
        assert sorted(model.files) == ["W0", "W1", "activation", "b0", "b1"]
        assert model["W0"].shape == (784, *pipeline.params["train"]["hidden"])
        assert str(model["activation"]) == pipeline.params["train"]["activation"]
    train_scores = json.loads((repo / "metrics/train.json").read_text())
    assert train_scores["epochs"] == EPOCHS
    assert set(train_scores) == {"epochs", "best_val_epoch", "val"}
    assert set(train_scores["val"]) == {"loss", "accuracy"}
    history = (repo / "metrics/history.csv").read_text().splitlines()
    assert history[0] == HISTORY_HEADER
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]

    # evaluate: well above the 10% of guessing on this easy data set.
    test_scores = pipeline.metrics()["test"]
    assert set(test_scores) == {"accuracy", "loss", "macro", "per_class_accuracy"}
    assert isinstance(test_scores["accuracy"], float)
    assert test_scores["accuracy"] >= 0.5, test_scores
    assert 0 < test_scores["loss"] < np.log(10), test_scores
    predictions = list(csv.reader(io.StringIO((repo / "metrics/predictions.csv").read_text())))
    assert predictions[0] == ["actual", "predicted"]
    assert len(predictions) == 1 + N_TEST
    assert [int(actual) for actual, _ in predictions[1:]] == test_labels.tolist()
    correct = sum(actual == predicted for actual, predicted in predictions[1:])
    assert correct / N_TEST == pytest.approx(test_scores["accuracy"], abs=1e-6)

    n_samples = pipeline.params["evaluate"]["samples"]
    samples = json.loads((repo / "metrics/samples.json").read_text())
    assert [s["index"] for s in samples] == list(range(n_samples))
    assert [s["actual"] for s in samples] == test_labels[:n_samples].tolist()
    table = (repo / "metrics/samples.md").read_text().splitlines()
    assert table[0].startswith("| image | predicted | actual | confidence |")
    assert table[1].startswith("|---:|")
    assert len(table) == 2 + n_samples
    assert all(line.startswith("| ") and line.endswith(" |") for line in table[2:])


def test_second_repro_skips_every_stage(pipeline: Pipeline) -> None:
    log = output(pipeline.dvc("repro"))
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in log or all(
        f"Stage '{stage}' didn't change, skipping" in log for stage in STAGES), log
    assert pipeline.read_results() == pipeline.results


def test_experiment_reruns_only_train_and_evaluate(pipeline: Pipeline) -> None:
    try:
        log = output(pipeline.dvc("exp", "run", "-n", EXP_NAME, "-S", f"train.lr={EXP_LR}"))
        for stage in ("fetch", "preprocess"):
            assert f"Stage '{stage}' didn't change, skipping" in log
            assert f"Running stage '{stage}'" not in log
        for stage in ("train", "evaluate"):
            assert f"Running stage '{stage}'" in log
        workspace = yaml.safe_load((pipeline.repo / "params.yaml").read_text())
        assert float(workspace["train"]["lr"]) == EXP_LR
        assert (pipeline.repo / "models/model.npz").read_bytes() != pipeline.results[
            "models/model.npz"]

        shown = list(csv.DictReader(io.StringIO(pipeline.dvc("exp", "show", "--csv").stdout)))
        rows = [row for row in shown if row["Experiment"] == EXP_NAME]
        assert len(rows) == 1, shown
        assert float(rows[0]["train.lr"]) == EXP_LR
        assert float(rows[0]["test.accuracy"]) == pipeline.metrics()["test"]["accuracy"]
        baseline = [row for row in shown if row["rev"] == "main"]
        assert len(baseline) == 1, shown
        assert float(baseline[0]["train.lr"]) == pipeline.params["train"]["lr"]
        assert float(baseline[0]["test.accuracy"]) == json.loads(
            pipeline.results["metrics/metrics.json"])["test"]["accuracy"]
    finally:
        # Back to the committed baseline for the other tests.
        pipeline.git("checkout", "--", ".")
        pipeline.dvc("checkout", "--force")
    assert pipeline.read_results() == pipeline.results
    assert "Data and pipelines are up to date" in output(pipeline.dvc("status"))


def test_params_diff_and_metrics_show(pipeline: Pipeline) -> None:
    params_file = pipeline.repo / "params.yaml"
    old_lr, new_lr = pipeline.params["train"]["lr"], 0.02
    edited = yaml.safe_load(params_file.read_text())
    edited["train"]["lr"] = new_lr
    try:
        params_file.write_text(yaml.safe_dump(edited, sort_keys=False))
        diff = pipeline.dvc("params", "diff").stdout
        lines = [line.split() for line in diff.splitlines() if "train.lr" in line]
        assert lines == [["params.yaml", "train.lr", str(old_lr), str(new_lr)]], diff
    finally:
        params_file.write_text(pipeline.params_text)

    scores = pipeline.metrics()["test"]
    shown = pipeline.dvc("metrics", "show").stdout
    header, *rows = [line.split() for line in shown.splitlines() if line.strip()]
    assert {"Path", "test.accuracy", "test.loss", "epochs"} <= set(header), shown
    row = next(row for row in rows if row[0] == "metrics/metrics.json")
    as_shown = dict(zip(header, row, strict=True))
    assert float(as_shown["test.accuracy"]) == round(scores["accuracy"], 5)
    assert float(as_shown["test.loss"]) == round(scores["loss"], 5)

    exact = json.loads(pipeline.dvc("metrics", "show", "--json").stdout)
    (workspace,) = exact.values()  # the one revision shown: the workspace
    assert workspace["data"]["metrics/metrics.json"]["data"] == pipeline.metrics()


def test_forced_repro_gives_identical_bytes(pipeline: Pipeline) -> None:
    (pipeline.repo / "params.yaml").write_text(pipeline.params_text)
    prepared = {name: (pipeline.repo / f"data/prepared/{name}.npy").read_bytes()
                for name in PREPARED}
    log = output(pipeline.dvc("repro", "-f"))
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    assert pipeline.read_results() == pipeline.results
    for name in PREPARED:
        assert (pipeline.repo / f"data/prepared/{name}.npy").read_bytes() == prepared[name]
    for name, data in pipeline.raw.items():
        assert (pipeline.repo / "data/raw" / name).read_bytes() == data
