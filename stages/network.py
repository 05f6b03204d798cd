"""A fully connected network: hidden layers, a softmax output, cross-entropy loss.

Rows are examples. Layer l maps a (batch, n_in) array to (batch, n_out) with a @ W[l] + b[l];
every hidden layer then applies the activation, the last one gives the logits.

All parameters live in one flat float32 vector, weights first, then biases; the per-layer arrays
are views into it. An optimiser then updates the whole network with a few whole-vector
operations, and weight decay touches the weights alone as one contiguous slice.

Training keeps, per hidden layer, its output a and its slope da/dz (dropout's mask folded in):
with those, backprop is two matrix products per layer, as in Nielsen's network2.

In training, x may have fewer columns (k) than W1 has rows: it stands for x padded with
columns of zeros. Only W1[:k] enters the products; the other rows get a gradient of zero
(or, in the SGD step taken in place, are only shrunk by weight decay).
"""

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np

from stages import blas

LEAK = 0.01  # leaky_relu's slope for negative inputs


# Activations overwrite z with a = f(z). Their training forms do that too and also write the
# slope f'(z) into `out`, for backprop.
def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0, out=z)


def relu_with_slope(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    # The slope first, then z * slope: half the time of np.maximum and a comparison. (-inf
    # becomes NaN rather than 0; only a diverging run gets there, and the guard reports it.)
    np.greater(z, 0, out=out)
    return np.multiply(z, out, out=z)


def leaky_relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, LEAK * z, out=z)


