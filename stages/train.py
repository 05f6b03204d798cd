"""Stage train: fit the network with mini-batch SGD and keep its scores per epoch."""

import argparse
import time
from pathlib import Path

import numpy as np

from stages import modelfile, network, splits, training
from stages.errors import PipelineError, run_stage
from stages.files import write_json, write_text
from stages.params import load_params


def history_csv(history: list[dict[str, float]]) -> str:
    columns = list(history[0])
    rows = [",".join(columns)]
    rows += [",".join(f"{row[c]:.6f}" if c != "epoch" else str(row[c]) for c in columns)
             for row in history]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="directory of prepared .npy")
    parser.add_argument("--model", type=Path, required=True, help="where to write model.npz")
    parser.add_argument("--metrics", type=Path, required=True, help="where to write the scores")
    parser.add_argument("--history", type=Path, required=True, help="where to write the CSV")
    args = parser.parse_args()
    params = load_params().train
    train_set = splits.load_split(args.data, "train")
    val_set = splits.load_split(args.data, "val")
    if params.batch_size > len(train_set[0]):
        raise PipelineError(f"params.yaml: train.batch_size: must be at most the "
                            f"{len(train_set[0])} training images left by preprocess.val_size, "
                            f"got {params.batch_size}")

    # Separate streams, so changing the architecture does not also change the batch order.
    init_rng, shuffle_rng = np.random.default_rng(params.seed).spawn(2)
    sizes = [splits.PIXELS, *params.hidden, splits.CLASSES]
    weights, biases = network.init_layers(sizes, init_rng)
    started = time.perf_counter()
    history = training.train(weights, biases, train_set, val_set, activation=params.activation,
                             lr=params.lr, epochs=params.epochs, batch_size=params.batch_size,
                             rng=shuffle_rng)
    print(f"trained {'-'.join(map(str, sizes))} in {time.perf_counter() - started:.1f} s")

    last = history[-1]
    modelfile.save(args.model, weights, biases, params.activation)
    write_text(args.history, history_csv(history))
    write_json(args.metrics, {
        "epochs": len(history),
        "train": {"loss": round(last["train_loss"], 6), "accuracy": round(last["train_acc"], 6)},
        "val": {"loss": round(last["val_loss"], 6), "accuracy": round(last["val_acc"], 6)},
    })


if __name__ == "__main__":
    run_stage(main)
