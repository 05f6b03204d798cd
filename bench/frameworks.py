"""This project's trainer against scikit-learn's MLPClassifier and PyTorch on the CPU.

    .venv-bench/bin/python bench/frameworks.py [--repeats 5] [--epochs 3]

Run from the repository root after `./dev repro` (it reads data/prepared). Every trainer fits
the same network (ReLU hidden layer, softmax output, cross-entropy) on the same 55,000 images
with plain mini-batch SGD, the same learning rate, batch size and epochs, each starting from
its library's default initialisation (ours He, scikit-learn Glorot, PyTorch its Linear
layers' own). Runs alternate between trainers, repeat by repeat (repeat r uses seed r), so a
machine that changes speed midway slows all alike. PyTorch runs twice: batches indexed from a
shuffled permutation, the leanest loop, and batches from a DataLoader, as its tutorials write
it. Ours runs twice too: in one process, and with train.processes 2, its hidden units split
between two processes. An epoch's time leaves out one-off work: our conversion of the images
to uint8 codes, the reordering of their pixels and the start of the second process, and
scikit-learn's check of the input for NaN, which partial_fit would otherwise repeat every
epoch. The table gives each trainer's median seconds per epoch, its ratio to the faster of
ours, and its median test accuracy over the repeats. "GEMM ceiling" times only the bare matrix
products of the same forward and backward passes over all 784 pixels: no trainer that
multiplies them all can beat it. Ours leaves out each batch's trailing pixels that are zero in
all its images, in an order that makes them many (training.zero_tails), so it can. Peers
missing from the environment are skipped (install them with the `bench` extra).
"""

import argparse
import contextlib
import dataclasses
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from stages import network, training
from stages.params import load_params

CONFIGS = [[10], [256]]  # hidden widths
BATCH, LR = 64, 0.1

Data = dict[str, np.ndarray]
# A trainer: (data, hidden, epochs, seed) -> (seconds of each epoch, test accuracy)
Trainer = Callable[[Data, list[int], int, int], tuple[list[float], float]]


def ours(data: Data, hidden: list[int], epochs: int, seed: int,
         processes: int = 1) -> tuple[list[float], float]:
    sizes = [784, *hidden, 10]
    config = dataclasses.replace(load_params().train, hidden=hidden, activation="relu", init="he",
                                 batch_size=BATCH, lr=LR, optimizer="sgd", lr_schedule="constant",
                                 lr_warmup_epochs=0, weight_decay=0.0, dropout=0.0, shift=0,
                                 epochs=epochs, processes=processes)
    init_rng, *rngs = np.random.default_rng(seed).spawn(3)
    params = network.init_params(sizes, "he", init_rng)
    steps = training.steps_per_epoch(config, len(data["x_train"]))
    pixels = training.compact_pixels(data["x_train"])  # once per run, as the train stage does
    seconds = []
    # Starting the second process is one-off work too: the context waits until it is ready.
    with training.runner(params, sizes, pixels, data["y_train"], config, tuple(rngs)) as run:
        for epoch in range(epochs):
            started = time.perf_counter()
            run(epoch * steps, None)
            seconds.append(time.perf_counter() - started)
    _, accuracy = training.scores(params, sizes, "relu", (data["x_test"], data["y_test"]))
    return seconds, accuracy


def sklearn(data: Data, hidden: list[int], epochs: int, seed: int) -> tuple[list[float], float]:
    import sklearn
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="sgd",
                          learning_rate_init=LR, momentum=0.0, nesterovs_momentum=False,
                          alpha=0.0, batch_size=BATCH, shuffle=True, random_state=seed)
    labels, classes = data["y_train"].argmax(axis=1), np.arange(10)
    seconds = []
    # partial_fit checks the whole input for NaN on every call, which fit does once: skip that
    # (the data is known finite), so an epoch costs what it costs inside fit.
    with sklearn.config_context(assume_finite=True):
        for _ in range(epochs):
            started = time.perf_counter()
            model.partial_fit(data["x_train"], labels, classes=classes)  # one epoch
            seconds.append(time.perf_counter() - started)
    accuracy = float((model.predict(data["x_test"]) == data["y_test"].argmax(axis=1)).mean())
    return seconds, accuracy


