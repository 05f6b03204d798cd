"""Predict the digit in each PNG or JPEG image with the trained model.

Each image is brought into MNIST's form first (light ink on black, cropped, fitted into
20x20, centred by centre of mass in 28x28), then one line per image gives the predicted
digit and the probability of each of the ten classes.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from stages import dataset, digit_image, modelfile, network
from stages.errors import PipelineError, run_stage
from stages.splits import CLASSES, PIXELS

DEFAULT_MODEL = Path("models/model.npz")


def image_row(path: Path) -> np.ndarray:
    """The image at `path` as one normalised MNIST row (1, 784)."""
    grey = digit_image.load_grey(path)
    try:
        digit = digit_image.mnist_digit(grey)
    except ValueError as err:
        raise PipelineError(f"{path}: no digit found: the image is blank") from err
    return dataset.normalise(digit[np.newaxis])


def prediction_line(path: Path, probabilities: np.ndarray) -> str:
    classes = " ".join(f"{digit}:{p:.4f}" for digit, p in enumerate(probabilities))
    return f"{path}: {probabilities.argmax()}  {classes}"


def predict() -> None:
    parser = argparse.ArgumentParser(prog="mnist-predict", description=__doc__)
    parser.add_argument("images", type=Path, nargs="+", help="PNG or JPEG files")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"the trained model (default: {DEFAULT_MODEL})")
    args = parser.parse_args()
    model = modelfile.load(args.model)
    modelfile.check_fits(args.model, model[0], PIXELS, CLASSES, "expected")
    # Like cat, a bad file is reported and the rest still get their answer; the exit says so.
    failed = False
    for path in args.images:
        try:
            row = image_row(path)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            failed = True
            continue
        logits = modelfile.finite_logits(args.model, model, row, f"for {path}")
        print(prediction_line(path, network.softmax(logits)[0]))
    if failed:
        sys.exit(1)


def main() -> None:
    run_stage(predict)


if __name__ == "__main__":
    main()
