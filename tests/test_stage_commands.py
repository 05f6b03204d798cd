"""Each stage as a command: it works on tiny data, and bad input gets one line, exit 1 and
no output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages import drawing, modelfile, network
from stages.files import save_npy

ROOT = Path(__file__).parents[1]


def run_stage(cwd: Path, stage: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"stages.{stage}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


@pytest.fixture
def project(tmp_path):
    """A working directory with the real params and tiny prepared data."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    rng = np.random.default_rng(0)
    for split, rows in (("train", 20), ("val", 5), ("test", 6)):
        save_npy(tmp_path / "data" / f"x_{split}.npy", rng.random((rows, 784), np.float32))
        save_npy(tmp_path / "data" / f"y_{split}.npy",
                 np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)])
    return tmp_path


def set_param(project: Path, section: str, key: str, value: object) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(raw))


TRAIN_ARGS = ("--data", "data", "--model", "out/model.npz", "--metrics", "out/train.json",
              "--history", "out/history.csv")


def evaluate(project: Path, model: str = "model.npz") -> subprocess.CompletedProcess:
    return run_stage(project, "evaluate", "--data", "data", "--model", model, "--out", "results")


def save_model(project: Path, sizes: list[int], first_weight: float | None = None) -> None:
    weights, biases = network.init_layers(sizes, np.random.default_rng(0))
    if first_weight is not None:
        weights[0][...] = first_weight
    (project / "model.npz").write_bytes(modelfile.encode(weights, biases, "relu"))


def test_train_with_a_bad_learning_rate(project):
    set_param(project, "train", "lr", -1)
    result = run_stage(project, "train", *TRAIN_ARGS)
    assert_one_line_error(result, "params.yaml: train.lr: must be > 0 and finite, got int -1")
    assert not (project / "out").exists()


def test_train_with_a_batch_larger_than_the_data(project):
    set_param(project, "train", "batch_size", 21)
    result = run_stage(project, "train", *TRAIN_ARGS)
    assert_one_line_error(result, "train.batch_size: must be at most the 20 training images")
    assert not (project / "out").exists()