def leaky_relu_with_slope(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    a = leaky_relu(z)
    np.greater(a, 0, out=out)
    out *= 1 - LEAK
    out += LEAK
    return a


def tanh(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def tanh_with_slope(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    a = tanh(z)
    np.multiply(a, a, out=out)
    np.subtract(1, out, out=out)
    return a


def sigmoid(z: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-z)) overflows for very negative z; the tanh form never does.
    z *= 0.5
    np.tanh(z, out=z)
    z += 1
    z *= 0.5
    return z


def sigmoid_with_slope(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    a = sigmoid(z)
    np.subtract(1, a, out=out)
    out *= a
    return a


ACTIVATIONS = {  # name: (inference form, training form)
    "relu": (relu, relu_with_slope),
    "leaky_relu": (leaky_relu, leaky_relu_with_slope),
    "tanh": (tanh, tanh_with_slope),
    "sigmoid": (sigmoid, sigmoid_with_slope),
}


def init_weights(n_in: int, n_out: int, scheme: str, rng: np.random.Generator) -> np.ndarray:
    if scheme == "he":  # std sqrt(2 / fan_in) keeps ReLU outputs' variance level across layers
        return rng.standard_normal((n_in, n_out)) * math.sqrt(2.0 / n_in)
    if scheme == "glorot":  # Var 2 / (fan_in + fan_out), suited to tanh and sigmoid
        limit = math.sqrt(6.0 / (n_in + n_out))
        return rng.uniform(-limit, limit, (n_in, n_out))
    if scheme == "uniform":  # the classic from-scratch notebooks' rand() - 0.5
        return rng.uniform(-0.5, 0.5, (n_in, n_out))
    raise ValueError(f"unknown init scheme {scheme!r}")


def layer_views(flat: np.ndarray, sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(weights, biases): views into `flat`, laid out as every W, then every b."""
    weights, biases, start = [], [], 0
    for n_in, n_out in pairwise(sizes):
        weights.append(flat[start : start + n_in * n_out].reshape(n_in, n_out))
        start += n_in * n_out
    for n_out in sizes[1:]:
        biases.append(flat[start : start + n_out])
        start += n_out
    return weights, biases


def n_weights(sizes: list[int]) -> int:
    return sum(n_in * n_out for n_in, n_out in pairwise(sizes))


def n_params(sizes: list[int]) -> int:
    return n_weights(sizes) + sum(sizes[1:])


def init_params(sizes: list[int], scheme: str, rng: np.random.Generator,
                dtype: type = np.float32) -> np.ndarray:
    """A flat parameter vector for layer widths `sizes` (input first): weights drawn by
    `scheme`, biases zero."""
    flat = np.zeros(n_params(sizes), dtype)
    for w, (n_in, n_out) in zip(layer_views(flat, sizes)[0], pairwise(sizes), strict=True):
        w[...] = init_weights(n_in, n_out, scheme, rng)
    return flat


def init_layers(sizes: list[int], rng: np.random.Generator, scheme: str = "he",
                dtype: type = np.float32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(weights, biases) of a freshly initialised network, as views into one flat vector."""
    return layer_views(init_params(sizes, scheme, rng, dtype), sizes)


def logits_in_chunks(
    weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, activation: str,
    chunk: int = 10_000,
) -> np.ndarray:
    """The network's logits for `x`, a chunk of rows at a time to bound memory."""
    act, _ = ACTIVATIONS[activation]
    out = np.empty((len(x), len(biases[-1])), np.float32)
    for start in range(0, len(x), chunk):
        a = x[start : start + chunk]
        for w, b in zip(weights[:-1], biases[:-1], strict=True):
            a = act(a @ w + b)
        np.matmul(a, weights[-1], out=out[start : start + chunk])
    out += biases[-1]
    return out


def forward(
    weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, activation: str,
    masks: list[np.ndarray] | None = None,
    out: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    combine: tuple[int, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(outputs, slopes) for training: every layer's output, x first and logits last, and every
    hidden layer's da/dz. `masks` are dropout's (0 or 1/keep per unit); `out` holds buffers of
    at least len(x) rows to write into instead of allocating. With combine = (layer, total),
    that layer's z is total(product, bias) instead of product + bias: where another process
    holds the rest of the product (see split)."""
    _, act_with_slope = ACTIVATIONS[activation]
    outputs, slopes = [x], []
    rows = len(x)
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        used = w[: x.shape[1]] if layer == 0 else w  # x may be narrower (module docstring)
        z = np.matmul(outputs[-1], used, out=out[0][layer][:rows] if out else None)
        if combine and combine[0] == layer:
            z = combine[1](z, b)
        else:
            z += b
        if layer < len(weights) - 1:
            s = out[1][layer][:rows] if out else np.empty_like(z)
            a = act_with_slope(z, s)
            if masks:
                a *= masks[layer][:rows]
                s *= masks[layer][:rows]
            slopes.append(s)
        outputs.append(z)
    return outputs, slopes


def log_softmax(logits: np.ndarray) -> np.ndarray:
    # Subtracting the row maximum keeps exp() from overflowing (log-sum-exp).
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of one-hot `targets` under softmax(logits)."""
    return float(-(targets * log_softmax(logits)).sum() / len(logits))


def output_delta(logits: np.ndarray, targets: np.ndarray, out: np.ndarray | None = None,
                 scale: float = 1.0) -> np.ndarray:
    """dLoss/dlogits of `scale` times the mean cross-entropy: softmax followed by
    cross-entropy collapses to scale * (softmax(logits) - targets) / batch."""
    delta = np.empty_like(logits) if out is None else out
    # A row's maximum over a few classes is a short inner loop per row, slow at this size:
    # reducing a transposed copy down its columns takes half the time. The copy borrows
    # delta's memory until the subtraction below fills it, unless that memory is the logits'.
    if np.may_share_memory(delta, logits):
        transposed = np.empty(logits.shape[::-1], logits.dtype)
    else:
        transposed = delta.reshape(logits.shape[::-1])
    np.copyto(transposed, logits.T)
    row_max = np.maximum.reduce(transposed, axis=0)
    np.subtract(logits, row_max[:, np.newaxis], out=delta)
    np.exp(delta, out=delta)
    delta /= np.add.reduce(delta, axis=1, keepdims=True)
    delta -= targets
    delta *= scale / len(delta)
    return delta


def backward(
    weights: list[np.ndarray], outputs: list[np.ndarray], slopes: list[np.ndarray],
    delta: np.ndarray, grad_w: list[np.ndarray], grad_b: list[np.ndarray],
    deltas: list[np.ndarray] | None = None, ones: np.ndarray | None = None,
    shrink: float | None = None,
) -> None:
    """Write the loss gradients into grad_w and grad_b, given the output layer's `delta`.
    `deltas` are optional buffers for the hidden layers' deltas, `ones` a vector of at least
    len(delta) ones of delta's dtype.

    With `shrink`, add the gradients instead, after scaling grad_w by shrink. Given the
    weights and biases themselves and a delta scaled by -lr, that is the SGD step, with weight
    decay for shrink = 1 - lr * decay: each layer is updated once backprop is done with it."""
    rows = len(delta)
    ones = np.ones(rows, delta.dtype) if ones is None else ones[:rows]
    keep = 0.0 if shrink is None else shrink  # 0 ignores what grad_w held, even NaN
    for layer in reversed(range(len(weights))):
        below = None
        if layer:  # the input needs no delta
            below = np.matmul(delta, weights[layer].T,
                              out=deltas[layer - 1][:rows] if deltas else None)
            below *= slopes[layer - 1]
        width = outputs[layer].shape[1]  # narrower than grad_w[layer] for a narrower x
        blas.matmul_tn(outputs[layer], delta, grad_w[layer][:width], keep)
        if width < len(grad_w[layer]):
            _unused_rows(grad_w[layer][width:], shrink)
        # The bias gradient is delta's column sums: as a product with ones, one BLAS call
        # that takes a third of np.add.reduce's time at these sizes.
        if shrink is None:
            np.dot(ones, delta, out=grad_b[layer])
        else:
            grad_b[layer] += np.dot(ones, delta)
        delta = below


def _unused_rows(rows: np.ndarray, shrink: float | None) -> None:
    """The gradient of W1's rows for inputs that are all zero: zero, or added to weights
    scaled by shrink, with the rounding blas.matmul_tn gives that."""
    if shrink is None:
        rows[...] = 0
    elif shrink != 1.0:
        rows *= shrink


def add_weight_decay(grad: np.ndarray, params: np.ndarray, sizes: list[int], l2: float,
                     scratch: np.ndarray | None = None) -> None:
    """Add the gradient of (l2 / 2) * sum(W**2): the weights only, which lead the flat vector."""
    count = n_weights(sizes)
    decay = np.multiply(params[:count], l2, out=None if scratch is None else scratch[:count])
    grad[:count] += decay


def score(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits against one-hot targets."""
    accuracy = float((logits.argmax(axis=1) == targets.argmax(axis=1)).mean())
    return cross_entropy(logits, targets), accuracy
