"""Stage evaluate: the final model's scores on every split, every test prediction, and the
sample and mistaken test digits as tables and pictures."""

import argparse
from pathlib import Path

import numpy as np

from stages import drawing, metrics, modelfile, network, splits
from stages.errors import PipelineError, run_stage
from stages.files import json_bytes, write_all
from stages.params import load_params

LOGGED_SAMPLES = 20  # the log shows the head of the table; the file holds all of it
DIGITS = 6  # decimals kept in metrics.json


def samples_table(samples: list[dict]) -> str:
    """The sample predictions as a markdown table, one row per test image."""
    lines = ["| image | predicted | actual | confidence | |", "|---:|---:|---:|---:|:---:|"]
    lines += [f"| {s['index']} | {s['predicted']} | {s['actual']} | {s['confidence']:.3f} | "
              f"{'ok' if s['predicted'] == s['actual'] else 'WRONG'} |" for s in samples]
    return "\n".join(lines) + "\n"


def model_logits(model: tuple[list[np.ndarray], list[np.ndarray], str], path: Path,
                 x: np.ndarray, y: np.ndarray, split: str) -> np.ndarray:
    """The model's logits for one split, refusing a model that does not fit the data."""
    modelfile.check_fits(path, model[0], x.shape[1], y.shape[1], "data has")
    return modelfile.finite_logits(path, model, x, f"on the {split} set")


def scores(logits: np.ndarray, y: np.ndarray) -> dict:
    loss, accuracy = network.score(logits, y)
    return {"accuracy": round(accuracy, DIGITS), "loss": round(loss, DIGITS)}


def samples_grid(x: np.ndarray, actual: np.ndarray, predicted: np.ndarray, count: int) -> bytes:
    pairs = list(zip(predicted[:count], actual[:count], strict=True))
    return drawing.png_bytes(drawing.digit_grid(
        x[:count], [f"{p} / {a}" for p, a in pairs], [bool(p != a) for p, a in pairs],
        f"The first {count} test images, predicted / actual (red: wrong)"))


def mistakes_grid(x: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                  confidence: np.ndarray, count: int) -> bytes:
    chosen = metrics.most_confident_mistakes(actual, predicted, confidence, count)
    return drawing.png_bytes(drawing.digit_grid(
        x[chosen], [f"{predicted[i]} / {actual[i]}\n{confidence[i]:.3f}" for i in chosen],
        [True] * len(chosen), f"The {len(chosen)} most confidently wrong test images: "
                              "predicted / actual, confidence"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="directory of prepared .npy")
    parser.add_argument("--model", type=Path, required=True, help="the trained model.npz")
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    args = parser.parse_args()
    params = load_params().evaluate
    model = modelfile.load(args.model)
    x_test, y_test = splits.load_split(args.data, "test")
    logits = model_logits(model, args.model, x_test, y_test, "test")
    if params.samples > len(x_test):
        raise PipelineError(f"params.yaml: evaluate.samples: must be at most the {len(x_test)} "
                            f"test images, got {params.samples}")
    actual, predicted = y_test.argmax(axis=1), logits.argmax(axis=1)
    confidence = network.softmax(logits).max(axis=1)
    results = {"test": scores(logits, y_test) | metrics.summary(
        metrics.confusion_matrix(actual, predicted, y_test.shape[1]), DIGITS)}
    # Train and validation scores of the final model, next to the test ones.
    for split in ("train", "val"):
        x, y = splits.load_split(args.data, split)
        results[split] = scores(model_logits(model, args.model, x, y, split), y)
    samples = [{"index": i, "predicted": int(predicted[i]), "actual": int(actual[i]),
                "confidence": round(float(confidence[i]), 4)} for i in range(params.samples)]
    samples_png = samples_grid(x_test, actual, predicted, params.samples)
    mistakes_png = mistakes_grid(x_test, actual, predicted, confidence, params.mistakes)

    predictions = "actual,predicted\n" + "".join(
        f"{a},{p}\n" for a, p in zip(actual, predicted, strict=True))
    write_all({
        args.out / "metrics.json": json_bytes(results),
        args.out / "predictions.csv": predictions.encode(),
        args.out / "samples.json": json_bytes(samples),
        args.out / "samples.md": samples_table(samples).encode(),
        args.out / "samples.png": samples_png,
        args.out / "mistakes.png": mistakes_png,
    })
    test, train, val = results["test"], results["train"], results["val"]
    print(f"test accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f}, on {len(x_test)} "
          f"images; train accuracy {train['accuracy']:.4f}, val {val['accuracy']:.4f}")
    print(samples_table(samples[:LOGGED_SAMPLES]), end="")


if __name__ == "__main__":
    run_stage(main)
