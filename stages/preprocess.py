"""Stage preprocess: float32 pixels in [0, 1], one-hot labels, and a train/val/test split."""

import argparse
from pathlib import Path

from stages import dataset
from stages.errors import run_stage
from stages.files import atomic_dir, save_npy
from stages.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.preprocess", description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="directory of MNIST IDX files")
    parser.add_argument("--out", type=Path, required=True, help="directory for the .npy files")
    args = parser.parse_args()
    params = load_params().preprocess
    train = dataset.read_pair(args.raw / "train-images-idx3-ubyte",
                              args.raw / "train-labels-idx1-ubyte")
    test = dataset.read_pair(args.raw / "t10k-images-idx3-ubyte",
                             args.raw / "t10k-labels-idx1-ubyte")
    arrays = dataset.prepare(train, test, params.val_size)
    with atomic_dir(args.out) as staging:
        for name, array in arrays.items():
            save_npy(staging / f"{name}.npy", array)
    print(", ".join(f"{name} {array.shape}" for name, array in arrays.items()))


if __name__ == "__main__":
    run_stage(main)
