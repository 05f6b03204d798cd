import numpy as np
import pytest

from stages import network, training
from stages.errors import PipelineError


def separable_set(n=200, seed=0):
    """Four well-separated Gaussian clusters in 8 dimensions, one per class."""
    rng = np.random.default_rng(seed)
    centres = np.eye(4, 8, dtype=np.float32) * 4
    labels = rng.integers(0, 4, n)
    x = centres[labels] + rng.normal(0, 0.5, (n, 8)).astype(np.float32)
    return x, np.eye(4, dtype=np.float32)[labels]


def test_tiny_net_learns_a_separable_set_perfectly():
    x, y = separable_set()
    rng = np.random.default_rng(0)
    weights, biases = network.init_layers([8, 6, 4], rng)
    history = training.train(weights, biases, (x, y), separable_set(seed=1), activation="relu",
                             lr=0.1, epochs=20, batch_size=16, rng=rng, log=lambda _: None)
    assert [row["epoch"] for row in history] == list(range(1, 21))
    assert history[-1]["train_acc"] == 1.0
    assert history[-1]["val_acc"] == 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2


def test_one_full_batch_step_is_plain_gradient_descent():
    x, y = separable_set(n=32)
    weights, biases = network.init_layers([8, 5, 4], np.random.default_rng(3))
    grad_w, grad_b = network.backward(weights, network.forward(weights, biases, x, "relu"), y,
                                      "relu")
    expected = [p - 0.5 * g for p, g in zip(weights + biases, grad_w + grad_b, strict=True)]
    # A batch of the whole set visits every row once, so the order does not matter.
    training.sgd_epoch(weights, biases, x, y, "relu", 0.5, len(x), np.random.default_rng(9))
    for got, want in zip(weights + biases, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_last_partial_batch_is_used():
    x, y = separable_set(n=10)
    weights, biases = network.init_layers([8, 4], np.random.default_rng(0))
    before = weights[0].copy()
    # 10 rows in batches of 9: one step on 9 rows, then one on the leftover row.
    training.sgd_epoch(weights, biases, x, y, "relu", 0.1, 9, np.random.default_rng(0))
    order = np.random.default_rng(0).permutation(10)
    w2, b2 = [before.copy()], [np.zeros(4, np.float32)]
    for rows in (order[:9], order[9:]):
        gw, gb = network.backward(w2, network.forward(w2, b2, x[rows], "relu"), y[rows], "relu")
        w2[0] -= 0.1 * gw[0]
        b2[0] -= 0.1 * gb[0]
    np.testing.assert_allclose(weights[0], w2[0], rtol=1e-6)


def test_same_seed_same_weights_other_seed_other_weights():
    x, y = separable_set()

    def run(seed):
        rng = np.random.default_rng(seed)
        weights, biases = network.init_layers([8, 6, 4], rng)
        training.train(weights, biases, (x, y), (x, y), activation="relu", lr=0.1, epochs=2,
                       batch_size=16, rng=rng, log=lambda _: None)
        return np.concatenate([w.ravel() for w in weights])

    assert run(0).tobytes() == run(0).tobytes()
    assert run(0).tobytes() != run(1).tobytes()


def test_divergence_stops_with_a_hint_about_the_learning_rate():
    x, y = separable_set()
    x = x * 1e4
    rng = np.random.default_rng(0)
    weights, biases = network.init_layers([8, 6, 4], rng)
    with pytest.raises(PipelineError, match=r"diverged in epoch 1 .*train\.lr below 1000"):
        training.train(weights, biases, (x, y), (x, y), activation="relu", lr=1000.0, epochs=3,
                       batch_size=16, rng=rng, log=lambda _: None)