def pytorch(data: Data, hidden: list[int], epochs: int, seed: int,
            loader: bool = False) -> tuple[list[float], float]:
    """Batches by indexing a shuffled permutation, or (`loader`) through a DataLoader over a
    TensorDataset, as PyTorch's tutorials write the loop."""
    import torch

    torch.manual_seed(seed)
    widths = [784, *hidden, 10]
    layers: list[torch.nn.Module] = []
    for n_in, n_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, labels = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"].argmax(1))
    dataset = torch.utils.data.TensorDataset(x, labels)

    def indexed() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            rows = order[start : start + BATCH]
            yield x[rows], labels[rows]

    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        batches = (torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)
                   if loader else indexed())
        for xb, yb in batches:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    with torch.no_grad():
        predicted = model(torch.from_numpy(data["x_test"])).argmax(1).numpy()
    return seconds, float((predicted == data["y_test"].argmax(1)).mean())


def gemm_ceiling(data: Data, hidden: list[int], epochs: int, seed: int
                 ) -> tuple[list[float], float]:
    """Only the products of one SGD epoch: a @ W forward, then a.T @ delta and delta @ W.T
    backward (none for the input), on preallocated arrays."""
    sizes = [784, *hidden, 10]
    weights, _ = network.init_layers(sizes, np.random.default_rng(seed))
    acts = [data["x_train"][:BATCH].copy()] + [np.ones((BATCH, n), np.float32) for n in sizes[1:]]
    grads = [np.empty_like(w) for w in weights]
    # Small, fixed deltas: garbage could overflow, and inf or NaN would time something else.
    deltas = [np.full((BATCH, n), 1e-3, np.float32) for n in sizes[1:]]
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for _ in range(math.ceil(len(data["x_train"]) / BATCH)):
            for layer, w in enumerate(weights):
                np.matmul(acts[layer], w, out=acts[layer + 1])
            for layer in reversed(range(len(weights))):
                np.matmul(acts[layer].T, deltas[layer], out=grads[layer])
                if layer:
                    np.matmul(deltas[layer], weights[layer].T, out=deltas[layer - 1])
        seconds.append(time.perf_counter() - started)
    return seconds, math.nan


def available() -> dict[str, Trainer]:
    trainers: dict[str, Trainer] = {"this project": ours,
                                    "this project, 2 processes": partial(ours, processes=2)}
    for name, trainer, module in [("scikit-learn", sklearn, "sklearn"),
                                  ("PyTorch, indexed batches", pytorch, "torch"),
                                  ("PyTorch, DataLoader", partial(pytorch, loader=True), "torch")]:
        try:
            __import__(module)
        except ImportError:
            print(f"({name} not installed: skipped)")
            continue
        trainers[name] = trainer
    trainers["GEMM ceiling"] = gemm_ceiling
    return trainers


def versions() -> str:
    found = [f"numpy {np.__version__}"]
    for module in ("sklearn", "torch"):
        with contextlib.suppress(ImportError):
            found.append(f"{module} {__import__(module).__version__}")
    # Which kernels each library runs: OpenBLAS's may be pinned by OPENBLAS_CORETYPE (to AVX2
    # on the machine behind the README's figures), PyTorch's pick their own.
    kernels = (f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, "
               f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'detected')}")
    with contextlib.suppress(ImportError):
        torch = __import__("torch")
        kernels += (f", torch threads {torch.get_num_threads()} "
                    f"({torch.backends.cpu.get_cpu_capability()})")
    return ", ".join(found) + f"; {os.cpu_count()} CPUs, {kernels}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    args = parser.parse_args()
    data = {name: np.load(args.data / f"{name}.npy", allow_pickle=False)
            for name in ("x_train", "y_train", "x_test", "y_test")}
    trainers = available()
    print(f"{versions()}; batch {BATCH}, lr {LR}, {args.epochs} epochs x {args.repeats} repeats")
    print("| network | trainer | s/epoch (median) | min | max | x ours | test accuracy (median) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for hidden in CONFIGS:
        per_epoch: dict[str, list[float]] = {name: [] for name in trainers}
        accuracies: dict[str, list[float]] = {name: [] for name in trainers}
        for repeat in range(args.repeats):
            # Rotate the order too, so no trainer always runs right after the same one.
            names = list(trainers)
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                seconds, accuracy = trainers[name](data, hidden, args.epochs, repeat)
                per_epoch[name] += seconds
                accuracies[name].append(accuracy)
        mine = min(statistics.median(seconds) for name, seconds in per_epoch.items()
                   if name.startswith("this project"))
        shape = "-".join(map(str, [784, *hidden, 10]))
        for name, seconds in per_epoch.items():
            median = statistics.median(seconds)
            accuracy = statistics.median(accuracies[name])
            acc = "" if math.isnan(accuracy) else f"{accuracy:.4f}"
            print(f"| {shape} | {name} | {median:.3f} | {min(seconds):.3f} | "
                  f"{max(seconds):.3f} | {median / mine:.2f} | {acc} |", flush=True)


if __name__ == "__main__":
    main()
