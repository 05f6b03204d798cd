"""Stage train: fit the network to the training split and keep its scores per epoch."""

import argparse
import time
from pathlib import Path

import numpy as np

from stages import modelfile, network, splits, training
from stages.errors import PipelineError, run_stage
from stages.files import json_bytes, write_all
from stages.params import load_params


def history_csv(history: list[dict[str, float]]) -> str:
    columns = list(history[0])
    rows = [",".join(columns)]
    rows += [",".join(_cell(column, row[column]) for column in columns) for row in history]
    return "\n".join(rows) + "\n"


def _cell(column: str, value: float) -> str:
    if column == "epoch":
        return str(value)
    # Significant digits for the rate: Adam's 1e-3 decaying to near 0 has few decimals.
    return f"{value:.6g}" if column == "lr" else f"{value:.6f}"


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

    # Separate streams, so changing the architecture does not also change the batch order,
    # nor turning on dropout the initial weights.
    init_rng, shuffle_rng, noise_rng = np.random.default_rng(params.seed).spawn(3)
    sizes = [splits.PIXELS, *params.hidden, splits.CLASSES]
    flat = network.init_params(sizes, params.init, init_rng)
    started = time.perf_counter()
    history = training.train(flat, sizes, train_set, val_set, params, (shuffle_rng, noise_rng))
    print(f"trained {'-'.join(map(str, sizes))} in {time.perf_counter() - started:.1f} s")

    weights, biases = network.layer_views(flat, sizes)
    # The first epoch with the best val accuracy, as training picks it: the weights kept when
    # early stopping is on, the last epoch's otherwise.
    best = max(history, key=lambda row: row["val_acc"])
    kept = best if params.patience else history[-1]
    write_all({
        args.model: modelfile.encode(weights, biases, params.activation),
        args.history: history_csv(history).encode(),
        args.metrics: json_bytes({
            "epochs": len(history),
            "best_val_epoch": best["epoch"],
            "val": {"loss": round(kept["val_loss"], 6), "accuracy": round(kept["val_acc"], 6)},
        }),
    })


if __name__ == "__main__":
    run_stage(main, memory_hint="a smaller train.hidden or train.batch_size needs less")
