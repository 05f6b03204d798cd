"""Mini-batch stochastic gradient descent, with the training and validation scores per epoch."""

from collections.abc import Callable

import numpy as np

from stages import network
from stages.errors import PipelineError


def sgd_epoch(
    weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, y: np.ndarray,
    activation: str, lr: float, batch_size: int, rng: np.random.Generator,
) -> None:
    """One pass over (x, y) in a fresh random order, updating the layers in place."""
    order = rng.permutation(len(x))
    for start in range(0, len(x), batch_size):
        rows = order[start : start + batch_size]
        outputs = network.forward(weights, biases, x[rows], activation)
        grad_w, grad_b = network.backward(weights, outputs, y[rows], activation)
        for param, grad in zip(weights + biases, grad_w + grad_b, strict=True):
            param -= lr * grad


def train(
    weights: list[np.ndarray], biases: list[np.ndarray],
    train_set: tuple[np.ndarray, np.ndarray], val_set: tuple[np.ndarray, np.ndarray], *,
    activation: str, lr: float, epochs: int, batch_size: int, rng: np.random.Generator,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train the layers in place; return one row of scores per epoch."""
    history = []
    for epoch in range(1, epochs + 1):
        # A diverging run overflows; the finiteness check below reports that in one line.
        with np.errstate(over="ignore", invalid="ignore"):
            sgd_epoch(weights, biases, *train_set, activation, lr, batch_size, rng)
            train_loss, train_acc = network.score(
                network.logits_in_chunks(weights, biases, train_set[0], activation), train_set[1])
            val_loss, val_acc = network.score(
                network.logits_in_chunks(weights, biases, val_set[0], activation), val_set[1])
        if not np.isfinite(train_loss):
            raise PipelineError(f"training diverged in epoch {epoch} (train loss {train_loss}); "
                                f"try a train.lr below {lr}")
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc})
        log(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.4f}, "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}")
    return history
