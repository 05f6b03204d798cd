"""A fully connected network: ReLU hidden layers, a softmax output, cross-entropy loss.

Rows are examples. Layer l maps a (batch, n_in) array to (batch, n_out) with a @ W[l] + b[l];
every hidden layer then applies the activation, the last one gives the logits.
"""

from itertools import pairwise

import numpy as np

# (weights, biases), or their gradients: one array per layer in each list.
Layers = tuple[list[np.ndarray], list[np.ndarray]]


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0)


def relu_slope(a: np.ndarray) -> np.ndarray:
    """dReLU/dz written in terms of the output a = relu(z), which is what forward keeps."""
    return (a > 0).astype(a.dtype)


ACTIVATIONS = {"relu": (relu, relu_slope)}


def init_layers(sizes: list[int], rng: np.random.Generator, dtype: type = np.float32) -> Layers:
    """He-initialised weights (std sqrt(2 / fan_in), which keeps ReLU outputs' variance level
    from layer to layer) and zero biases for layer widths `sizes`, input first."""
    weights = [
        (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype)
        for n_in, n_out in pairwise(sizes)
    ]
    biases = [np.zeros(n_out, dtype) for n_out in sizes[1:]]
    return weights, biases


def forward(
    weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, activation: str
) -> list[np.ndarray]:
    """Every layer's output, the input first and the logits last: all that backward needs."""
    act, _ = ACTIVATIONS[activation]
    outputs = [x]
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        outputs.append(act(outputs[-1] @ w + b))
    outputs.append(outputs[-1] @ weights[-1] + biases[-1])
    return outputs


def log_softmax(logits: np.ndarray) -> np.ndarray:
    # Subtracting the row maximum keeps exp() from overflowing (log-sum-exp).
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of one-hot `targets` under softmax(logits)."""
    return float(-(targets * log_softmax(logits)).sum() / len(logits))


def backward(
    weights: list[np.ndarray], outputs: list[np.ndarray], targets: np.ndarray, activation: str
) -> Layers:
    """Gradients of the mean cross-entropy with respect to every weight and bias."""
    _, slope = ACTIVATIONS[activation]
    # For softmax followed by cross-entropy, dLoss/dlogits collapses to (p - y) / batch.
    delta = (softmax(outputs[-1]) - targets) / len(targets)
    grad_w, grad_b = [], []
    for layer in reversed(range(len(weights))):
        grad_w.append(outputs[layer].T @ delta)
        grad_b.append(delta.sum(axis=0))
        if layer:
            delta = (delta @ weights[layer].T) * slope(outputs[layer])
    return grad_w[::-1], grad_b[::-1]


def score(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits against one-hot targets."""
    accuracy = float((logits.argmax(axis=1) == targets.argmax(axis=1)).mean())
    return cross_entropy(logits, targets), accuracy


def logits_in_chunks(
    weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, activation: str,
    chunk: int = 10_000,
) -> np.ndarray:
    """The logits for all of `x`, computed a chunk at a time to bound memory."""
    return np.concatenate([
        forward(weights, biases, x[start : start + chunk], activation)[-1]
        for start in range(0, len(x), chunk)
    ])