def test_train_then_evaluate_on_tiny_data(project):
    set_param(project, "train", "epochs", 2)
    set_param(project, "train", "batch_size", 8)
    set_param(project, "evaluate", "samples", 3)
    assert run_stage(project, "train", *TRAIN_ARGS).returncode == 0
    assert (project / "out" / "history.csv").read_text().count("\n") == 3
    result = evaluate(project, "out/model.npz")
    assert result.returncode == 0, result.stderr
    lines = (project / "results" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "actual,predicted"
    assert len(lines) == 7


@pytest.mark.parametrize("patience", [0, 4])
def test_train_reports_the_val_scores_of_the_weights_it_keeps(project, patience):
    # Tiny random data: val accuracy peaks early and wanders, so the best epoch is neither
    # the first nor the last, and early stopping has something to cut.
    set_param(project, "train", "epochs", 12)
    set_param(project, "train", "batch_size", 4)
    set_param(project, "train", "patience", patience)
    assert run_stage(project, "train", *TRAIN_ARGS).returncode == 0
    lines = (project / "out" / "history.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), map(float, line.split(",")), strict=True))
            for line in lines[1:]]
    best = max(rows, key=lambda row: row["val_acc"])  # the first of equals
    assert best is not rows[-1]
    kept = best if patience else rows[-1]
    report = json.loads((project / "out" / "train.json").read_text())
    assert report == {"epochs": len(rows), "best_val_epoch": int(best["epoch"]),
                      "val": {"loss": pytest.approx(kept["val_loss"], abs=1e-6),
                              "accuracy": pytest.approx(kept["val_acc"], abs=1e-6)}}
    assert len(rows) == (int(best["epoch"]) + patience if patience else 12)


def test_evaluate_with_a_model_for_other_data(project):
    save_model(project, [100, 10, 10])
    assert_one_line_error(evaluate(project),
                          "model.npz: maps 100 inputs to 10 classes, data has 784")
    assert not (project / "results").exists()


def test_preprocess_without_fetched_data(project):
    result = run_stage(project, "preprocess", "--raw", "raw", "--out", "prepared")
    assert_one_line_error(result, "raw/train-images-idx3-ubyte: not found")
    assert not (project / "prepared").exists()


def test_fetch_with_invalid_params_yaml(project):
    (project / "params.yaml").write_text("fetch: [\n")
    result = run_stage(project, "fetch", "--out", "raw")
    assert_one_line_error(result, "params.yaml: invalid YAML")
    assert not (project / "raw").exists()


def test_fetch_when_every_source_fails(project):
    set_param(project, "fetch", "sources", ["local"])
    set_param(project, "fetch", "local_dir", "no-such-dir")
    result = run_stage(project, "fetch", "--out", "raw")
    assert_one_line_error(result, "no source gave verified MNIST files; local no-such-dir: "
                                  "no-such-dir: no such directory")
    assert not (project / "raw").exists()


def test_evaluate_refuses_more_samples_than_test_images(project):
    save_model(project, [784, 10, 10])
    set_param(project, "evaluate", "samples", 7)
    assert_one_line_error(evaluate(project),
                          "evaluate.samples: must be at most the 6 test images, got 7")
    assert not (project / "results").exists()


def test_evaluate_refuses_a_model_with_nan_weights(project):
    save_model(project, [784, 10, 10], first_weight=np.nan)
    set_param(project, "evaluate", "samples", 3)
    assert_one_line_error(evaluate(project),
                          "model.npz: layer 0 holds NaN or infinite numbers, expected finite ones")
    assert not (project / "results").exists()


def test_evaluate_refuses_a_model_whose_outputs_overflow(project):
    save_model(project, [784, 10, 10], first_weight=1e37)
    set_param(project, "evaluate", "samples", 3)
    assert_one_line_error(evaluate(project), "model.npz: gives non-finite outputs on the test set")
    assert not (project / "results").exists()


EVALUATE_OUTPUTS = ["metrics.json", "mistakes.png", "predictions.csv", "samples.json",
                    "samples.md", "samples.png"]


def tiles(png: Path, count: int) -> list[np.ndarray]:
    """The first `count` digits of a one-row grid, shrunk back to 28 x 28 grey levels."""
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"))
    top = drawing.MARGIN + drawing.LINE + 2 * drawing.PAD
    lefts = [drawing.MARGIN + i * drawing.CELL_WIDTH + (drawing.CELL_WIDTH - drawing.DIGIT) // 2
             for i in range(count)]
    return [pixels[top : top + drawing.DIGIT : drawing.ZOOM, left : left + drawing.DIGIT :
                   drawing.ZOOM] for left in lefts]


def test_evaluate_writes_every_output(project):
    save_model(project, [784, 10, 10])
    set_param(project, "evaluate", "samples", 4)
    set_param(project, "evaluate", "mistakes", 3)
    result = evaluate(project)
    assert result.returncode == 0, result.stderr
    out = project / "results"
    assert sorted(p.name for p in out.iterdir()) == EVALUATE_OUTPUTS
    first_run = {name: (out / name).read_bytes() for name in EVALUATE_OUTPUTS}

    # Every score recomputed here from the model's arrays.
    (w0, w1), (b0, b1), _ = modelfile.load(project / "model.npz")
    scores = json.loads(first_run["metrics.json"])
    for split in ("train", "val", "test"):
        x, y = (np.load(project / "data" / f"{name}_{split}.npy") for name in "xy")
        logits = np.maximum(x @ w0 + b0, 0) @ w1 + b1
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        assert scores[split]["accuracy"] == round(
            float((logits.argmax(1) == y.argmax(1)).mean()), 6)
        assert scores[split]["loss"] == pytest.approx(-(log_p * y).sum(1).mean(), abs=2e-6)
    actual, predicted = y.argmax(1), logits.argmax(1)
    assert scores["test"]["per_class_accuracy"] == {
        str(d): round(float((predicted[actual == d] == d).mean()), 6) if (actual == d).any()
        else 0.0 for d in range(10)}
    assert set(scores["test"]["macro"]) == {"precision", "recall", "f1"}
    assert first_run["predictions.csv"].decode().splitlines()[1:] == [
        f"{a},{p}" for a, p in zip(actual, predicted, strict=True)]

    # The pictures: the first 4 test digits, and the 3 most confident wrong ones in order.
    confidence = np.exp(log_p.max(axis=1))
    wrong = np.flatnonzero(predicted != actual)
    assert len(wrong) >= 3
    picked = wrong[np.argsort(-confidence[wrong], kind="stable")][:3]
    as_grey = np.round((1 - x) * 255).astype(np.uint8).reshape(-1, 28, 28)
    for tile, index in zip(tiles(out / "samples.png", 4), range(4), strict=True):
        np.testing.assert_array_equal(tile, as_grey[index])
    for tile, index in zip(tiles(out / "mistakes.png", 3), picked, strict=True):
        np.testing.assert_array_equal(tile, as_grey[index])
    samples = json.loads(first_run["samples.json"])
    assert [(s["predicted"], s["actual"]) for s in samples] == list(
        zip(predicted[:4].tolist(), actual[:4].tolist(), strict=True))

    # Same inputs, same bytes.
    assert evaluate(project).returncode == 0
    assert {name: (out / name).read_bytes() for name in EVALUATE_OUTPUTS} == first_run


def test_evaluate_without_a_validation_split(project):
    save_model(project, [784, 10, 10])
    set_param(project, "evaluate", "samples", 3)
    (project / "data" / "x_val.npy").unlink()
    assert_one_line_error(evaluate(project),
                          "data/x_val.npy: not found (run the earlier stages first)")
    assert not (project / "results").exists()


def test_evaluate_refuses_a_negative_mistakes_count(project):
    save_model(project, [784, 10, 10])
    set_param(project, "evaluate", "mistakes", -1)
    assert_one_line_error(evaluate(project),
                          "params.yaml: evaluate.mistakes: must be >= 0, got int -1")
    assert not (project / "results").exists()
