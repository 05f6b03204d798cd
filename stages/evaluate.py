"""Stage evaluate: test accuracy and loss, every prediction, and a table of sample digits."""

import argparse
from pathlib import Path

import numpy as np

from stages import modelfile, network, splits
from stages.errors import PipelineError, run_stage
from stages.files import write_json, write_text
from stages.params import load_params

LOGGED_SAMPLES = 20  # the log shows the head of the table; the file holds all of it


def samples_table(samples: list[dict]) -> str:
    """The sample predictions as a markdown table, one row per test image."""
    lines = ["| image | predicted | actual | confidence | |", "|---:|---:|---:|---:|:---:|"]
    lines += [f"| {s['index']} | {s['predicted']} | {s['actual']} | {s['confidence']:.3f} | "
              f"{'ok' if s['predicted'] == s['actual'] else 'WRONG'} |" for s in samples]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="directory of prepared .npy")
    parser.add_argument("--model", type=Path, required=True, help="the trained model.npz")
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    args = parser.parse_args()
    params = load_params().evaluate
    x_test, y_test = splits.load_split(args.data, "test")
    weights, biases, activation = modelfile.load(args.model)
    if weights[0].shape[0] != x_test.shape[1] or weights[-1].shape[1] != y_test.shape[1]:
        raise PipelineError(f"{args.model}: maps {weights[0].shape[0]} inputs to "
                            f"{weights[-1].shape[1]} classes, data has {x_test.shape[1]} and "
                            f"{y_test.shape[1]}")

    if params.samples > len(x_test):
        raise PipelineError(f"params.yaml: evaluate.samples: must be at most the {len(x_test)} "
                            f"test images, got {params.samples}")

    logits = network.logits_in_chunks(weights, biases, x_test, activation)
    if not np.isfinite(logits).all():
        raise PipelineError(f"{args.model}: gives non-finite outputs on the test set")
    loss, accuracy = network.score(logits, y_test)
    actual, predicted = y_test.argmax(axis=1), logits.argmax(axis=1)
    confidence = network.softmax(logits).max(axis=1)
    samples = [{"index": i, "predicted": int(predicted[i]), "actual": int(actual[i]),
                "confidence": round(float(confidence[i]), 4)}
               for i in range(params.samples)]

    write_json(args.out / "metrics.json",
               {"test": {"accuracy": round(accuracy, 6), "loss": round(loss, 6)}})
    write_text(args.out / "predictions.csv", "actual,predicted\n" + "".join(
        f"{a},{p}\n" for a, p in zip(actual, predicted, strict=True)))
    write_json(args.out / "samples.json", samples)
    write_text(args.out / "samples.md", samples_table(samples))
    print(f"test accuracy {accuracy:.4f}, loss {loss:.4f}, on {len(x_test)} images")
    print(samples_table(samples[:LOGGED_SAMPLES]), end="")


if __name__ == "__main__":
    run_stage(main)
